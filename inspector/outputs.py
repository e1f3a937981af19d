"""What one explanation is turned into: ``<name>.npz`` (maps and scores), ``<name>_overlay.png``,
``<name>_layers.png`` and ``<name>.json`` (the sidecar). Rendering only; :mod:`inspector.record` names
and writes the files."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np

from .config import COLORMAPS
from .explanation import Explanation


def display_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB view of an input image of any supported dtype/channel count."""
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        f = img.astype(np.float32)
        span = float(f.max() - f.min())
        img = ((f - f.min()) / span * 255 if span > 0 else np.zeros_like(f)).astype(np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def overlay(image: np.ndarray, saliency: np.ndarray, *, alpha: float = 0.5, colormap: str = "jet",
            label: str | None = None, regions=(), roi: np.ndarray | None = None) -> np.ndarray:
    """BGR uint8 image: a heatmap of ``saliency`` blended over ``image`` (RGB) with opacity ``alpha``,
    region boxes (white), the ROI outline (green) and a caption."""
    base = cv2.cvtColor(display_rgb(image), cv2.COLOR_RGB2BGR)
    heat = cv2.applyColorMap((np.clip(saliency, 0, 1) * 255).astype(np.uint8), COLORMAPS[colormap.lower()])
    out = cv2.addWeighted(base, 1.0 - alpha, heat, alpha, 0.0)
    for r in regions:
        x0, y0, x1, y1 = r.box
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 1)
    if roi is not None:
        contours, _ = cv2.findContours(roi.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (0, 255, 0), 1)
    if label:
        scale = max(0.35, min(out.shape[:2]) / 500)
        while (scale > 0.25
               and cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] + 8 > out.shape[1]):
            scale -= 0.05  # shrink the caption to the image's width (small images)
        (tw, th), base_line = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(out, (0, 0), (tw + 8, th + base_line + 6), (0, 0, 0), -1)
        cv2.putText(out, label, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def sidecar(exp: Explanation, classes, source: str | None, review=None) -> dict:
    name = (lambda i: classes[i] if classes and i is not None else None)
    out = {
        "source": source,
        "prediction": {"index": exp.predicted, "name": name(exp.predicted),
                       "confidence": float(exp.scores[exp.predicted])},
        "target": {"index": exp.target, "name": name(exp.target),
                   "confidence": float(exp.scores[exp.target]) if exp.target is not None else None},
        "masks_per_layer": list(exp.masks_per_layer),
        "timings_s": {k: round(v, 6) for k, v in exp.timings.items()},
        "settings": exp.settings,
    }
    if review is not None:
        out.update(review.to_dict())
    return out


def caption(exp: Explanation, classes) -> str:
    pred = classes[exp.predicted] if classes else str(exp.predicted)
    tgt = (classes[exp.target] if classes else str(exp.target)) if exp.target is not None else "weights"
    return f"{pred} {exp.scores[exp.predicted]:.2f} | target {tgt}"


def _encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


# Artifact kinds and the file name suffix of each; one place, read by the writers and the reports.
ARTIFACT_SUFFIXES = {"npz": ".npz", "overlay": "_overlay.png", "layers": "_layers.png", "sidecar": ".json"}


def render(exp: Explanation, image: np.ndarray, *, classes=None, source: str | None = None, review=None,
           visuals=None, roi: np.ndarray | None = None, extra: dict | None = None) -> dict[str, bytes]:
    """The bytes of every artifact of one explanation, by kind (see ``ARTIFACT_SUFFIXES``); ``extra`` is
    merged into the JSON sidecar."""
    npz = io.BytesIO()
    np.savez_compressed(npz, saliency=exp.saliency, saliency_full=exp.saliency_full,
                        layer_maps=exp.layer_maps, masks_per_layer=np.asarray(exp.masks_per_layer, np.int64),
                        scores=exp.scores)
    colormap, alpha = (visuals.colormap, visuals.opacity) if visuals is not None else ("jet", 0.5)
    if roi is not None and roi.shape != exp.saliency_full.shape:
        roi = cv2.resize(roi.astype(np.uint8), exp.saliency_full.shape[::-1],
                         interpolation=cv2.INTER_NEAREST) > 0
    picture = overlay(image, exp.saliency_full, alpha=alpha, colormap=colormap, label=caption(exp, classes),
                      regions=review.regions if review is not None else (), roi=roi)
    meta = {**sidecar(exp, classes, source, review), **(extra or {})}
    return {
        "npz": npz.getvalue(),
        "overlay": _encode_png(picture),
        "layers": _encode_png(layer_strip(exp, image)),
        "sidecar": json.dumps(meta, indent=2).encode(),
    }


def layer_strip(exp: Explanation, image: np.ndarray, *, tile: int = 128) -> np.ndarray:
    """BGR uint8 strip: the model-resolution input, each block's map (shallow to deep), the fused map."""
    h, w = exp.saliency.shape
    base = cv2.resize(display_rgb(image), (w, h), interpolation=cv2.INTER_AREA)
    tiles = [cv2.cvtColor(base, cv2.COLOR_RGB2BGR)]
    names = ["input"]
    for b, m in enumerate(exp.layer_maps):
        tiles.append(cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET))
        names.append(f"block {b} ({exp.masks_per_layer[b]})")
    tiles.append(cv2.applyColorMap((exp.saliency * 255).astype(np.uint8), cv2.COLORMAP_JET))
    names.append("fused")
    out = []
    for t, name in zip(tiles, names):
        t = cv2.resize(t, (tile, tile * h // w), interpolation=cv2.INTER_NEAREST)
        cv2.putText(t, name, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(t)
    return np.concatenate(out, axis=1)
