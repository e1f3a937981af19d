"""Conv, Gemm and MatMul: gradients with respect to the data input only (weights need none)."""

from __future__ import annotations

from ..registry import UnsupportedVariant, VjpContext, register
from .window import conv_transpose_back


@register("Conv")
def conv(ctx: VjpContext) -> list:
    """dx = ConvTranspose(g, W) with the same strides, dilations, groups and pads."""
    if any(ctx.needs[1:]):
        raise UnsupportedVariant("its weights or bias depend on the image; only constant weights are supported")
    weight = ctx.node.input[1]
    kernel = list(ctx.attr("kernel_shape", ctx.shape(weight)[2:]))
    g = conv_transpose_back(ctx, ctx.g, weight, kernel, ctx.attr("group", 1))
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
