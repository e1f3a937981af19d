"""The result of one explanation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One detection a detector made and that is explained.

    Attributes:
        box: x1, y1, x2, y2 in the original image's pixels.
        box_input: the same box in model-input pixels (the canonical head's).
        class_index: the detected class.
        score: the detection's score, objectness x class probability.
        anchor: the head anchor it came from.
    """

    box: tuple[float, float, float, float]
    box_input: tuple[float, float, float, float]
    class_index: int
    score: float
    anchor: int

    def to_dict(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box], "class_index": self.class_index,
                "score": float(self.score), "anchor": self.anchor}


@dataclass(frozen=True)
class Explanation:
    """SISE output for one image.

    Attributes:
        saliency: float32 [H, W] in [0, 1] at the model input resolution.
        saliency_full: float32 [H0, W0] in [0, 1] on the original image (zero where the model saw nothing).
        layer_maps: float32 [B, H, W], each in [0, 1], shallow to deep (zeros for a skipped block).
        scores: float32 [num_classes], the model's confidences (the configured score) for the image.
        target: the explained class index, or None when explaining a weight vector.
        target_weights: float32 [num_classes], the weights the explanation was computed for.
        predicted: index of the top-scoring class.
        masks_per_layer: number of masks (forward passes) per block.
        timings: seconds per phase: preprocess, predict (only without a target), explain_model, sampling (the
            method itself, SISE's selection and cascade fusion included), fusion (mapping the map back onto
            the original image; the key keeps its name for the JSON sidecars), total. For images
            explained together (``Inspector.explain_batch``) the shared stages' seconds are divided
            among them.
        settings: the resolved method settings, provider and model identity.
        source: the image path, or None for an array.
        detection: for a detector, the detection explained (its box, class and score); None for a
            classifier. ``scores`` are then its anchor's class scores (objectness x class probability).
    """

    saliency: np.ndarray
    saliency_full: np.ndarray
    layer_maps: np.ndarray
    scores: np.ndarray
    target: int | None
    target_weights: np.ndarray
    predicted: int
    masks_per_layer: tuple[int, ...]
    timings: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    source: str | None = None
    detection: Detection | None = None

    def __repr__(self) -> str:  # the arrays' shapes, not their values
        h, w = self.saliency.shape
        box = f"box={[round(float(v), 1) for v in self.detection.box]}, " if self.detection else ""
        return (f"Explanation({box}target={self.target}, predicted={self.predicted}, "
                f"score={float(self.scores[self.predicted]):.4f}, saliency={h}x{w}, "
                f"saliency_full={self.saliency_full.shape[0]}x{self.saliency_full.shape[1]}, "
                f"layers={len(self.layer_maps)}, masks={self.total_masks}, source={self.source!r})")

    @property
    def total_masks(self) -> int:
        return int(sum(self.masks_per_layer))
