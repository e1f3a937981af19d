"""RISE (Petsiuk et al. 2018): N random smooth masks (a grid x grid Bernoulli(p) pattern, bilinearly
upsampled to (grid + 1) cells and randomly shifted), scored through the mask-scorer graph;
saliency = sum_k s_k m_k / (N p), min-max normalised. Seeded, so runs repeat. Needs no gradients;
its masks are its own, not a block's (one entry in masks_per_layer).

The targets of one image (a detector's detections) share the masked images: one forward pass per mask
scores every target, as D-RISE scores all detections from each masked image. Masks are made and summed
a chunk at a time, so memory does not grow with their number."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from ...config import RiseConfig
from ..method.fusion import minmax
from .base import Method, MethodContext, MethodResult


def iter_rise_masks(n: int, size: tuple[int, int], *, grid: int, p: float, seed: int,
                    chunk: int) -> Iterator[np.ndarray]:
    """The masks of :func:`rise_masks`, ``chunk`` at a time (float32 [<= chunk, H, W])."""
    rng = np.random.default_rng(seed)
    height, width = size
    cell_h, cell_w = -(-height // grid), -(-width // grid)
    big = ((grid + 1) * cell_h, (grid + 1) * cell_w)
    for start in range(0, n, chunk):
        out = np.empty((min(chunk, n - start), height, width), np.float32)
        for k in range(len(out)):
            pattern = (rng.random((grid, grid)) < p).astype(np.float32)
            up = cv2.resize(pattern, (big[1], big[0]), interpolation=cv2.INTER_LINEAR)
            dy, dx = rng.integers(0, cell_h), rng.integers(0, cell_w)
            out[k] = up[dy:dy + height, dx:dx + width]
        yield out


def rise_masks(n: int, size: tuple[int, int], *, grid: int, p: float, seed: int) -> np.ndarray:
    """float32 [n, H, W] masks in [0, 1] (n >= 1)."""
    return next(iter_rise_masks(n, size, grid=grid, p=p, seed=seed, chunk=n))


class Rise(Method):
    """Settings: :class:`~inspector.config.RiseConfig` (``method.rise``)."""

    name = "rise"
    needs_gradients = False
    settings_type = RiseConfig

    def explain(self, context: MethodContext) -> MethodResult:
        return self.explain_many([context])[0]

    def explain_many(self, contexts: list[MethodContext]) -> list[MethodResult]:
        groups: dict = {}  # the targets of one image share its masked images
        for i, c in enumerate(contexts):
            groups.setdefault(c.shows, []).append(i)
        results: list = [None] * len(contexts)
        for members in groups.values():
            first = contexts[members[0]]
            rise = first.settings
            weights = np.stack([contexts[i].target_weights for i in members])
            boxes = None if first.target_box is None else np.stack([contexts[i].target_box for i in members])
            totals = np.zeros((len(members), *first.size), np.float64)
            chunks = -(-rise.masks // first.chunk_size)
            for done, masks in enumerate(iter_rise_masks(rise.masks, first.size, grid=rise.grid, p=rise.p,
                                                         seed=0 if rise.seed is None else rise.seed,
                                                         chunk=first.chunk_size), 1):
                scores = first.sessions.score_masks(first.tensor, masks, weights, chunk=first.chunk_size,
                                                    target_boxes=boxes)  # [K, T]
                totals += np.tensordot(scores.T.astype(np.float64), masks, axes=1)
                if first.progress is not None:
                    first.progress(done, chunks)
            for t, i in enumerate(members):
                results[i] = MethodResult(saliency=minmax(totals[t] / (rise.masks * rise.p)), layer_maps=None,
                                          masks_per_layer=(rise.masks,))
        return results
