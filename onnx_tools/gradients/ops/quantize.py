"""Quantize/dequantize pairs of a QDQ model (onnxruntime's static quantization): the straight-through
gradient of quantization-aware training. Rounding passes the gradient unchanged where the rounded value
lies in the integer type's range and stops it where the value saturates, as torch's fake_quantize does;
so a ReLU that the quantizer folded into a zero point of qmin still stops the gradient of negatives."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..registry import UnsupportedVariant, VjpContext, register

_RANGES = {TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127), TensorProto.UINT16: (0, 65535),
           TensorProto.INT16: (-32768, 32767)}


def _per_axis(ctx: VjpContext, value: np.ndarray, rank: int) -> np.ndarray:
    """A scale or zero point shaped to broadcast against the rank-``rank`` tensor (per axis when 1-D)."""
    if ctx.attr("block_size", 0):
        raise UnsupportedVariant("blocked quantization (block_size) is not supported")
    value = np.asarray(value, np.float32)
    if value.ndim == 0 or value.size == 1 and rank == 0:
        return value.reshape(())
    shape = [1] * rank
    shape[ctx.attr("axis", 1) % rank] = -1
    return value.reshape(shape)


@register("DequantizeLinear")
def dequantize(ctx: VjpContext) -> list:
    """y = (q - zero) * scale: dq = g * scale."""
    scale = _per_axis(ctx, ctx.const_input(1, "scale"), ctx.index.rank(ctx.y))
    return [ctx.emit.op("Mul", [ctx.g, ctx.emit.const(scale, hint="dq_scale")]), None, None]


@register("QuantizeLinear")
def quantize(ctx: VjpContext) -> list:
    """q = saturate(round(x / scale) + zero): dx = dq / scale where round(x / scale) + zero lies in the
    integer type's range, else 0."""
    rank = ctx.index.rank(ctx.x)
    scale = _per_axis(ctx, ctx.const_input(1, "scale"), rank)
    zero_value = ctx.const_input(2, "zero point")
    out_type = ctx.index.info[ctx.y].elem_type
    if out_type not in _RANGES:
        raise UnsupportedVariant(f"quantizing to {TensorProto.DataType.Name(out_type)} is not supported "
                                 "(uint8, int8, uint16 and int16 are)")
    lo, hi = _RANGES[out_type]
    zero = _per_axis(ctx, zero_value if zero_value is not None else np.zeros(()), rank)
    e = ctx.emit
    level = e.op("Add", [e.op("Round", [e.op("Div", [ctx.x, e.const(scale, hint="q_scale")])]),
                         e.const(zero, hint="q_zero")])
    inside = e.op("And", [e.op("Not", [e.op("Less", [level, e.const(np.float32(lo), hint="q_min")])]),
                          e.op("Not", [e.op("Greater", [level, e.const(np.float32(hi), hint="q_max")])])])
    g = e.op("Div", [ctx.g, e.const(scale, hint="q_scale")])
    return [e.mask_where(inside, g, np.float32), None, None]
