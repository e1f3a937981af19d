"""The weights of a large model memory-mapped from one file that all of the engine's sessions share.

onnxruntime copies the initializers embedded in a model into each session (explain model, sampler, mask
scorer), and MatMul/Gemm pre-packing adds a copy per session; initializers stored as ONNX external data are
memory-mapped instead, so every session reads the same pages of one file. For a model with at least
``MIN_MODEL_BYTES`` of weights the engine writes them once, beside the exported model, as
``<stem>.<model sha256[:12]>.weights`` (complete or not at all; a changed model gets a new name), and hands
onnxruntime graphs whose initializers point into that file.
"""

from __future__ import annotations

import logging
import os

import onnx
from onnx import numpy_helper

import onnx_tools

from ...common.atomic import open_atomic, remove_stale_parts

log = logging.getLogger(__name__)

MIN_MODEL_BYTES = 32 << 20  # below this the copies cost little and nothing is written
MIN_TENSOR_BYTES = 1024  # smaller initializers (shapes, scalars) stay in the graph
ALIGN = 64  # every tensor starts at a multiple of this in the file


def weights_path(model_path: str, sha256: str) -> str:
    stem = model_path.removesuffix(".onnx")
    return f"{stem}.{sha256[:12]}.weights"


def _payload(t: onnx.TensorProto) -> bytes:
    return t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()


def _length(t: onnx.TensorProto) -> int:
    """Bytes of the tensor's data, from its shape (reading ``raw_data`` would copy it)."""
    count = 1
    for d in t.dims:
        count *= d
    return count * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _layout(tensors: list[onnx.TensorProto]) -> tuple[list[tuple[int, int]], int]:
    """(offset, length) per tensor and the file size: tensors in order, each aligned to ``ALIGN``."""
    spans, end = [], 0
    for t in tensors:
        start = -(-end // ALIGN) * ALIGN
        length = _length(t)
        spans.append((start, length))
        end = start + length
    return spans, end


def externalise(proto: onnx.ModelProto, model_path: str, sha256: str) -> str | None:
    """Point ``proto``'s large initializers at the shared weights file of the model at ``model_path``
    (writing it first when it is not there), in place. Returns the file's folder (what onnxruntime needs
    to find it), or None when the model is small or the file cannot be written; then ``proto`` keeps its
    weights and the engine holds them in memory, as it says in the log."""
    tensors = [t for t in proto.graph.initializer
               if t.data_location != onnx.TensorProto.EXTERNAL and t.data_type != onnx.TensorProto.STRING
               and _length(t) >= MIN_TENSOR_BYTES]
    spans, size = _layout(tensors)
    if size < MIN_MODEL_BYTES:
        return None
    path = weights_path(model_path, sha256)
    if not (os.path.isfile(path) and os.path.getsize(path) == size):
        remove_stale_parts(os.path.dirname(os.path.abspath(path)))  # of a start killed while writing
        try:
            with open_atomic(path) as f:
                for t, (start, _) in zip(tensors, spans):
                    f.seek(start)
                    f.write(_payload(t))
                f.truncate(size)
        except OSError as e:
            log.warning("cannot write the shared weights file %s (%s); each of the engine's sessions holds "
                        "its own copy of the %d MB of weights instead", path, e, size >> 20)
            return None
        log.warning("wrote the weights of %s to %s (once), memory-mapped by all of the engine's sessions",
                    model_path, path)
    name = os.path.basename(path)
    for t, (start, length) in zip(tensors, spans):
        onnx_tools.point_at(t, name, start, length)
    return os.path.dirname(os.path.abspath(path))
