"""What one explanation is turned into: ``<name>.npz`` (maps and scores; optional), ``<name>_overlay.png``
(or ``.jpg``), ``<name>_layers.png`` and ``<name>.json`` (the sidecar). Rendering only;
:mod:`inspector.record` names and writes the files."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np

from ..config import COLORMAPS
from ..engine.explanation import Explanation


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


FONT = cv2.FONT_HERSHEY_SIMPLEX


def stroke(shape: tuple[int, ...]) -> int:
    """Line width in pixels that stays visible once an image is scaled to a screen: 1 px per 400 px of
    the shorter side (a 2448x2048 camera image gets 5)."""
    return max(1, round(min(shape[:2]) / 400))


def _text_scale(shape: tuple[int, ...]) -> float:
    return max(0.4, min(shape[:2]) / 700)


MIN_CANVAS = 256  # px on the short side of the image as an overlay draws it


def canvas_scale(shape: tuple[int, ...]) -> int:
    """The whole-number factor an image is enlarged by (nearest neighbour) before an overlay is drawn on
    it: a small image (16-64 px, as digit, patch and tile classifiers take) gets at least MIN_CANVAS px on
    its short side, so the caption, the colour bar's words and the region labels keep a readable size
    beside or over a small part of the image instead of covering it. Large images: 1."""
    return max(1, -(-MIN_CANVAS // max(1, min(shape[:2]))))


def image_area(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Where an image of ``shape`` lies in its overlay: (first row, height, width); column 0."""
    k = canvas_scale(shape)
    height, width = shape[0] * k, shape[1] * k
    return caption_height((height, width)), height, width


def caption_height(shape: tuple[int, ...]) -> int:
    """Height of the caption bar above the image in an overlay of an image of this shape."""
    (_, th), base_line = cv2.getTextSize("Ag", FONT, _text_scale(shape), stroke(shape))
    return th + base_line + 4 * stroke(shape) + 4


def _put(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, thick: int,
         color=(255, 255, 255)) -> None:
    cv2.putText(canvas, text, origin, FONT, scale, color, thick, cv2.LINE_AA)


def _colour_bar(height: int, shape: tuple[int, ...], colormap: str) -> np.ndarray:
    """A vertical scale beside the image: the colour of full evidence at the top, of none at the bottom."""
    scale, thick = _text_scale(shape) * 0.8, stroke(shape)
    (lw, _), _ = cv2.getTextSize("high", FONT, scale, thick)
    bar_w = max(10, shape[1] // 30)
    panel = np.full((height, bar_w + lw + 12, 3), 40, np.uint8)
    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(bar_w, axis=1)
    panel[:, 4:4 + bar_w] = cv2.applyColorMap(ramp, COLORMAPS[colormap.lower()])
    (_, th), _ = cv2.getTextSize("high", FONT, scale, thick)
    _put(panel, "high", (bar_w + 8, th + 2), scale, thick)
    _put(panel, "low", (bar_w + 8, height - 4), scale, thick)
    return panel


def _draw_regions(out: np.ndarray, regions, total: float, k: int = 1) -> None:
    """Thick boxes (white on a black edge, visible on any colour) labelled with their number and their
    share of the map's evidence; ``k``: the canvas scale (boxes are in the image's pixels)."""
    width, scale = stroke(out.shape), _text_scale(out.shape) * 0.8
    for i, r in enumerate(regions, 1):
        x0, y0, x1, y1 = (v * k for v in r.box)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 0), 3 * width)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), width)
        label = f"{i}: {r.mean * r.area / total:.0%}" if total > 0 else str(i)
        (tw, th), base_line = cv2.getTextSize(label, FONT, scale, width)
        top = y0 - th - base_line - 2 * width if y0 >= th + base_line + 2 * width else y0 + width
        cv2.rectangle(out, (x0, top), (x0 + tw + 2 * width, top + th + base_line + 2 * width), (0, 0, 0), -1)
        _put(out, label, (x0 + width, top + th + width), scale, width)


