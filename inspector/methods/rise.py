"""RISE (Petsiuk et al. 2018): N random smooth masks (a grid x grid Bernoulli(p) pattern, bilinearly
upsampled to (grid + 1) cells and randomly shifted), scored through the mask-scorer graph;
saliency = sum_k s_k m_k / (N p), min-max normalised. Seeded, so runs repeat."""

from __future__ import annotations

import cv2
import numpy as np

from ..fusion import minmax
from .base import MethodResult


def rise_masks(n: int, size: tuple[int, int], *, grid: int, p: float, seed: int) -> np.ndarray:
    """float32 [n, H, W] masks in [0, 1]."""
    rng = np.random.default_rng(seed)
    height, width = size
    cell_h, cell_w = -(-height // grid), -(-width // grid)
    big = ((grid + 1) * cell_h, (grid + 1) * cell_w)
    out = np.empty((n, height, width), np.float32)
    for k in range(n):
        pattern = (rng.random((grid, grid)) < p).astype(np.float32)
        up = cv2.resize(pattern, (big[1], big[0]), interpolation=cv2.INTER_LINEAR)
        dy, dx = rng.integers(0, cell_h), rng.integers(0, cell_w)
        out[k] = up[dy:dy + height, dx:dx + width]
    return out


def rise(sessions, explained, image, target, *, method, size, progress=None) -> MethodResult:
    rise = method.rise
    masks = rise_masks(rise.masks, size, grid=rise.grid, p=rise.p, seed=rise.seed)
    scores = sessions.score_masks(image, masks, target, chunk=method.chunk_size)
    saliency = minmax(np.tensordot(scores.astype(np.float64), masks, axes=1) / (len(masks) * rise.p))
    n = len(explained.alphas)
    return MethodResult(saliency=saliency, layer_maps=[None] * n,
                        masks_per_layer=(0,) * (n - 1) + (len(masks),))
