"""What a reviewer needs beyond the map: regions of evidence and, with a part/ROI mask, how much of
the evidence lies on the part (flagging explanations that mostly point elsewhere)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..common.reading import IMAGE_LIMIT_HINT, image_limit, read_regular
from ..config import InspectorConfig
from ..errors import ConfigError
from .explanation import Explanation
from .method.regions import Region, find_regions


@dataclass(frozen=True)
class Review:
    regions: list[Region]  # on saliency_full (original image pixels)
    roi_inside: float | None  # share of the evidence inside the ROI, None without an ROI
    flagged: bool  # evidence mostly outside the ROI

    def to_dict(self) -> dict:
        return {"regions": [r.to_dict() for r in self.regions], "roi_inside": self.roi_inside,
                "flagged": self.flagged}


def load_roi(path: str, max_pixels: int) -> np.ndarray:
    try:
        data = read_regular(path, image_limit(max_pixels), what="image file", limit_hint=IMAGE_LIMIT_HINT)
    except OSError as e:
        raise ConfigError(f"roi.mask: cannot read {path} ({e.strerror})") from e
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
    if mask is None:
        raise ConfigError(f"roi.mask: cannot read {path} as an image (white = part, black = elsewhere)")
    return mask > 127


def review(exp: Explanation, cfg: InspectorConfig, roi: np.ndarray | None = None) -> Review:
    return review_map(exp.saliency_full, cfg, roi)


def review_map(s: np.ndarray, cfg: InspectorConfig, roi: np.ndarray | None = None) -> Review:
    """:func:`review` of a map on the original image (a detector's image: its detections' maps joined)."""
    r = cfg.regions
    regions = find_regions(s, how=r.threshold, value=r.value, min_area=r.min_area)
    if roi is None:
        return Review(regions=regions, roi_inside=None, flagged=False)
    if roi.shape != s.shape:
        roi = cv2.resize(roi.astype(np.uint8), (s.shape[1], s.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    total = float(s.sum())
    inside = float(s[roi].sum() / total) if total > 0 else 0.0
    return Review(regions=regions, roi_inside=inside, flagged=inside < cfg.roi.flag_below)
