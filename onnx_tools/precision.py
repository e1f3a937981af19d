"""Half-precision models (float16 or bfloat16) read in float32.

The gradients and the engine compute in float32 (the engine goes to float16 itself with
``runtime.fp16``). Every float16 or bfloat16 value is exact in float32, so a half-precision model is read
as the float32 model with the same weights: its initializers, constants, Cast targets and declared types
become float32. The explanation is of that float32 computation, whose class scores can differ from the
half-precision model's in the last bits.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import ModelInputError

HALF_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
_DTYPE_ATTRIBUTES = ("to", "dtype")  # Cast, EyeLike, RandomNormal(Like), RandomUniform(Like), Bernoulli


def _tensor_as_float32(t: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)


def _type_as_float32(tp: onnx.TypeProto) -> int:
    """Rewrites half element types inside ``tp`` (tensors, sequences, optionals); returns how many."""
    which = tp.WhichOneof("value")
    if which == "tensor_type" and tp.tensor_type.elem_type in HALF_TYPES:
        tp.tensor_type.elem_type = TensorProto.FLOAT
        return 1
    if which == "sequence_type":
        return _type_as_float32(tp.sequence_type.elem_type)
    if which == "optional_type":
        return _type_as_float32(tp.optional_type.elem_type)
    return 0


def _graph_as_float32(graph: onnx.GraphProto) -> int:
    sparse = [t.values.name for t in graph.sparse_initializer if t.values.data_type in HALF_TYPES]
    if sparse:
        raise ModelInputError(f"sparse initializer '{sparse[0]}' is in half precision, which the export "
                              "cannot read in float32; save the model with dense initializers or in float32")
    changed = 0
    for i, t in enumerate(graph.initializer):
        if t.data_type in HALF_TYPES:
            graph.initializer[i].CopyFrom(_tensor_as_float32(t))
            changed += 1
    for vi in (*graph.input, *graph.output, *graph.value_info):
        changed += _type_as_float32(vi.type)
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in HALF_TYPES:
                a.t.CopyFrom(_tensor_as_float32(a.t))
                changed += 1
            elif a.type == onnx.AttributeProto.INT and a.name in _DTYPE_ATTRIBUTES and a.i in HALF_TYPES:
                a.i = TensorProto.FLOAT
                changed += 1
            elif a.type == onnx.AttributeProto.GRAPH:
                changed += _graph_as_float32(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                changed += sum(_graph_as_float32(g) for g in a.graphs)
    return changed


def as_float32(model: onnx.ModelProto) -> bool:
    """Rewrite ``model``'s float16 and bfloat16 values and types as float32, in place; True when any
    was found."""
    return _graph_as_float32(model.graph) > 0