def overlay(image: np.ndarray, saliency: np.ndarray, *, alpha: float = 0.5, colormap: str = "jet",
            label: str | None = None, regions=(), roi: np.ndarray | None = None) -> np.ndarray:
    """BGR uint8 picture: a caption bar on top, the image with a heatmap of ``saliency`` blended over it
    (opacity ``alpha``), region boxes labelled with their share of the evidence, the ROI outline (green),
    and a colour bar on the right. A small image is enlarged first (:func:`canvas_scale`);
    :func:`image_area` says where the image lies."""
    k = canvas_scale(image.shape)
    base = cv2.cvtColor(display_rgb(image), cv2.COLOR_RGB2BGR)
    heat = cv2.applyColorMap((np.clip(saliency, 0, 1) * 255).astype(np.uint8), COLORMAPS[colormap.lower()])
    if k > 1:
        size = (base.shape[1] * k, base.shape[0] * k)
        base, heat = (cv2.resize(a, size, interpolation=cv2.INTER_NEAREST) for a in (base, heat))
        roi = None if roi is None else cv2.resize(roi.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    picture = cv2.addWeighted(base, 1.0 - alpha, heat, alpha, 0.0)
    _draw_regions(picture, regions, float(np.clip(saliency, 0, 1).sum()), k)
    if roi is not None:
        contours, _ = cv2.findContours(roi.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(picture, contours, -1, (0, 255, 0), stroke(base.shape))
    picture = np.concatenate([picture, _colour_bar(picture.shape[0], base.shape, colormap)], axis=1)
    bar = np.zeros((caption_height(base.shape), picture.shape[1], 3), np.uint8)
    if label:
        scale, thick = _text_scale(base.shape), stroke(base.shape)
        while scale > 0.25 and cv2.getTextSize(label, FONT, scale, thick)[0][0] + 8 > bar.shape[1]:
            scale -= 0.05  # shrink the caption to the picture's width (small images)
        (_, th), base_line = cv2.getTextSize(label, FONT, scale, thick)
        _put(bar, label, (4, (bar.shape[0] + th - base_line) // 2 + 1), scale, thick)
    return np.concatenate([bar, picture], axis=0)


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


def caption(exp: Explanation, classes, *, good: bool = False) -> str:
    pred = classes[exp.predicted] if classes else str(exp.predicted)
    if good:
        return f"{pred} {exp.scores[exp.predicted]:.2f} | good part"
    tgt = (classes[exp.target] if classes else str(exp.target)) if exp.target is not None else "weights"
    return f"{pred} {exp.scores[exp.predicted]:.2f} | target {tgt}"


def _encode(img: np.ndarray, ext: str, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    if not ok:
        raise OSError(f"{ext} encoding failed")
    return buf.tobytes()


def artifact_suffixes(outputs, detections: int = 0) -> dict[str, str]:
    """Artifact kinds and the file name suffix of each, for an ``OutputsConfig``: the one place that says
    which files an explanation gets (the writer, the store's checks and the reports read it). A
    detector's image with ``detections`` detections also gets one overlay per detection,
    ``overlay.<k>``."""
    kinds = {"npz": ".npz"} if outputs.npz else {}
    kinds.update(overlay=f"_overlay.{outputs.overlay}", layers="_layers.png", sidecar=".json",
                 thumb="_thumb.jpg")
    kinds.update({f"overlay.{k}": f"_overlay_{k}.{outputs.overlay}" for k in range(1, detections + 1)})
    return kinds


def is_good(exp: Explanation, cfg) -> bool:
    """The part is predicted as one of ``good_classes``."""
    return bool(cfg.classes) and cfg.classes[exp.predicted] in cfg.good_classes


def render(exp: Explanation, image: np.ndarray, cfg, *, source: str | None = None, review=None,
           roi: np.ndarray | None = None, extra: dict | None = None) -> dict[str, bytes]:
    """The bytes of every artifact of one explanation, by kind (``artifact_suffixes(cfg.outputs)``), for
    an ``InspectorConfig``; ``extra`` is merged into the JSON sidecar. A part predicted good gets a muted
    heatmap without region boxes."""
    good = is_good(exp, cfg)
    if roi is not None and roi.shape != exp.saliency_full.shape:
        roi = cv2.resize(roi.astype(np.uint8), exp.saliency_full.shape[::-1],
                         interpolation=cv2.INTER_NEAREST) > 0
    v = cfg.visuals
    picture = overlay(image, exp.saliency_full, alpha=v.good_opacity if good else v.opacity,
                      colormap=v.colormap, label=caption(exp, cfg.classes, good=good), roi=roi,
                      regions=review.regions if review is not None and not good else ())
    meta = {**sidecar(exp, cfg.classes, source, review), "good": good, **(extra or {})}
    out = {}
    if cfg.outputs.npz:
        npz = io.BytesIO()
        np.savez_compressed(npz, saliency=exp.saliency, saliency_full=exp.saliency_full,
                            layer_maps=exp.layer_maps, scores=exp.scores,
                            masks_per_layer=np.asarray(exp.masks_per_layer, np.int64))
        out["npz"] = npz.getvalue()
    out["overlay"] = (_encode(picture, ".png") if cfg.outputs.overlay == "png" else
                      _encode(picture, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, cfg.outputs.jpeg_quality)))
    out["layers"] = _encode(layer_strip(exp, image, colormap=v.colormap), ".png")
    out["sidecar"] = json.dumps(meta, indent=2).encode()
    out["thumb"] = thumbnail(picture, image.shape)
    return out


THUMB_SIDE = 192  # px, the longest side of a result's thumbnail (the station's queue shows it)


def thumbnail(picture: np.ndarray, shape: tuple[int, ...]) -> bytes:
    """A small JPEG of an overlay's image area (no caption, no colour bar), made while the overlay is in
    memory so that a queue of 12 MP parts need not decode their overlays."""
    top, height, width = image_area(shape)
    area = picture[top : top + height, :width]
    k = min(1.0, THUMB_SIDE / max(height, width))
    size = (max(1, round(width * k)), max(1, round(height * k)))
    small = cv2.resize(area, size, interpolation=cv2.INTER_AREA)
    return _encode(small, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 80))


def layer_strip(exp: Explanation, image: np.ndarray, *, tile: int = 128, colormap: str = "jet",
                title: str = "input") -> np.ndarray:
    """BGR uint8 strip: the model-resolution input, each block's map (shallow to deep), the fused map, in
    ``colormap``; each tile at least ``tile`` px on its short side (enlarged by nearest neighbour) and
    named in a band above it, never over it (``title`` names the input's tile)."""
    h, w = exp.saliency.shape
    base = cv2.resize(display_rgb(image), (w, h), interpolation=cv2.INTER_AREA)
    tiles = [cv2.cvtColor(base, cv2.COLOR_RGB2BGR)]
    names = [title]
    for b, m in enumerate(exp.layer_maps):
        tiles.append(cv2.applyColorMap((m * 255).astype(np.uint8), COLORMAPS[colormap.lower()]))
        names.append(f"block {b} ({exp.masks_per_layer[b]})")
    tiles.append(cv2.applyColorMap((exp.saliency * 255).astype(np.uint8), COLORMAPS[colormap.lower()]))
    names.append("fused")
    k = max(1, tile / min(h, w))
    size = (max(tile, round(w * k)), max(tile, round(h * k)))
    out = []
    for t, name in zip(tiles, names):
        band = np.full((LABEL_BAND, size[0], 3), 32, np.uint8)
        scale = 0.6  # about 14 px capitals at the strip's size, smaller only for a name that would not fit
        while scale > 0.35 and cv2.getTextSize(name, FONT, scale, 1)[0][0] + 6 > size[0]:
            scale -= 0.05
        cv2.putText(band, name, (3, LABEL_BAND - 7), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(np.concatenate([band, cv2.resize(t, size, interpolation=cv2.INTER_NEAREST)], axis=0))
    return np.concatenate(out, axis=1)


LABEL_BAND = 26  # px above each tile of a layer strip, for its name
