"""Resize / Upsample (nearest and linear, static scales): separable linear maps, so
y = R_h x R_w^T per channel and dx = R_h^T g R_w, with R precomputed in numpy as MatMul constants."""

from __future__ import annotations

import numpy as np

from ...interpolation import InterpolationError, interpolation_matrix
from ..registry import UnsupportedVariant, VjpContext, register


def _static_scales(ctx: VjpContext, rank: int) -> np.ndarray | None:
    op = ctx.node.op_type
    if op == "Upsample" and ctx.opset < 9:
        return np.asarray(ctx.attr("scales"), dtype=np.float64)
    slot = 1 if (op == "Upsample" or ctx.opset < 11) else 2
    value = ctx.const_input(slot, "scales")
    return None if value is None or value.size == 0 else value.astype(np.float64).reshape(-1)[:rank]


@register("Resize", "Upsample")
def resize(ctx: VjpContext) -> list:
    in_shape, out_shape = ctx.shape(ctx.x), ctx.shape(ctx.y)
    rank = len(in_shape)
    if rank != 4:
        raise UnsupportedVariant(f"only rank-4 inputs are supported (rank {rank})")
    if in_shape[:2] != out_shape[:2]:
        raise UnsupportedVariant("resizing the batch or channel axis is not supported")
    if ctx.attr("antialias", 0) or ctx.attr("axes") is not None:
        raise UnsupportedVariant("antialias and axes are not supported")
    legacy = ctx.node.op_type == "Upsample" or ctx.opset < 11
    coord_mode = "asymmetric" if legacy else ctx.attr("coordinate_transformation_mode", "half_pixel")
    nearest_mode = "floor" if legacy else ctx.attr("nearest_mode", "round_prefer_floor")
    mode = ctx.attr("mode", "nearest")
    mode = {"bilinear": "linear"}.get(mode, mode)
    scales = _static_scales(ctx, rank)
    e = ctx.emit
    g = ctx.g
    for axis in (2, 3):
        n_in, n_out = in_shape[axis], out_shape[axis]
        scale = scales[axis] if scales is not None else n_out / n_in
        try:
            r = interpolation_matrix(n_in, n_out, scale, mode=mode, coord_mode=coord_mode,
                                     nearest_mode=nearest_mode)
        except InterpolationError as e:
            raise UnsupportedVariant(str(e)) from e
        if n_in == n_out and np.array_equal(r, np.eye(n_in)):
            continue
        if axis == 2:
            g = e.op("MatMul", [e.const(r.T.astype(ctx.dtype), hint="resize_rt"), g])
        else:
            g = e.op("MatMul", [g, e.const(r.astype(ctx.dtype), hint="resize_r")])
    return [g] + [None] * (len(ctx.node.input) - 1)
