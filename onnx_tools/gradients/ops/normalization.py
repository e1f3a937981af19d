"""Normalisations: BatchNormalization in inference mode, y = scale * (x - mean) / sqrt(var + eps) + bias
with stored statistics; LayerNormalization and InstanceNormalization, whose statistics come from x itself;
LRN."""

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


@register("LRN")
def lrn(ctx: VjpContext) -> list:
    """Local response normalisation across channels, odd ``size`` (onnxruntime runs no other):
    y_c = x_c d_c^-beta with d_c = bias + alpha / size * sum of x_i^2 over i in [c - h, c + h],
    h = (size - 1) / 2. As the window is symmetric,
    dx_k = g_k d_k^-beta - 2 beta alpha / size * x_k * sum of g_c x_c d_c^(-beta-1) over c in [k - h, k + h].
    Window sums run as a Conv over the channel axis of the tensor seen as [N, 1, C, H*W]."""
    shape = ctx.shape(ctx.x)
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise UnsupportedVariant("only rank-4 inputs with static channels, height and width are supported")
    size = int(ctx.attr("size"))
    if size % 2 == 0:
        raise UnsupportedVariant(f"size={size}: only odd sizes are supported (as in onnxruntime)")
    alpha, beta, bias = (float(ctx.attr(k, v)) for k, v in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)))
    channels, height, width = shape[1:]
    half = (size - 1) // 2
    e = ctx.emit
    window = e.const(np.ones((1, 1, size, 1), dtype=ctx.dtype), hint="lrn_window")
    as_planes, as_input = e.ints([-1, 1, channels, height * width]), e.op("Shape", [ctx.x])

    def window_sum(t: str) -> str:
        planes = e.op("Reshape", [t, as_planes])
        return e.op("Reshape", [e.op("Conv", [planes, window], pads=[half, 0, half, 0]), as_input])

    squares = window_sum(e.op("Mul", [ctx.x, ctx.x]))
    d = e.op("Add", [e.op("Mul", [squares, ctx.scalar(alpha / size)]), ctx.scalar(bias)])
    direct = e.op("Mul", [ctx.g, e.op("Pow", [d, ctx.scalar(-beta)])])
    t = e.op("Mul", [e.op("Mul", [ctx.g, ctx.x]), e.op("Pow", [d, ctx.scalar(-beta - 1.0)])])
    spread = e.op("Mul", [e.op("Mul", [window_sum(t), ctx.x]), ctx.scalar(2.0 * beta * alpha / size)])
    return [e.op("Sub", [direct, spread])]


def _normalised_back(ctx: VjpContext, g: str, axes: list[int], eps: float) -> str:
    """dx of x_hat = (x - mean) * r, r = 1 / sqrt(var + eps), mean and (biased) var over ``axes``:
    dx = r * (g - mean(g) - x_hat * mean(g * x_hat)), the means over the same axes."""
    e = ctx.emit
    centred = e.op("Sub", [ctx.x, e.reduce("ReduceMean", ctx.x, axes, keepdims=True)])
    var = e.reduce("ReduceMean", e.op("Mul", [centred, centred]), axes, keepdims=True)
    r = e.op("Reciprocal", [e.op("Sqrt", [e.op("Add", [var, ctx.scalar(eps)])])])
    x_hat = e.op("Mul", [centred, r])
    mean_g = e.reduce("ReduceMean", g, axes, keepdims=True)
    mean_gx = e.reduce("ReduceMean", e.op("Mul", [g, x_hat]), axes, keepdims=True)
    return e.op("Mul", [r, e.op("Sub", [e.op("Sub", [g, mean_g]), e.op("Mul", [x_hat, mean_gx])])])


def _constant_parameters(ctx: VjpContext) -> None:
    if any(ctx.needs[1:]):
        raise UnsupportedVariant("its scale or bias depends on the image; only constant parameters are "
                                 "supported")


@register("LayerNormalization")
def layer_norm(ctx: VjpContext) -> list:
    """y = x_hat * scale + bias over the axes from ``axis`` to the last (scale broadcasts on them)."""
    _constant_parameters(ctx)
    rank = ctx.index.rank(ctx.x)
    first = ctx.attr("axis", -1) % rank
    if first == 0:
        raise UnsupportedVariant("axis=0 normalises over the batch axis")
    g = ctx.emit.op("Mul", [ctx.g, ctx.node.input[1]])
    return [_normalised_back(ctx, g, list(range(first, rank)), ctx.attr("epsilon", 1e-5))] + \
        [None] * (len(ctx.node.input) - 1)


@register("InstanceNormalization")
def instance_norm(ctx: VjpContext) -> list:
    """y = x_hat * scale_c + bias_c over the spatial axes of each image and channel (GroupNorm exports as
    one between two Reshapes)."""
    _constant_parameters(ctx)
    rank = ctx.index.rank(ctx.x)
    e = ctx.emit
    scale = e.op("Reshape", [ctx.node.input[1], e.ints((-1,) + (1,) * (rank - 2))])
    g = e.op("Mul", [ctx.g, scale])
    return [_normalised_back(ctx, g, list(range(2, rank)), ctx.attr("epsilon", 1e-5)), None, None]
