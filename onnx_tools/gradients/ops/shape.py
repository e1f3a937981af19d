"""Ops that move values without changing them: reshapes, transposes, concat/split, slice/pad."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..registry import UnsupportedVariant, VjpContext, register


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape_back(ctx: VjpContext) -> list:
    g = ctx.emit.op("Reshape", [ctx.g, ctx.emit.op("Shape", [ctx.x])])
    return [g] + [None] * (len(ctx.node.input) - 1)


@register("Transpose")
def transpose(ctx: VjpContext) -> list:
    rank = ctx.index.rank(ctx.x)
    perm = list(ctx.attr("perm", list(reversed(range(rank)))))
    return [ctx.emit.op("Transpose", [ctx.g], perm=[int(i) for i in np.argsort(perm)])]


@register("Concat")
def concat(ctx: VjpContext) -> list:
    rank = ctx.index.rank(ctx.y)
    axis = ctx.attr("axis") % rank
    if axis == 0:
        raise UnsupportedVariant("concatenation along the batch axis is not supported")
    sizes = [ctx.shape(name)[axis] for name in ctx.node.input]
    pieces = ctx.emit.split(ctx.g, sizes, axis)
    return [p if need else None for p, need in zip(pieces, ctx.needs)]


@register("Split")
def split(ctx: VjpContext) -> list:
    """Concatenate the output gradients; outputs without a gradient contribute zeros."""
    e = ctx.emit
    axis = ctx.attr("axis", 0) % ctx.index.rank(ctx.x)
    if axis == 0:
        raise UnsupportedVariant("splitting along the batch axis is not supported")
    parts = []
    for out, g in zip(ctx.node.output, ctx.grads_out):
        if g is None:
            zero = np.zeros((1,), dtype=ctx.dtype)
            g = e.op("ConstantOfShape", [e.op("Shape", [out])], value=numpy_helper.from_array(zero))
        parts.append(g)
    return [e.op("Concat", parts, axis=axis)] + [None] * (len(ctx.node.input) - 1)


@register("Slice")
def slice_(ctx: VjpContext) -> list:
    """Pad g with zeros back to the input's extent (unit steps only)."""
    shape = ctx.shape(ctx.x)
    rank = len(shape)
    if ctx.opset >= 10:
        starts = ctx.const_input(1, "starts")
        ends = ctx.const_input(2, "ends")
        axes = ctx.const_input(3, "axes")
        steps = ctx.const_input(4, "steps")
    else:
        starts, ends = np.array(ctx.attr("starts")), np.array(ctx.attr("ends"))
        axes, steps = ctx.attr("axes"), None
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in np.asarray(axes).reshape(-1)]
    if steps is not None and np.any(np.asarray(steps) != 1):
        raise UnsupportedVariant(f"steps {np.asarray(steps).tolist()} other than 1 are not supported")
    begin, end = [0] * rank, [0] * rank
    for axis, s, t in zip(axes, np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1)):
        n = shape[axis]
        s = min(max(int(s) + n if s < 0 else int(s), 0), n)
        t = min(max(int(t) + n if t < 0 else int(t), 0), n)
        if axis == 0 and (s, t) != (0, n):
            raise UnsupportedVariant("slicing along the batch axis is not supported")
        begin[axis], end[axis] = s, n - t
    g = ctx.emit.pad_zeros(ctx.g, begin + end) if any(begin + end) else ctx.g
    return [g] + [None] * (len(ctx.node.input) - 1)


def _pad_source(i: int, before: int, n: int, mode: str) -> int:
    """The input index that padded position ``i`` copies, for ``edge``, ``reflect`` and ``wrap``."""
    j = i - before
    if mode == "edge":
        return min(max(j, 0), n - 1)
    if mode == "wrap":
        return j % n
    if n == 1:
        return 0
    j %= 2 * (n - 1)  # reflect: mirror at both ends without repeating the edge
    return j if j < n else 2 * (n - 1) - j


