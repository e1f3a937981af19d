"""Which feature maps of a block become masks (SISE eq. 7, Ada-SISE), from tiny per-channel vectors."""

from __future__ import annotations

import numpy as np

from .otsu import otsu_threshold

CONSTANT_EPS = 1e-6  # maps whose spatial max - min is below this have no min-max mask


def select_maps(alpha: np.ndarray, spread: np.ndarray, *, mu: float, adaptive: bool,
                cap: int | None) -> np.ndarray:
    """Indices of the kept channels of one block, by decreasing alpha.

    Args:
        alpha: float [C], spatial mean of d(score)/d(activation) per channel.
        spread: float [C], spatial max - min of each activation channel (constant maps, and maps
            with inf or NaN (a non-finite spread), are dropped).
        mu: keep alpha_k > mu * max(alpha) (SISE); ignored when ``adaptive``.
        adaptive: Ada-SISE: keep a_k > Otsu(a) over the positive a = alpha / max(alpha).
        cap: keep at most this many (the largest alpha first); None keeps all.

    Returns:
        int64 [K] channel indices. Empty when no gradient is positive (the block is skipped).
    """
    alpha = np.asarray(alpha, np.float64)
    beta = alpha.max() if alpha.size else 0.0
    if beta <= 0:
        return np.zeros(0, np.int64)
    if adaptive:
        a = alpha / beta
        positive = a[a > 0]
        keep = a > otsu_threshold(positive)
    else:
        keep = alpha > mu * beta
    spread = np.asarray(spread, np.float64)
    keep &= np.isfinite(spread) & (spread > CONSTANT_EPS)  # a map with inf or NaN has no mask
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-alpha[idx], kind="stable")]
    if cap is not None:
        idx = idx[:cap]
    return idx.astype(np.int64)
