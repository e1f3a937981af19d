"""SISE's block-wise fusion: cascaded addition and Otsu masking, shallow to deep (paper Fig. 3)."""

from __future__ import annotations

import numpy as np

from .otsu import otsu_threshold


def minmax(x: np.ndarray) -> np.ndarray:
    """Linear rescale to [0, 1]; a constant map becomes zeros."""
    x = np.asarray(x, np.float32)
    low, high = float(x.min()), float(x.max())
    return (x - low) / (high - low) if high > low else np.zeros_like(x)




def gate(deeper: np.ndarray, fusion: str = "otsu", width: float = 0.0) -> np.ndarray:
    """Where the running map survives at a block: the paper's [V > Otsu(V)], or for ``soft`` the smooth
    sigmoid((V - Otsu(V)) / (width * std(V))), which is the paper's gate in the limit width -> 0 (0.5 on
    the threshold itself) and changes little when V changes little near the threshold."""
    threshold = otsu_threshold(deeper)
    spread = float(np.std(deeper)) * width
    if fusion == "otsu" or spread <= 0.0:
        return (deeper > threshold).astype(np.float32)
    z = np.clip((deeper.astype(np.float64) - threshold) / spread, -60.0, 60.0)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def fuse(layer_maps: list[np.ndarray | None], shape: tuple[int, int], fusion: str = "otsu",
         width: float = 0.0) -> np.ndarray:
    """E = V_1; E = (E + V_b) * gate(V_b) for b = 2..B; min-max. The paper's gate is [V_b > Otsu(V_b)];
    see :func:`gate` for ``soft`` with ``width``.

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
        fused = (fused + deeper) * gate(deeper, fusion, width)
    return minmax(fused)
