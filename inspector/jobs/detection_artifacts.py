"""What a detector's image is turned into: the files of :mod:`inspector.jobs.artifacts` (npz, overlay,
layers, sidecar) holding every detection, plus one overlay per detection (``overlay.<k>``, k = 1, 2, ...,
highest score first) with that detection's own evidence. Rendering only; :mod:`inspector.jobs.record`
names and writes the files."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import cv2
import numpy as np

from ..engine.explanation import Explanation
from ..engine.review import Review, review, review_map
from .artifacts import (
    FONT,
    _encode,
    _put,
    _text_scale,
    canvas_scale,
    display_rgb,
    image_area,
    layer_strip,
    overlay,
    stroke,
    thumbnail,
)

# box colours (BGR), one per detection in turn: distinct on the jet and turbo maps and on grey parts
BOX_COLOURS = ((255, 255, 255), (255, 0, 255), (0, 255, 255), (0, 128, 255), (255, 255, 0), (128, 255, 128))


@dataclass(frozen=True)
class DetectionReview:
    """One detection as stored and shown: where, what, how sure, and where its evidence lies."""

    position: int  # 1, 2, ...: highest score first
    class_index: int
    class_name: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the original image's pixels
    evidence_in_box: float  # share of its map's evidence inside its box
    review: Review
    masks: int
    masks_per_layer: tuple[int, ...]

    def row(self) -> dict:
        """Its row in the store's ``detections`` table."""
        x1, y1, x2, y2 = (round(float(v), 2) for v in self.box)
        return {"position": self.position, "class_index": self.class_index, "class_name": self.class_name,
                "score": float(self.score), "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                "evidence_in_box": self.evidence_in_box,
                "evidence_peak": max((r.peak for r in self.review.regions), default=0.0),
                "regions": [r.to_dict() for r in self.review.regions], "masks": self.masks}

    def to_dict(self) -> dict:
        """Its entry in the JSON sidecar."""
        row = self.row()
        return {"position": self.position, "class": {"index": self.class_index, "name": self.class_name},
                "score": self.score, "box": [row["x1"], row["y1"], row["x2"], row["y2"]],
                "evidence_in_box": self.evidence_in_box, "regions": row["regions"],
                "masks": self.masks, "masks_per_layer": list(self.masks_per_layer)}


def class_name(index: int, classes) -> str:
    return classes[index] if classes else str(index)


def evidence_in_box(saliency_full: np.ndarray, box) -> float:
    """The share of a map's evidence (its sum) inside a box given in the map's pixels; 0 for an empty map."""
    total = float(saliency_full.sum())
    if total <= 0:
        return 0.0
    h, w = saliency_full.shape
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    inside = float(saliency_full[y1:y2, x1:x2].sum()) if x2 > x1 and y2 > y1 else 0.0
    return inside / total


def review_detections(exps: list[Explanation], cfg, roi: np.ndarray | None = None) -> list[DetectionReview]:
    return [DetectionReview(position=k, class_index=e.detection.class_index,
                            class_name=class_name(e.detection.class_index, cfg.classes),
                            score=float(e.detection.score), box=e.detection.box,
                            evidence_in_box=evidence_in_box(e.saliency_full, e.detection.box),
                            review=review(e, cfg, roi), masks=e.total_masks,
                            masks_per_layer=tuple(e.masks_per_layer))
            for k, e in enumerate(exps, 1)]


def joined_map(exps: list[Explanation], shape: tuple[int, int]) -> np.ndarray:
    """Every detection's evidence on one map: per pixel the largest of their maps (zeros without any)."""
    if not exps:
        return np.zeros(shape, np.float32)
    return np.max(np.stack([e.saliency_full for e in exps]), axis=0)


def image_review(exps: list[Explanation], shape: tuple[int, int], cfg, roi=None) -> Review:
    """The image's regions and ROI share, on the joined map."""
    return review_map(joined_map(exps, shape), cfg, roi)


def _draw_boxes(picture: np.ndarray, found: list[DetectionReview], top: int, highlight: int | None,
                k: int = 1) -> None:
    """Each detection's box in its colour, labelled ``k class score``; with ``highlight``, that one thick
    (drawn last, over the others) and the others thin and grey. ``k``: the canvas scale."""
    width, scale = stroke(picture.shape), _text_scale(picture.shape) * 0.8
    for d in sorted(found, key=lambda d: d.position == highlight):
        colour = BOX_COLOURS[(d.position - 1) % len(BOX_COLOURS)]
        thick = width
        if highlight is not None:
            colour, thick = ((colour, 2 * width) if d.position == highlight else ((160, 160, 160), width))
        x1, y1, x2, y2 = (round(v * k) for v in d.box)
        y1, y2 = y1 + top, y2 + top
        cv2.rectangle(picture, (x1, y1), (x2 - 1, y2 - 1), (0, 0, 0), thick + 2 * width)
        cv2.rectangle(picture, (x1, y1), (x2 - 1, y2 - 1), colour, thick)
        label = f"{d.position} {d.class_name} {d.score:.2f}"
        (tw, th), base_line = cv2.getTextSize(label, FONT, scale, width)
        below = y2 + th + base_line + 2 * width <= picture.shape[0]
        ty = y2 if below else max(top, y1 - th - base_line - 2 * width)
        corner = (x1 + tw + 2 * width, ty + th + base_line + 2 * width)
        cv2.rectangle(picture, (x1, ty), corner, (0, 0, 0), -1)
        _put(picture, label, (x1 + width, ty + th + width), scale, width, colour)


