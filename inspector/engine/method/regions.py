"""Regions of evidence: binarise a saliency map, split it into connected components, describe each."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from ...config import THRESHOLDS
from .otsu import otsu_threshold


@dataclass(frozen=True)
class Region:
    """One connected region of evidence, in pixels of the map it was found on.

    box: (x0, y0, x1, y1) with exclusive ends; centroid: (x, y); peak and mean: saliency inside.
    """

    box: tuple[int, int, int, int]
    area: int
    area_fraction: float
    centroid: tuple[float, float]
    peak: float
    mean: float

    def to_dict(self) -> dict:
        return asdict(self)


def threshold_of(saliency: np.ndarray, how: str, value: float) -> float:
    if how == "otsu":
        return otsu_threshold(saliency)
    if how == "fixed":
        return float(value)
    if how == "percentile":
        return float(np.percentile(saliency, value))
    raise ValueError(f"unknown threshold {how!r}; use one of {', '.join(THRESHOLDS)}")


def find_regions(saliency: np.ndarray, *, how: str = "otsu", value: float = 0.5,
                 min_area: int = 16) -> list[Region]:
    """Connected regions (8-connectivity) of ``saliency > threshold``, largest evidence first.

    Args:
        saliency: float [H, W] in [0, 1].
        how: "otsu" (default), "fixed" (``value`` in [0, 1]) or "percentile" (``value`` in [0, 100]).
        min_area: regions with fewer pixels are dropped.
    """
    s = np.asarray(saliency, np.float32)
    binary = (s > threshold_of(s, how, value)).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    regions = []
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < min_area:
            continue
        inside = s[labels == k]
        regions.append(Region(box=(x, y, x + w, y + h), area=area, area_fraction=area / s.size,
                              centroid=(float(centroids[k][0]), float(centroids[k][1])),
                              peak=float(inside.max()), mean=float(inside.mean())))
    return sorted(regions, key=lambda r: -r.mean * r.area)
