"""SISE Inspector engine: SISE explanations on ONNX Runtime for models exported by ``onnx_tools``.

    from inspector import Inspector
    insp = Inspector.from_config("configs/example.yaml")
    exp = insp.explain("part.png")          # exp.saliency, exp.layer_maps, exp.scores, ...
"""

from .common.version import __version__
from .config import InspectorConfig, load_config
from .engine import Explanation, Inspector
from .errors import ConfigError, ImageError, InspectorError, ModelContractError, TargetError

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
