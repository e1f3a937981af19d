"""Resize / Upsample (nearest and linear, static scales): separable linear maps, so
y = R_h x R_w^T per channel and dx = R_h^T g R_w, with R precomputed in numpy as MatMul constants."""

from __future__ import annotations

import numpy as np

from ..registry import UnsupportedVariant, VjpContext, register


def source_coordinate(i: np.ndarray, n_in: int, n_out: int, scale: float, mode: str) -> np.ndarray:
    """Input coordinate sampled by output index ``i`` (ONNX coordinate_transformation_mode)."""
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(i, dtype=np.float64)
    if mode == "align_corners":
        return i * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(i, dtype=np.float64)
    if mode == "asymmetric":
        return i / scale
    if mode == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    raise UnsupportedVariant(f"coordinate_transformation_mode={mode!r} is not supported")


def _round(x: np.ndarray, nearest_mode: str) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        return np.ceil(x - 0.5)
    if nearest_mode == "round_prefer_ceil":
        return np.floor(x + 0.5)
    if nearest_mode == "floor":
        return np.floor(x)
    if nearest_mode == "ceil":
        return np.ceil(x)
    raise UnsupportedVariant(f"nearest_mode={nearest_mode!r} is not supported")


def interpolation_matrix(n_in: int, n_out: int, scale: float, *, mode: str, coord_mode: str,
                         nearest_mode: str) -> np.ndarray:
    """R [n_out, n_in] with y = R x along one axis."""
    x = source_coordinate(np.arange(n_out, dtype=np.float64), n_in, n_out, scale, coord_mode)
    r = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if mode == "nearest":
        src = np.clip(_round(x, nearest_mode), 0, n_in - 1).astype(int)
        r[rows, src] = 1.0
    elif mode == "linear":
        x = np.clip(x, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = x - lo
        np.add.at(r, (rows, lo), 1.0 - frac)
        np.add.at(r, (rows, hi), frac)
    else:
        raise UnsupportedVariant(f"mode={mode!r} is not supported (nearest and linear are)")
    return r


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
        r = interpolation_matrix(n_in, n_out, scale, mode=mode, coord_mode=coord_mode,
                                 nearest_mode=nearest_mode)
        if n_in == n_out and np.array_equal(r, np.eye(n_in)):
            continue
        if axis == 2:
            g = e.op("MatMul", [e.const(r.T.astype(ctx.dtype), hint="resize_rt"), g])
        else:
            g = e.op("MatMul", [g, e.const(r.astype(ctx.dtype), hint="resize_r")])
    return [g] + [None] * (len(ctx.node.input) - 1)
