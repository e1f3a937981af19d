"""Ops that move values without changing them: reshapes, transposes, concat/split, slice/pad/tile."""

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


def _int_list(values) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


def _slice_positions(n: int, start: int, end: int, step: int) -> range:
    """The input positions ONNX Slice reads along one axis of size ``n``, in output order."""
    if step == 0:
        raise UnsupportedVariant("a step of 0 is not a valid Slice")
    start, end = (start + n if start < 0 else start), (end + n if end < 0 else end)
    if step > 0:
        return range(min(max(start, 0), n), min(max(end, 0), n), step)
    return range(min(max(start, 0), n - 1), min(max(end, -1), n - 1), step)


def _scatter_back(ctx: VjpContext, g: str, shape: list[int], axis: int, positions: range, n: int) -> str:
    """The gradient of taking ``positions`` (a range) of an axis of size ``n``: g's values go back to
    those positions, zeros elsewhere. A negative step reverses g first; a step s > 1 spreads g's values s
    apart by padding a new axis with s - 1 zeros and merging it; then zeros are padded around. ``shape``
    is g's static shape (batch as 0 for Reshape), updated in place to the input's."""
    e, rank = ctx.emit, len(shape)
    m, s = len(positions), abs(positions.step)
    if positions.step < 0:
        g = e.slice(g, [-1], [-(2 ** 63)], [axis], steps=[-1])
        positions = positions[::-1]
    if s > 1:
        spread = [0] * (2 * (rank + 1))
        spread[rank + 1 + axis + 1] = s - 1
        g = e.pad_zeros(e.unsqueeze(g, [axis + 1]), spread)
        g = e.op("Reshape", [g, e.ints(shape[:axis] + [m * s] + shape[axis + 1:])])
        g = e.slice(g, [0], [(m - 1) * s + 1], [axis])
    before, after = positions.start, n - positions.start - ((m - 1) * s + 1)
    if before or after:
        pads = [0] * (2 * rank)
        pads[axis], pads[rank + axis] = before, after
        g = e.pad_zeros(g, pads)
    shape[axis] = n
    return g


@register("Slice")
def slice_(ctx: VjpContext) -> list:
    """g goes back to the positions the slice read, with zeros elsewhere, axis by axis (any steps)."""
    shape = list(ctx.shape(ctx.x))
    rank = len(shape)
    if ctx.opset >= 10:
        starts = ctx.const_input(1, "starts")
        ends = ctx.const_input(2, "ends")
        axes = ctx.const_input(3, "axes")
        steps = ctx.const_input(4, "steps")
    else:
        starts, ends = np.array(ctx.attr("starts")), np.array(ctx.attr("ends"))
        axes, steps = ctx.attr("axes"), None
    starts, ends = _int_list(starts), _int_list(ends)
    axes = list(range(len(starts))) if axes is None else [a % rank for a in _int_list(axes)]
    steps = [1] * len(starts) if steps is None else _int_list(steps)
    g, now = ctx.g, [0] + list(ctx.shape(ctx.y))[1:]
    for axis, start, end, step in zip(axes, starts, ends, steps):
        positions = _slice_positions(shape[axis], start, end, step)
        if positions == range(shape[axis]):
            continue
        if axis == 0:
            raise UnsupportedVariant("slicing along the batch axis is not supported")
        if not len(positions):
            raise UnsupportedVariant(f"it keeps nothing of axis {axis}")
        g = _scatter_back(ctx, g, now, axis, positions, shape[axis])
    return [g] + [None] * (len(ctx.node.input) - 1)


@register("Tile")
def tile(ctx: VjpContext) -> list:
    """Each axis of y is r copies of x's: g reshaped to (r, n) per axis and summed over the copies."""
    repeats = _int_list(ctx.const_input(1, "repeats"))
    shape = ctx.shape(ctx.x)
    if repeats[0] != 1:
        raise UnsupportedVariant("repeating axis 0 (the batch axis, or an axis added in front of it) is not "
                                 "supported")
    if all(r == 1 for r in repeats):
        return [ctx.g, None]
    e = ctx.emit
    split = [0] + [d for r, n in zip(repeats[1:], shape[1:]) for d in (r, n)]
    copies = [2 * i + 1 for i in range(len(shape) - 1)]  # the r axes of the split shape
    g = e.reduce("ReduceSum", e.op("Reshape", [ctx.g, e.ints(split)]), copies, keepdims=False)
    return [g, None]


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
    """constant: slice g back to the unpadded region; negative pads crop, so the cropped input positions
    get zeros. edge / reflect / wrap: each padded position copies
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
    shape = ctx.shape(ctx.x)
    padded = [(axis, b, t) for axis, b, t in zip(axes, pads[:n], pads[n:]) if b or t]
    if any(axis == 0 for axis, _, _ in padded):
        raise UnsupportedVariant("padding along the batch axis is not supported")
    if mode == "constant":  # negative pads crop: the kept input rows go back, the cropped ones get zeros
        if any(shape[axis] + min(b, 0) + min(t, 0) <= 0 for axis, b, t in padded):
            raise UnsupportedVariant("its negative pads crop an axis away entirely")
        starts = [max(b, 0) for _, b, _ in padded]
        ends = [max(b, 0) + shape[axis] + min(b, 0) + min(t, 0) for axis, b, t in padded]
        g = ctx.emit.slice(ctx.g, starts, ends, [axis for axis, _, _ in padded]) if padded else ctx.g
        cropped = [0] * (2 * rank)
        for axis, b, t in padded:
            cropped[axis], cropped[rank + axis] = max(-b, 0), max(-t, 0)
        g = ctx.emit.pad_zeros(g, cropped) if any(cropped) else g
        return [g] + [None] * (len(ctx.node.input) - 1)
    if mode not in ("edge", "reflect", "wrap"):
        raise UnsupportedVariant(f"mode={mode!r} is not supported")
    if any(p < 0 for p in pads):
        raise UnsupportedVariant(f"negative pads are supported in constant mode only, not mode={mode!r}")
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
