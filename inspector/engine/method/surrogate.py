"""Scores for the selected maps that SISE does not run through the model (``method.score_fraction`` < 1).

Of a block's selected maps, the ones that get a forward pass are one per cluster of similar maps (k-means
on the maps at their own low resolution, started from maps spread evenly over the gradient ranking). The
other maps' scores are the posterior mean of a Gaussian process fitted to the measured ones (a squared-
exponential kernel on the same low-resolution maps). A layer map is still sum_k s_k m_k / sum(m_k) over
every selected map, measured or predicted, so cheap presets keep the whole sampling instead of dropping
maps (benchmarks/presets.py measures how close that stays to scoring every map).
"""

from __future__ import annotations

import math

import numpy as np

from onnx_tools.interpolation import upsample_matrix

KMEANS_ROUNDS = 20
BANDWIDTH = 0.5  # the kernel's squared length, as a fraction of the median squared distance of scored maps
NOISE = 1e-3  # the kernel's diagonal jitter, relative to its unit variance
TIE = 1e-9  # distances this close count as equal (float rounding would otherwise break the tie)
EPS = 1e-12  # as the sampler graph: a constant map has mask 0 and weight 0


def scored_count(selected: int, fraction: float) -> int:
    """How many of a block's ``selected`` maps get a forward pass: floor(fraction * selected) (never more
    than the fraction promises), at least 2 (a surrogate needs two measured scores to have a scale), at
    most all of them."""
    return min(selected, max(2, math.floor(fraction * selected + 1e-9)))


def map_features(activations: np.ndarray) -> np.ndarray:
    """float64 [K, h*w]: each map min-max scaled to [0, 1] at its own resolution (zeros if constant)."""
    flat = activations.reshape(len(activations), int(np.prod(activations.shape[1:]))).astype(np.float64)
    low = flat.min(axis=1, keepdims=True)
    spread = flat.max(axis=1, keepdims=True) - low
    return np.divide(flat - low, spread, out=np.zeros_like(flat), where=spread > 0)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def choose(features: np.ndarray, count: int) -> np.ndarray:
    """Sorted indices of the ``count`` maps to score, among maps given in decreasing gradient order.

    k-means with ``count`` centres started at maps spread evenly over that order; each cluster is
    represented by its member nearest to the centre (the first in gradient order on a tie). Clusters
    that end up empty are made up by the evenly spread start, so exactly ``count`` are returned.
    Deterministic: no random start."""
    total = len(features)
    if count >= total:
        return np.arange(total)
    start = np.floor((np.arange(count) + 0.5) * total / count).astype(np.int64)
    centres = features[start].copy()
    for _ in range(KMEANS_ROUNDS):
        labels = _squared_distances(features, centres).argmin(axis=1)
        moved = centres.copy()
        for j in range(count):
            members = labels == j
            if members.any():
                moved[j] = features[members].mean(axis=0)
        if np.array_equal(moved, centres):
            break
        centres = moved
    distances = _squared_distances(features, centres)
    labels = distances.argmin(axis=1)
    chosen: list[int] = []
    for j in range(count):
        members = np.flatnonzero(labels == j)
        if len(members):  # a tie (the two members of a pair are equally near) goes to the larger gradient
            near = distances[members, j]
            nearest = int(members[np.flatnonzero(near <= near.min() + TIE * max(1.0, near.min()))[0]])
            if nearest not in chosen:
                chosen.append(nearest)
    for k in start:  # top up from the even spread (count distinct maps, so this always reaches count)
        if len(chosen) == count:
            break
        if int(k) not in chosen:
            chosen.append(int(k))
    return np.array(sorted(chosen), np.int64)


def predict(features: np.ndarray, scored: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """float64 [K]: the measured ``scores`` at ``scored``, elsewhere the Gaussian-process posterior mean
    (constant mean: the measured scores' mean; kernel exp(-d^2 / (BANDWIDTH * median d^2)), the median over
    pairs of distinct measured maps, pairs closer than TIE counting as one map), kept within the measured
    scores' range (a score is a probability; the mean of a smooth kernel overshoots between steep pairs)."""
    scores = np.asarray(scores, np.float64)
    mean = float(scores.mean())
    predicted = np.full(len(features), mean)
    known = features[scored]
    pair = _squared_distances(known, known)
    distinct = pair[np.triu_indices(len(scored), k=1)]
    distinct = distinct[distinct > TIE]
    if len(distinct):
        length = BANDWIDTH * float(np.median(distinct))
        kernel = np.exp(-pair / length) + NOISE * np.eye(len(scored))
        weights = np.linalg.solve(kernel, scores - mean)
        predicted = np.exp(-_squared_distances(features, known) / length) @ weights + mean
        predicted = np.clip(predicted, scores.min(), scores.max())
    predicted[scored] = scores
    return predicted


def weighted_masks(activations: np.ndarray, weights: np.ndarray, size: tuple[int, int],
                   batch: int = 32) -> np.ndarray:
    """float64 [H, W]: sum_k weights_k * m_k / sum(m_k) with m_k the sampler graph's mask of map k
    (bilinear upsampling with half-pixel centres, then min-max to [0, 1]); ``batch`` maps at a time."""
    height, width = size
    h, w = activations.shape[1:]
    rows = upsample_matrix(h, height).astype(np.float32)
    cols = upsample_matrix(w, width).T.astype(np.float32)
    total = np.zeros(size, np.float64)
    for start in range(0, len(activations), batch):
        acts = activations[start:start + batch].astype(np.float32)
        up = rows @ (acts @ cols)  # [k, H, W]
        low = up.min(axis=(1, 2), keepdims=True)
        masks = (up - low) / np.maximum(up.max(axis=(1, 2), keepdims=True) - low, EPS)
        mass = np.maximum(masks.sum(axis=(1, 2)), EPS)
        scale = np.asarray(weights[start:start + batch], np.float64) / mass
        total += np.tensordot(scale, masks.astype(np.float64), axes=1)
    return total
