"""Conv, Gemm and MatMul: gradients with respect to the data input only (weights need none)."""

from __future__ import annotations

import numpy as np

from ..registry import UnsupportedVariant, VjpContext, register
from .window import conv_transpose_back, window_attrs


@register("Conv")
def conv(ctx: VjpContext) -> list:
    """dx = ConvTranspose(g, W) with the same strides, dilations, groups and pads."""
    if any(ctx.needs[1:]):
        raise UnsupportedVariant("its weights or bias depend on the image; "
                                 "only constant weights are supported")
    weight = ctx.node.input[1]
    kernel = list(ctx.attr("kernel_shape", ctx.shape(weight)[2:]))
    group = ctx.attr("group", 1)
    w_value = ctx.index.const_value(weight)
    strides, dilations, pads = window_attrs(ctx, kernel)
    nd = len(kernel)
    flipped_pads = [d * (k - 1) - p for d, k, p in zip(dilations * 2, kernel * 2, pads)]
    if w_value is not None and all(s == 1 for s in strides) and min(flipped_pads) >= 0:
        # Stride 1: the transposed convolution is a plain convolution with the kernel flipped and its
        # in/out channels swapped per group; runtimes optimise Conv far better than ConvTranspose.
        c_out, c_in_g = w_value.shape[:2]
        w = w_value.reshape(group, c_out // group, c_in_g, *kernel).swapaxes(1, 2)
        w = w.reshape(group * c_in_g, c_out // group, *kernel)[(Ellipsis,) + (slice(None, None, -1),) * nd]
        g = ctx.emit.op("Conv", [ctx.g, ctx.emit.const(np.ascontiguousarray(w), hint="w_flipped")],
                        pads=flipped_pads, dilations=dilations, group=group, kernel_shape=kernel)
    else:
        g = conv_transpose_back(ctx, ctx.g, weight, kernel, group)
    return [g] + [None] * (len(ctx.node.input) - 1)


@register("Gemm")
def gemm(ctx: VjpContext) -> list:
    """Y = alpha * A' B' + beta * C with A' = A or A^T, B' = B or B^T (written with MatMul: Gemm
    needs its C input before opset 11)."""
    a, b = ctx.node.input[:2]
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    e = ctx.emit

    def t(name: str) -> str:
        return e.op("Transpose", [name], perm=[1, 0])

    def scaled(name: str, factor: float) -> str:
        return name if factor == 1.0 else e.op("Mul", [name, ctx.scalar(factor)])

    out = [None] * len(ctx.node.input)
    if ctx.needs[0]:  # dA' = alpha g B'^T
        da = e.op("MatMul", [ctx.g, b if tb else t(b)])
        out[0] = scaled(t(da) if ta else da, alpha)
    if ctx.needs[1]:  # dB' = alpha A'^T g
        db = e.op("MatMul", [a if ta else t(a), ctx.g])
        out[1] = scaled(t(db) if tb else db, alpha)
    if len(ctx.needs) > 2 and ctx.needs[2]:
        out[2] = ctx.unbroadcast(scaled(ctx.g, beta), ctx.node.input[2])
    return out


@register("MatMul")
def matmul(ctx: VjpContext) -> list:
    """dA = g B^T, dB = A^T g over the last two axes, summed over broadcast batch axes."""
    a, b = ctx.node.input
    e = ctx.emit
    if ctx.index.rank(a) < 2 or ctx.index.rank(b) < 2:
        raise UnsupportedVariant("1-D operands are not supported")

    def t(name: str) -> str:
        r = ctx.index.rank(name)
        return e.op("Transpose", [name], perm=list(range(r - 2)) + [r - 1, r - 2])

    batch = tuple(ctx.shape(ctx.y)[:-2])
    ga = gb = None
    if ctx.needs[0]:
        ga = ctx.unbroadcast(e.op("MatMul", [ctx.g, t(b)]), a, batch + tuple(ctx.shape(a)[-2:]))
    if ctx.needs[1]:
        gb = ctx.unbroadcast(e.op("MatMul", [t(a), ctx.g]), b, batch + tuple(ctx.shape(b)[-2:]))
    return [ga, gb]
