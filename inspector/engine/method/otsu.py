"""Otsu's threshold on values in [0, 1] with a 256-bin histogram (skimage/OpenCV convention)."""

from __future__ import annotations

import numpy as np


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Threshold t (a bin centre) maximising the between-class variance of ``values`` in [0, 1];
    the foreground is ``values > t``. Constant input returns its value (no foreground)."""
    values = np.asarray(values, np.float64).ravel()
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = s0 / w0
        mu1 = (s0[-1] - s0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between = np.where((w0 > 0) & (w1 > 0), between, -1.0)
    if between.max() < 0:
        return float(values.max()) if values.size else 0.0
    return float(centers[int(np.argmax(between))])
