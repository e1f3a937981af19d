"""SISE's block-wise fusion: cascaded addition and Otsu masking, shallow to deep (paper Fig. 3)."""

from __future__ import annotations

import numpy as np

from .otsu import otsu_threshold


def minmax(x: np.ndarray) -> np.ndarray:
    """Linear rescale to [0, 1]; a constant map becomes zeros."""
    x = np.asarray(x, np.float32)
    low, high = float(x.min()), float(x.max())
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def fuse(layer_maps: list[np.ndarray | None], shape: tuple[int, int]) -> np.ndarray:
    """E = V_1; E = (E + V_b) * [V_b > Otsu(V_b)] for b = 2..B; min-max.

    Args:
        layer_maps: per block (shallow to deep) a [0, 1] map [H, W], or None for a skipped block.
        shape: (H, W), for the all-skipped case.

    Returns:
        float32 [H, W] in [0, 1] (zeros when every block was skipped).
    """
    maps = [m for m in layer_maps if m is not None]
    if not maps:
        return np.zeros(shape, np.float32)
    fused = maps[0].astype(np.float32)
    for deeper in maps[1:]:
        fused = (fused + deeper) * (deeper > otsu_threshold(deeper))
    return minmax(fused)