def _caption(found: list[DetectionReview], none_label: str, good: bool) -> str:
    if not found:
        return f"{none_label} | no detection" + (" | good part" if good else "")
    listed = ", ".join(f"{d.position} {d.class_name} {d.score:.2f}" for d in found[:4])
    more = f", +{len(found) - 4}" if len(found) > 4 else ""
    return f"{len(found)} detection(s): {listed}{more}"


def render_detections(exps: list[Explanation], image: np.ndarray, cfg, *, source: str | None,
                      found: list[DetectionReview], image_review: Review, roi: np.ndarray | None = None,
                      extra: dict | None = None, meta: dict | None = None) -> dict[str, bytes]:
    """The bytes of every artifact of a detector's image, by kind: npz (optional), overlay (every box over
    the joined evidence), ``overlay.<k>`` per detection (its own map, its box highlighted), layers (a row
    of block maps per detection), sidecar (``meta`` and ``extra`` merged in, the detections listed)."""
    v = cfg.visuals
    shape = image.shape[:2]
    good = not found and cfg.detect.none_label in cfg.good_classes
    if roi is not None and roi.shape != shape:
        roi = cv2.resize(roi.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    out = {}
    if cfg.outputs.npz:
        npz = io.BytesIO()
        blocks = 0 if not exps else len(exps[0].layer_maps)
        np.savez_compressed(
            npz, saliency=np.stack([e.saliency for e in exps]) if exps else np.zeros((0, 0, 0), np.float32),
            saliency_full=(np.stack([e.saliency_full for e in exps]) if exps
                           else np.zeros((0, *shape), np.float32)),
            layer_maps=(np.stack([e.layer_maps for e in exps]) if exps
                        else np.zeros((0, blocks, 0, 0), np.float32)),
            boxes=np.array([d.box for d in found], np.float32).reshape(-1, 4),
            classes=np.array([d.class_index for d in found], np.int64),
            scores=np.array([d.score for d in found], np.float32),
            masks_per_layer=np.array([d.masks_per_layer for d in found], np.int64)
            .reshape(len(found), blocks))
        out["npz"] = npz.getvalue()

    def picture(saliency, label, highlight=None, regions=()):
        pic = overlay(image, saliency, alpha=v.good_opacity if good else v.opacity, colormap=v.colormap,
                      label=label, roi=roi, regions=regions)
        top, _, _ = image_area(shape)
        _draw_boxes(pic, found, top=top, highlight=highlight, k=canvas_scale(shape))
        return pic

    encode = ((lambda p: _encode(p, ".png")) if cfg.outputs.overlay == "png" else
              (lambda p: _encode(p, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, cfg.outputs.jpeg_quality))))
    joined = picture(joined_map(exps, shape), _caption(found, cfg.detect.none_label, good))
    out["overlay"] = encode(joined)
    out["thumb"] = thumbnail(joined, image.shape)
    for d, e in zip(found, exps):
        label = (f"{d.position}/{len(found)}: {d.class_name} {d.score:.2f} | "
                 f"evidence in its box {d.evidence_in_box:.0%}")
        out[f"overlay.{d.position}"] = encode(picture(e.saliency_full, label, d.position, d.review.regions))
    if exps:
        strips = [layer_strip(e, image, colormap=v.colormap, title=f"{d.position} {d.class_name}")
                  for d, e in zip(found, exps)]
        out["layers"] = _encode(np.concatenate(strips, axis=0), ".png")
    else:
        h, w = shape
        tile = cv2.resize(cv2.cvtColor(display_rgb(image), cv2.COLOR_RGB2BGR), (128, max(1, 128 * h // w)),
                          interpolation=cv2.INTER_AREA)
        out["layers"] = _encode(tile, ".png")
    sidecar = {"source": source, **(meta or {}),
               "detections": [d.to_dict() for d in found], "good": good, **image_review.to_dict(),
               **(extra or {})}
    out["sidecar"] = json.dumps(sidecar, indent=2).encode()
    return out
