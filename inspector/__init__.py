"""SISE Inspector engine: SISE explanations on ONNX Runtime for models exported by ``onnx_tools``.

    from inspector import Inspector
    insp = Inspector.from_config("configs/example.yaml")
    exp = insp.explain("part.png")          # exp.saliency, exp.layer_maps, exp.scores, ...
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("sise-inspector")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from .config import InspectorConfig, load_config
from .engine import Inspector
from .errors import ConfigError, ImageError, InspectorError, ModelContractError, TargetError
from .explanation import Explanation

__all__ = [
    "ConfigError",
    "Explanation",
    "ImageError",
    "Inspector",
    "InspectorConfig",
    "InspectorError",
    "ModelContractError",
    "TargetError",
    "__version__",
    "load_config",
]
