"""BatchNormalization in inference mode: y = scale * (x - mean) / sqrt(var + eps) + bias."""

from __future__ import annotations

import numpy as np

from ..registry import UnsupportedVariant, VjpContext, register


@register("BatchNormalization")
def batch_norm(ctx: VjpContext) -> list:
    if ctx.attr("training_mode", 0):
        raise UnsupportedVariant("training_mode=1 is not supported (export the model in eval mode)")
    if ctx.attr("spatial", 1) != 1:
        raise UnsupportedVariant("spatial=0 is not supported")
    if any(ctx.needs[1:]):
        raise UnsupportedVariant("its statistics depend on the image; only constant parameters are supported")
    scale, var = ctx.node.input[1], ctx.node.input[4]
    eps = ctx.attr("epsilon", 1e-5)
    rank = ctx.index.rank(ctx.x)
    channel_shape = (-1,) + (1,) * (rank - 2)
    e = ctx.emit
    s_val, v_val = ctx.index.const_value(scale), ctx.index.const_value(var)
    if s_val is not None and v_val is not None:
        factor = e.const((s_val / np.sqrt(v_val.astype(np.float64) + eps)).astype(ctx.dtype)
                         .reshape(channel_shape), hint="bn_factor")
    else:
        root = e.op("Sqrt", [e.op("Add", [var, ctx.scalar(eps)])])
        factor = e.op("Reshape", [e.op("Div", [scale, root]), e.ints(channel_shape)])
    return [e.op("Mul", [ctx.g, factor])] + [None] * (len(ctx.node.input) - 1)
