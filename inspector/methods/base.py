"""What every method returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MethodResult:
    """saliency: float32 [H, W] in [0, 1]; layer_maps: per block [H, W] in [0, 1] or None;
    masks_per_layer: forward passes spent per block (RISE reports its masks on the last block)."""

    saliency: np.ndarray
    layer_maps: list
    masks_per_layer: tuple
