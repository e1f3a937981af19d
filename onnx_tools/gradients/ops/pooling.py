"""Pooling ops. Window pools go back through a depthwise ConvTranspose, which exists in every opset
and runs fast on CUDA (no scatter with atomics)."""

from __future__ import annotations

import numpy as np

from ..registry import UnsupportedVariant, VjpContext, register
from .window import conv_transpose_back, window_attrs


@register("MaxPool")
def max_pool(ctx: VjpContext) -> list:
    """Route g to each window's arg-max.

    From the Indices output (offsets into the whole N*C*H*W tensor) we recover the winner's offset
    (a, b) inside its window, build a [N, C*kh*kw, h, w] tensor holding g at the channel of that offset,
    and a grouped ConvTranspose with one-hot kernels puts every value back at its input position.
    """
    kernel = list(ctx.attr("kernel_shape"))
    if len(kernel) != 2:
        raise UnsupportedVariant(f"only 2-D pooling is supported (kernel {kernel})")
    if ctx.attr("storage_order", 0) != 0:
        raise UnsupportedVariant("storage_order=1 (column-major indices) is not supported")
    strides, dilations, pads = window_attrs(ctx, kernel)
    _, c, hi, wi = ctx.shape(ctx.x)
    _, _, ho, wo = ctx.shape(ctx.y)
    e = ctx.emit
    i64 = np.int64
    idx = ctx.forward_output(1, "maxpool_indices")
    plane = e.const(np.array(hi * wi, dtype=i64))
    local = e.op("Sub", [idx, e.op("Mul", [e.op("Div", [idx, plane]), plane])])
    width = e.const(np.array(wi, dtype=i64))
    row = e.op("Div", [local, width])
    col = e.op("Sub", [local, e.op("Mul", [row, width])])
    origin_r = (np.arange(ho, dtype=i64) * strides[0] - pads[0]).reshape(1, 1, ho, 1)
    origin_c = (np.arange(wo, dtype=i64) * strides[1] - pads[1]).reshape(1, 1, 1, wo)
    dr = e.unsqueeze(e.op("Sub", [row, e.const(origin_r)]), [2])
    dc = e.unsqueeze(e.op("Sub", [col, e.const(origin_c)]), [2])
    kh, kw = kernel
    offs_r = (np.repeat(np.arange(kh), kw) * dilations[0]).astype(i64).reshape(1, 1, kh * kw, 1, 1)
    offs_c = (np.tile(np.arange(kw), kh) * dilations[1]).astype(i64).reshape(1, 1, kh * kw, 1, 1)
    hit = e.op("And", [e.op("Equal", [dr, e.const(offs_r)]), e.op("Equal", [dc, e.const(offs_c)])])
    onehot_mask = e.op("Cast", [hit], to=ctx.index.info[ctx.y].elem_type)
    spread = e.op("Mul", [onehot_mask, e.unsqueeze(ctx.g, [2])])
    spread = e.op("Reshape", [spread, e.ints([0, c * kh * kw, ho, wo])])
    onehot = np.zeros((c * kh * kw, 1, kh, kw), dtype=ctx.dtype)
    for k in range(kh * kw):
        onehot[k::kh * kw, 0, k // kw, k % kw] = 1.0
    return [conv_transpose_back(ctx, spread, e.const(onehot, hint="onehot"), kernel, c)]


@register("AveragePool")
def average_pool(ctx: VjpContext) -> list:
    """dx = depthwise ConvTranspose of g / count with a ones kernel; count per output position is
    precomputed (it depends on count_include_pad, pads and ceil-mode overhang)."""
    kernel = list(ctx.attr("kernel_shape"))
    if len(kernel) != 2:
        raise UnsupportedVariant(f"only 2-D pooling is supported (kernel {kernel})")
    strides, dilations, pads = window_attrs(ctx, kernel)
    _, c, hi, wi = ctx.shape(ctx.x)
    _, _, ho, wo = ctx.shape(ctx.y)
    include_pad = bool(ctx.attr("count_include_pad", 0))

    def counts(n_in, n_out, k, s, d, pb, pe):
        start = np.arange(n_out)[:, None] * s - pb + np.arange(k)[None, :] * d
        lo, hi_ = (-pb, n_in + pe) if include_pad else (0, n_in)
        return ((start >= lo) & (start < hi_)).sum(axis=1)

    ch = counts(hi, ho, kernel[0], strides[0], dilations[0], pads[0], pads[2])
    cw = counts(wi, wo, kernel[1], strides[1], dilations[1], pads[1], pads[3])
    inv = (1.0 / np.outer(ch, cw)).astype(ctx.dtype).reshape(1, 1, ho, wo)
    e = ctx.emit
    scaled = e.op("Mul", [ctx.g, e.const(inv, hint="inv_count")])
    ones = e.const(np.ones((c, 1, *kernel), dtype=ctx.dtype), hint="ones_kernel")
    return [conv_transpose_back(ctx, scaled, ones, kernel, c)]


@register("GlobalAveragePool")
def global_average_pool(ctx: VjpContext) -> list:
    spatial = int(np.prod(ctx.shape(ctx.x)[2:]))
    e = ctx.emit
    scaled = e.op("Mul", [ctx.g, ctx.scalar(1.0 / spatial)])
    return [e.op("Expand", [scaled, e.op("Shape", [ctx.x])])]


@register("GlobalMaxPool")
def global_max_pool(ctx: VjpContext) -> list:
    """g goes to the positions equal to the max, split evenly between ties."""
    e = ctx.emit
    axes = list(range(2, ctx.index.rank(ctx.x)))
    mask = e.op("Cast", [e.equal(ctx.x, ctx.y)], to=ctx.index.info[ctx.y].elem_type)
    share = e.op("Div", [ctx.g, e.reduce("ReduceSum", mask, axes, keepdims=True)])
    return [e.op("Mul", [mask, share])]
