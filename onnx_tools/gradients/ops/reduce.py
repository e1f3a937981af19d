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


def _reduced_axes(ctx: VjpContext) -> list[int]:
    """The reduced axes ([] when nothing is reduced); reducing over the batch axis is refused."""
    axes = _axes(ctx)
    if axes and 0 in axes and ctx.shape(ctx.x)[0] == 1:
        raise UnsupportedVariant("it reduces over the batch axis")
    return axes


def _kept(ctx: VjpContext, name: str, axes: list[int]) -> str:
    """``name`` (the output or its gradient) with the reduced axes as size 1, whatever ``keepdims``."""
    return name if ctx.attr("keepdims", 1) else ctx.emit.unsqueeze(name, axes)


@register("ReduceMean", "ReduceSum")
def reduce_mean_sum(ctx: VjpContext) -> list:
    axes = _reduced_axes(ctx)
    e = ctx.emit
    rest = [None] * (len(ctx.node.input) - 1)
    if not axes:
        return [ctx.g] + rest
    g = _kept(ctx, ctx.g, axes)
    if ctx.node.op_type == "ReduceMean":
        count = int(np.prod([ctx.shape(ctx.x)[a] for a in axes]))
        g = e.op("Mul", [g, ctx.scalar(1.0 / count)])
    return [e.op("Expand", [g, e.op("Shape", [ctx.x])])] + rest


@register("ReduceMax", "ReduceMin")
def reduce_max_min(ctx: VjpContext) -> list:
    """g goes to the positions equal to the extreme (a global max pool written as x.amax((2, 3))),
    split evenly between ties."""
    axes = _reduced_axes(ctx)
    e = ctx.emit
    rest = [None] * (len(ctx.node.input) - 1)
    if not axes:
        return [ctx.g] + rest
    mask = e.op("Cast", [e.equal(ctx.x, _kept(ctx, ctx.y, axes))], to=ctx.index.info[ctx.y].elem_type)
    share = e.op("Div", [_kept(ctx, ctx.g, axes), e.reduce("ReduceSum", mask, axes, keepdims=True)])
    return [e.op("Mul", [mask, share])] + rest


@register("ReduceL2")
def reduce_l2(ctx: VjpContext) -> list:
    """y = sqrt(sum x^2) (a cosine head's norm): dx = g x / y."""
    axes = _reduced_axes(ctx)
    rest = [None] * (len(ctx.node.input) - 1)
    if not axes:  # noop_with_empty_axes: the input as it is
        return [ctx.g] + rest
    quotient = ctx.emit.op("Div", [_kept(ctx, ctx.g, axes), _kept(ctx, ctx.y, axes)])
    return [ctx.emit.op("Mul", [ctx.x, quotient])] + rest
