"""RISE (Petsiuk et al. 2018): N random smooth masks (a grid x grid Bernoulli(p) pattern, bilinearly
upsampled to (grid + 1) cells and randomly shifted), scored through the mask-scorer graph;
saliency = sum_k s_k m_k / (N p), min-max normalised. Seeded, so runs repeat. Needs no gradients;
its masks are its own, not a block's (one entry in masks_per_layer)."""

from __future__ import annotations

import cv2
import numpy as np

from ...config import RiseConfig
from ..method.fusion import minmax
from .base import Method, MethodContext, MethodResult


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


class Rise(Method):
    """Settings: :class:`~inspector.config.RiseConfig` (``method.rise``)."""

    name = "rise"
    needs_gradients = False
    settings_type = RiseConfig

    def explain(self, context: MethodContext) -> MethodResult:
        rise = context.settings
        masks = rise_masks(rise.masks, context.size, grid=rise.grid, p=rise.p,
                           seed=0 if rise.seed is None else rise.seed)
        boxes = None if context.target_box is None else context.target_box[None]
        scores = context.sessions.score_masks(context.tensor, masks, context.target_weights[None],
                                              chunk=context.chunk_size, target_boxes=boxes)[:, 0]
        saliency = minmax(np.tensordot(scores.astype(np.float64), masks, axes=1) / (len(masks) * rise.p))
        return MethodResult(saliency=saliency, layer_maps=None, masks_per_layer=(len(masks),))
