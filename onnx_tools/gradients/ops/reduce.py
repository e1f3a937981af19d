"""ReduceMean / ReduceSum / ReduceMax / ReduceMin / ReduceL2 over static axes."""

from __future__ import annotations

import numpy as np

from ..registry import UnsupportedVariant, VjpContext, register


def _axes(ctx: VjpContext) -> list[int] | None:
    """Normalised static axes, or None for 'all axes'."""
    rank = ctx.index.rank(ctx.x)
    axes_as_input = 13 if ctx.node.op_type == "ReduceSum" else 18  # the other Reduce ops
    if ctx.opset >= axes_as_input:
        value = ctx.const_input(1, "axes")
        axes = None if value is None or value.size == 0 else [int(a) for a in value.reshape(-1)]
    else:
        axes = ctx.attr("axes")
        axes = list(axes) if axes else None
    if axes is None:
        if ctx.attr("noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return sorted(a % rank for a in axes)


@register("ReduceMean", "ReduceSum")
def reduce_mean_sum(ctx: VjpContext) -> list:
    axes = _axes(ctx)
    e = ctx.emit
    if not axes:
        return [ctx.g] + [None] * (len(ctx.node.input) - 1)
    if 0 in axes and ctx.shape(ctx.x)[0] == 1:
        raise UnsupportedVariant("it reduces over the batch axis")
    g = ctx.g if ctx.attr("keepdims", 1) else e.unsqueeze(ctx.g, axes)
    if ctx.node.op_type == "ReduceMean":
        count = int(np.prod([ctx.shape(ctx.x)[a] for a in axes]))
        g = e.op("Mul", [g, ctx.scalar(1.0 / count)])
    return [e.op("Expand", [g, e.op("Shape", [ctx.x])])] + [None] * (len(ctx.node.input) - 1)


@register("ReduceMax", "ReduceMin")
def reduce_max_min(ctx: VjpContext) -> list:
    """g goes to the positions equal to the extreme (a global max pool written as x.amax((2, 3))),
    split evenly between ties."""
    axes = _axes(ctx)
    e = ctx.emit
    rest = [None] * (len(ctx.node.input) - 1)
    if not axes:
        return [ctx.g] + rest
    if 0 in axes and ctx.shape(ctx.x)[0] == 1:
        raise UnsupportedVariant("it reduces over the batch axis")
    keep = ctx.attr("keepdims", 1)
    y = ctx.y if keep else e.unsqueeze(ctx.y, axes)
    g = ctx.g if keep else e.unsqueeze(ctx.g, axes)
    mask = e.op("Cast", [e.equal(ctx.x, y)], to=ctx.index.info[ctx.y].elem_type)
    share = e.op("Div", [g, e.reduce("ReduceSum", mask, axes, keepdims=True)])
    return [e.op("Mul", [mask, share])] + rest


@register("ReduceL2")
def reduce_l2(ctx: VjpContext) -> list:
    """y = sqrt(sum x^2) (a cosine head's norm): dx = g x / y."""
    axes = _axes(ctx)
    e = ctx.emit
    rest = [None] * (len(ctx.node.input) - 1)
    if not axes:  # noop_with_empty_axes: the input as it is
        return [ctx.g] + rest
    if 0 in axes and ctx.shape(ctx.x)[0] == 1:
        raise UnsupportedVariant("it reduces over the batch axis")
    keep = ctx.attr("keepdims", 1)
    y = ctx.y if keep else e.unsqueeze(ctx.y, axes)
    g = ctx.g if keep else e.unsqueeze(ctx.g, axes)
    return [e.op("Mul", [ctx.x, e.op("Div", [g, y])])] + rest
