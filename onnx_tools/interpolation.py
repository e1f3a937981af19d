"""Separable interpolation along one axis as a matrix R [n_out, n_in] with y = R x (ONNX Resize's
coordinate transformation and nearest rounding modes). Used by the Resize gradient rule and by the
sampler's bilinear upsampling of activations; numpy only."""

from __future__ import annotations

import numpy as np


class InterpolationError(ValueError):
    """A mode the matrices do not implement; the message names it."""


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
    raise InterpolationError(f"coordinate_transformation_mode={mode!r} is not supported")


def _round(x: np.ndarray, nearest_mode: str) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        return np.ceil(x - 0.5)
    if nearest_mode == "round_prefer_ceil":
        return np.floor(x + 0.5)
    if nearest_mode == "floor":
        return np.floor(x)
    if nearest_mode == "ceil":
        return np.ceil(x)
    raise InterpolationError(f"nearest_mode={nearest_mode!r} is not supported")


def interpolation_matrix(n_in: int, n_out: int, scale: float, *, mode: str, coord_mode: str,
                         nearest_mode: str) -> np.ndarray:
    """R [n_out, n_in] with y = R x along one axis.

    Raises:
        InterpolationError: an unsupported mode, coordinate mode or nearest mode.
    """
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
        raise InterpolationError(f"mode={mode!r} is not supported (nearest and linear are)")
    return r


def upsample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear, half-pixel centres, edges clamped (PyTorch ``align_corners=False``): [n_out, n_in]."""
    return interpolation_matrix(n_in, n_out, n_out / n_in, mode="linear", coord_mode="half_pixel",
                                nearest_mode="floor")
