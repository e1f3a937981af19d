"""Softmax and LogSoftmax inside the network (the score head is built by the add-gradients pass)."""

from __future__ import annotations

from ..registry import VjpContext, register


def _axes(ctx: VjpContext) -> list[int]:
    """Axes the normalisation runs over: one axis from opset 13, all trailing axes before (coerced 2-D)."""
    rank = ctx.index.rank(ctx.x)
    if ctx.opset >= 13:
        return [ctx.attr("axis", -1) % rank]
    return list(range(ctx.attr("axis", 1) % rank, rank))


@register("Softmax")
def softmax(ctx: VjpContext) -> list:
    e = ctx.emit
    dot = e.reduce("ReduceSum", e.op("Mul", [ctx.g, ctx.y]), _axes(ctx), keepdims=True)
    return [e.op("Mul", [ctx.y, e.op("Sub", [ctx.g, dot])])]


@register("LogSoftmax")
def log_softmax(ctx: VjpContext) -> list:
    e = ctx.emit
    total = e.reduce("ReduceSum", ctx.g, _axes(ctx), keepdims=True)
    return [e.op("Sub", [ctx.g, e.op("Mul", [e.op("Exp", [ctx.y]), total])])]
