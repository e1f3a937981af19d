"""Softmax and LogSoftmax inside the network, and the softmax's backward pass the score seed shares.

Both backward passes are written so that they keep their digits near saturation. The textbook forms,
``y * (g - sum(g * y))`` and ``g - exp(y) * sum(g)``, subtract two numbers that are nearly equal when one
probability is close to 1: at a confidence of 1 - 1e-7, ``1 - p`` is left with no correct float32 digit.
Here the dominant class ``k`` (where ``y`` is largest) is taken out first: ``g - g_k`` is exactly 0 at ``k``,
and ``1 - p_k`` is computed as the sum of the other probabilities, which float32 keeps to its precision.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..registry import VjpContext, register


def _axes(ctx: VjpContext) -> list[int]:
    """Axes the normalisation runs over: one axis from opset 13, all trailing axes before (coerced 2-D)."""
    rank = ctx.index.rank(ctx.x)
    if ctx.opset >= 13:
        return [ctx.attr("axis", -1) % rank]
    return list(range(ctx.attr("axis", 1) % rank, rank))


def _top(emit, p: str, axes: list[int], dtype: np.dtype) -> tuple[str, str, str]:
    """``(off_top, weights, others)`` along ``axes``: ``p`` with its largest entries set to 0; weights 1/m at
    the m largest entries (one unless tied) and 0 elsewhere; the sum of ``off_top`` (1 - the largest
    entries' total, with its digits)."""
    top = emit.reduce("ReduceMax", p, axes, keepdims=True)
    at_top = emit.op("Cast", [emit.op("Not", [emit.op("Less", [p, top])])],
                     to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    weights = emit.op("Div", [at_top, emit.reduce("ReduceSum", at_top, axes, keepdims=True)])
    one = emit.const(np.ones((), dtype=dtype), hint="one")
    off_top = emit.op("Mul", [p, emit.op("Sub", [one, at_top])])
    return off_top, weights, emit.reduce("ReduceSum", off_top, axes, keepdims=True)


def softmax_vjp(emit, y: str, g: str, axes: list[int], dtype: np.dtype) -> str:
    """d<g, softmax>/dx for ``y`` = softmax(x) along ``axes``: ``y * (d - sum(y * d))`` with
    ``d = g - g_top``, which equals ``y * (g - sum(g * y))`` because the probabilities sum to 1, and at the
    dominant entry, where ``d`` is 0, is ``-y_top * sum(y * d)`` over the other entries only."""
    _, weights, _ = _top(emit, y, axes, dtype)
    g_top = emit.reduce("ReduceSum", emit.op("Mul", [g, weights]), axes, keepdims=True)
    d = emit.op("Sub", [g, g_top])
    dot = emit.reduce("ReduceSum", emit.op("Mul", [y, d]), axes, keepdims=True)
    return emit.op("Mul", [y, emit.op("Sub", [d, dot])])


def log_softmax_vjp(emit, y: str, g: str, axes: list[int], dtype: np.dtype) -> str:
    """d<g, log_softmax>/dx for ``y`` = log_softmax(x): ``g - p * G`` (p = exp(y), G = sum(g)), written as
    ``(g - w * G) - (p - w) * G`` with ``w`` the dominant entry's weight, where ``p - w`` is ``p`` off it and
    minus the others' sum (shared among tied entries) on it."""
    p = emit.op("Exp", [y])
    off_top, weights, others = _top(emit, p, axes, dtype)
    total = emit.reduce("ReduceSum", g, axes, keepdims=True)
    p_minus_w = emit.op("Sub", [off_top, emit.op("Mul", [weights, others])])
    kept = emit.op("Sub", [g, emit.op("Mul", [weights, total])])
    return emit.op("Sub", [kept, emit.op("Mul", [p_minus_w, total])])


@register("Softmax")
def softmax(ctx: VjpContext) -> list:
    return [softmax_vjp(ctx.emit, ctx.y, ctx.g, _axes(ctx), ctx.dtype)]


@register("LogSoftmax")
def log_softmax(ctx: VjpContext) -> list:
    return [log_softmax_vjp(ctx.emit, ctx.y, ctx.g, _axes(ctx), ctx.dtype)]