@register("Pad")
def pad(ctx: VjpContext) -> list:
    """constant: slice g back to the unpadded region. edge / reflect / wrap: each padded position copies
    one input position, per axis, so the gradient sums g over the copies: a 0/1 matrix per padded
    spatial axis (rank-4 inputs), applied as a MatMul like Resize's."""
    mode = ctx.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    rank = ctx.index.rank(ctx.x)
    if ctx.opset >= 11:
        pads = ctx.const_input(1, "pads").reshape(-1).astype(int).tolist()
        axes = ctx.const_input(3, "axes")
    else:
        pads, axes = list(ctx.attr("pads")), None
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes.reshape(-1)]
    n = len(axes)
    if any(p < 0 for p in pads):
        raise UnsupportedVariant("negative pads are not supported")
    shape = ctx.shape(ctx.x)
    padded = [(axis, b, t) for axis, b, t in zip(axes, pads[:n], pads[n:]) if b or t]
    if any(axis == 0 for axis, _, _ in padded):
        raise UnsupportedVariant("padding along the batch axis is not supported")
    if mode == "constant":
        starts = [b for _, b, _ in padded]
        ends = [b + shape[axis] for axis, b, _ in padded]
        g = ctx.emit.slice(ctx.g, starts, ends, [axis for axis, _, _ in padded]) if padded else ctx.g
        return [g] + [None] * (len(ctx.node.input) - 1)
    if mode not in ("edge", "reflect", "wrap"):
        raise UnsupportedVariant(f"mode={mode!r} is not supported")
    if rank != 4 or any(axis not in (2, 3) for axis, _, _ in padded):
        raise UnsupportedVariant(f"mode={mode!r} is supported on the spatial axes of rank-4 inputs only")
    e, g = ctx.emit, ctx.g
    for axis, b, t in padded:
        size = shape[axis]
        copies = np.zeros((size + b + t, size), dtype=ctx.dtype)  # copies[i, j] = 1: position i copies j
        for i in range(size + b + t):
            copies[i, _pad_source(i, b, size, mode)] = 1
        if axis == 2:
            g = e.op("MatMul", [e.const(np.ascontiguousarray(copies.T), hint="pad_copies_t"), g])
        else:
            g = e.op("MatMul", [g, e.const(copies, hint="pad_copies")])
    return [g] + [None] * (len(ctx.node.input) - 1)


@register("Expand")
def expand(ctx: VjpContext) -> list:
    """dx = g summed over the broadcast axes."""
    return [ctx.unbroadcast(ctx.g, ctx.x), None]


@register("DepthToSpace", "SpaceToDepth")
def depth_space(ctx: VjpContext) -> list:
    """Both only move values: the gradient goes back through the inverse permutation, written as
    Reshape -> Transpose -> Reshape with static shapes (DepthToSpace in DCR or CRD mode; SpaceToDepth)."""
    n, c, h, w = ctx.shape(ctx.x)
    b = int(ctx.attr("blocksize"))
    e = ctx.emit
    if ctx.node.op_type == "SpaceToDepth":  # y's channels hold (row offset, column offset, channel)
        split, perm = [n, b, b, c, h // b, w // b], [0, 3, 4, 1, 5, 2]
    elif ctx.attr("mode", "DCR") == "DCR":  # x's channels hold (row offset, column offset, y's channel)
        split, perm = [n, c // (b * b), h, b, w, b], [0, 3, 5, 1, 2, 4]
    else:  # CRD: x's channels hold (y's channel, row offset, column offset)
        split, perm = [n, c // (b * b), h, b, w, b], [0, 1, 3, 5, 2, 4]
    g = e.op("Transpose", [e.op("Reshape", [ctx.g, e.ints([0] + split[1:])])], perm=perm)
    return [e.op("Reshape", [g, e.ints([0, c, h, w])])]


@register("Gather")
def gather(ctx: VjpContext) -> list:
    """Constant indices (a head that keeps some classes, logits[:, [0, 2, 4]]): the gradient of each
    gathered slice is added back at its index, as g times a one-hot [indices, size] matrix on that axis
    (repeated indices add up)."""
    indices = ctx.const_input(1, "indices")
    rank = ctx.index.rank(ctx.x)
    axis = ctx.attr("axis", 0) % rank
    if axis == 0:
        raise UnsupportedVariant("gathering along the batch axis is not supported")
    shape = ctx.shape(ctx.x)
    flat = indices.reshape(-1).astype(np.int64) % shape[axis]
    onehot = np.zeros((flat.size, shape[axis]), dtype=ctx.dtype)
    np.add.at(onehot, (np.arange(flat.size), flat), 1.0)
    e = ctx.emit
    g = e.op("Reshape", [ctx.g, e.ints([0, *shape[1:axis], flat.size, *shape[axis + 1:]])])
    last = [i for i in range(rank) if i != axis] + [axis]
    g = e.op("MatMul", [e.op("Transpose", [g], perm=last), e.const(onehot, hint="gather_onehot")])
    return [e.op("Transpose", [g], perm=[int(i) for i in np.argsort(last)]), None]
