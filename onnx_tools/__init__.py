"""Export step of SISE Inspector: rewrite an ONNX classifier so that it also returns each
convolutional block's activation and the class-score gradients (ONNX Runtime has no autograd).

Imports onnx and numpy only. The names below are the public API; the engine imports nothing else.
The upper-case sampler names are the tensor names of the graphs :func:`build_sampler` and
:func:`build_mask_scorer` build (``act_input(b)`` / ``idx_input(b)``: block b's inputs).
"""

from .contract import SCORE_KINDS, TASKS, Contract, read_contract
from .detection import BOXES, CLASSES, CONVENTIONS, OBJECTNESS, DetectionHead
from .errors import ExportError
from .export import analyse, export_file, export_model
from .external_data import data_files, external_tensors, load_into, point_at
from .graph import dims_of, find_image_input
from .interpolation import upsample_matrix
from .sampler import (
    IMAGE,
    KEEP,
    LAYER_MAPS,
    MASKS,
    OWNER,
    SCORES,
    TARGET,
    TARGET_BOXES,
    act_input,
    build_forward,
    build_mask_scorer,
    build_sampler,
    idx_input,
)
from .scores import scores_of

__all__ = [
    "BOXES",
    "CLASSES",
    "CONVENTIONS",
    "IMAGE",
    "KEEP",
    "LAYER_MAPS",
    "MASKS",
    "OBJECTNESS",
    "OWNER",
    "SCORES",
    "SCORE_KINDS",
    "TARGET",
    "TARGET_BOXES",
    "TASKS",
    "Contract",
    "DetectionHead",
    "ExportError",
    "act_input",
    "analyse",
    "build_forward",
    "build_mask_scorer",
    "build_sampler",
    "data_files",
    "dims_of",
    "export_file",
    "export_model",
    "external_tensors",
    "find_image_input",
    "idx_input",
    "load_into",
    "point_at",
    "read_contract",
    "scores_of",
    "upsample_matrix",
]
