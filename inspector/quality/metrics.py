"""Explanation-quality metrics of the SISE paper's evaluation (EBPG, mIoU, Bbox, Drop/Increase,
deletion/insertion). numpy only.

S is a saliency map (higher = more evidence), G a binary ground-truth mask of the same shape.
Metrics that re-score the model take a ``score`` callable: float32 masks [K, H, W] -> scores [K]
(psi of the target for the pre-processed image times each mask).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def top_mask(saliency: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the ``count`` highest pixels (ties broken by position, so exactly ``count``)."""
    flat = np.asarray(saliency, np.float64).ravel()
    keep = np.zeros(flat.size, bool)
    if count > 0:
        keep[np.argsort(-flat, kind="stable")[:count]] = True
    return keep.reshape(np.shape(saliency))


def top_fraction(saliency: np.ndarray, fraction: float) -> np.ndarray:
    return top_mask(saliency, round(fraction * np.size(saliency)))


def ebpg(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Energy-based pointing game: share of the map's energy inside the mask."""
    s = np.asarray(saliency, np.float64)
    total = s.sum()
    return float(s[mask].sum() / total) if total > 0 else 0.0


def miou(saliency: np.ndarray, mask: np.ndarray, fraction: float = 0.2) -> float:
    """IoU of the top-``fraction`` pixels of the map with the mask."""
    top = top_fraction(saliency, fraction)
    union = (top | mask).sum()
    return float((top & mask).sum() / union) if union else 0.0


def bbox(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the top-|G| pixels of the map that lie inside the mask."""
    n = int(mask.sum())
    return float((top_mask(saliency, n) & mask).sum() / n) if n else 0.0


def drop_increase(saliency: np.ndarray, base_score: float, score: Callable, fraction: float = 0.15):
    """(drop, increase) for one image keeping the top-``fraction`` pixels as a binary mask:
    drop = max(0, base - kept) / base, increase = kept > base."""
    kept = float(score(top_fraction(saliency, fraction)[None].astype(np.float32))[0])
    drop = max(0.0, base_score - kept) / base_score if base_score > 0 else 0.0
    return drop, kept > base_score


def deletion_insertion(saliency: np.ndarray, score: Callable, steps: int = 32) -> tuple[float, float]:
    """Areas under the score curves when the most salient pixels are removed first (deletion: lower is
    better) or revealed first on an empty (mean) image (insertion: higher is better); x in [0, 1]."""
    n = np.size(saliency)
    order = np.argsort(-np.asarray(saliency, np.float64).ravel(), kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    counts = np.linspace(0, n, steps + 1).round().astype(np.int64)
    revealed = (rank[None, :] < counts[:, None]).reshape(steps + 1, *np.shape(saliency)).astype(np.float32)
    insertion = score(revealed)
    deletion = score(1.0 - revealed)
    return auc(deletion), auc(insertion)


def auc(values: np.ndarray) -> float:
    """Trapezoidal area under equally spaced values on [0, 1]."""
    v = np.asarray(values, np.float64)
    return float(((v[:-1] + v[1:]) / 2).mean()) if v.size > 1 else float(v.sum())
