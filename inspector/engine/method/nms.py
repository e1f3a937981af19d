"""A detector's detections from its canonical head (onnx_tools.detection): each anchor's best class
scored objectness x class probability, kept from ``conf`` up, class-wise non-maximum suppression at
IoU ``iou``, the ``limit`` highest left. Plain numpy on the host: A x C scores of one image."""

from __future__ import annotations

import numpy as np


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1, y1, x2, y2 box [4] with each of ``boxes`` [M, 4]."""
    low = np.maximum(box[:2], boxes[:, :2])
    high = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = (lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1))
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def detect(boxes: np.ndarray, classes: np.ndarray, objectness: np.ndarray, *, conf: float, iou_limit: float,
           limit: int) -> list[tuple[int, int, float]]:
    """(anchor, class, score) of the kept detections, highest score first; ``boxes`` [A, 4], ``classes``
    [A, C], ``objectness`` [A] of one image."""
    scores = objectness[:, None] * classes  # [A, C]
    best = scores.argmax(axis=1)
    top = scores[np.arange(len(scores)), best]
    candidates = np.flatnonzero(top >= conf)
    candidates = candidates[np.argsort(-top[candidates], kind="stable")]
    kept: list[int] = []
    for a in candidates:
        same = [k for k in kept if best[k] == best[a]]
        if same and iou(boxes[a], boxes[same]).max() > iou_limit:
            continue
        kept.append(int(a))
        if len(kept) == limit:
            break
    return [(a, int(best[a]), float(top[a])) for a in kept]
