"""Export step of SISE Inspector: rewrite an ONNX classifier so that it also returns each
convolutional block's activation and the class-score gradients (ONNX Runtime has no autograd).

Imports onnx and numpy only.
"""

from .contract import Contract, read_contract
from .errors import ExportError
from .export import analyse, export_file, export_model
from .sampler import build_mask_scorer, build_sampler

__all__ = ["Contract", "ExportError", "analyse", "build_mask_scorer", "build_sampler", "export_file",
           "export_model", "read_contract"]
