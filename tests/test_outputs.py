"""What a reviewer sees: the overlay's layout (caption bar outside the image, colour bar), region boxes a
screen can show, muted good parts, the layer strip's colormap, JPEG overlays and the optional npz."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np

from inspector.config import config_from_dict
from inspector.engine.explanation import Explanation
from inspector.engine.method.regions import find_regions
from inspector.engine.review import Review
from inspector.jobs.artifacts import artifact_suffixes, caption_height, overlay, render, stroke

CLASSES = ["ok", "scratch"]


def explanation(predicted: int, h: int = 96, w: int = 128) -> tuple[Explanation, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((yy - h * 0.4) ** 2 + (xx - w * 0.6) ** 2) / (2 * (h / 10) ** 2)).astype(np.float32)
    layers = np.stack([blob, blob ** 2])
    scores = np.array([0.9, 0.1] if predicted == 0 else [0.1, 0.9], np.float32)
    exp = Explanation(saliency=blob, saliency_full=blob, layer_maps=layers, scores=scores, target=predicted,
                      target_weights=np.eye(2, dtype=np.float32)[predicted], predicted=predicted,
                      masks_per_layer=(3, 4))
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return exp, image


def config(**extra):
    return config_from_dict({"model": "m.onnx", "classes": CLASSES, **extra})


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def test_the_image_sits_below_the_caption_bar_untouched_and_a_colour_bar_beside_it():
    exp, image = explanation(1)
    out = overlay(image, exp.saliency_full, alpha=0.5, colormap="viridis",
                  label="scratch 0.90 | target scratch")
    top = caption_height(image.shape)
    heat = cv2.applyColorMap((exp.saliency_full * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    expected = cv2.addWeighted(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), 0.5, heat, 0.5, 0.0)
    assert np.array_equal(out[top:top + 96, :128], expected)  # no caption drawn over the part
    assert out.shape[0] == top + 96 and out[:top].max() == 255  # the caption is in the bar above
    bar = out[top:top + 96, 128 + 4 + 2]  # one column of the colour bar, top to bottom
    ramp = cv2.applyColorMap(np.linspace(255, 0, 96).astype(np.uint8)[:, None], cv2.COLORMAP_VIRIDIS)[:, 0]
    assert np.array_equal(bar, ramp)


def test_region_boxes_are_thick_enough_for_a_camera_image_and_labelled_with_their_share():
    assert stroke((2048, 2448)) == 5 and stroke((96, 128)) == 1
    h, w = 2048, 2448
    saliency = np.zeros((h, w), np.float32)
    saliency[800:1200, 1000:1600] = 1.0
    saliency[100:140, 100:140] = 0.5
    regions = find_regions(saliency, how="fixed", value=0.25, min_area=16)
    out = overlay(np.full((h, w, 3), 128, np.uint8), saliency, alpha=0.0, regions=regions)
    picture = out[caption_height((h, w)):][:, :w]
    row = picture[1000, 980:1020, 0]  # across the box's left edge at x0 = 1000, on a grey part
    white = np.flatnonzero(row == 255) + 980
    assert white.size >= 5 and white.min() <= 1000 <= white.max()  # a line 5 px or more wide, on the edge
    assert (row[white.min() - 980 - 3:white.min() - 980] == 0).all()  # black on both sides: visible on any
    assert (row[white.max() - 980 + 1:white.max() - 980 + 4] == 0).all()  # heatmap colour
    total = saliency.sum()
    share = regions[0].mean * regions[0].area / total
    assert regions[0].box == (1000, 800, 1600, 1200)
    assert abs(share - 400 * 600 / (400 * 600 + 0.5 * 40 * 40)) < 1e-6  # the label "1: 100%", by hand
    label_area = picture[800 - 60:800, 1000:1200]
    assert (label_area == 255).any() and (label_area == 0).mean() > 0.5  # white text on a black label


def test_a_part_predicted_good_gets_a_muted_overlay_without_boxes():
    cfg = config(good_classes=["ok"])
    for predicted, good in ((0, True), (1, False)):
        exp, image = explanation(predicted)
        regions = find_regions(exp.saliency_full)
        files = render(exp, image, cfg, review=Review(regions=regions, roi_inside=None, flagged=False))
        picture = decode(files["overlay"])
        area = picture[caption_height(image.shape):][:, :128].astype(int)
        alpha = cfg.visuals.good_opacity if good else cfg.visuals.opacity
        heat = cv2.applyColorMap((exp.saliency_full * 255).astype(np.uint8), cv2.COLORMAP_JET)
        blended = cv2.addWeighted(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), 1 - alpha, heat, alpha, 0.0)
        if good:  # the faint heatmap alone: nothing drawn on a good part
            assert alpha == 0.15 and np.array_equal(area, blended.astype(int))
        else:
            assert (np.abs(area - blended.astype(int)).max(axis=2) > 0).sum() > 100  # its boxes are drawn
        meta = json.loads(files["sidecar"])
        assert meta["good"] is good and len(meta["regions"]) == len(regions)  # the data is kept either way


def test_the_layer_strip_follows_the_colormap():
    exp, image = explanation(1)
    cfg = config(visuals={"colormap": "viridis"})
    strip = decode(render(exp, image, cfg)["layers"])
    tile = strip[20:, 128:256]  # block 0 (below its name), scaled from 96x128 to 96x128
    expected = cv2.applyColorMap((exp.layer_maps[0] * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[20:]
    assert np.array_equal(tile, expected)


def test_jpeg_overlays_and_no_npz():
    exp, image = explanation(1)
    cfg = config(outputs={"overlay": "jpg", "npz": False, "jpeg_quality": 80})
    files = render(exp, image, cfg)
    assert sorted(files) == ["layers", "overlay", "sidecar"]
    assert files["overlay"][:3] == b"\xff\xd8\xff"  # a JPEG
    assert artifact_suffixes(cfg.outputs) == {"overlay": "_overlay.jpg", "layers": "_layers.png",
                                              "sidecar": ".json"}
    png = render(exp, image, config())
    assert sorted(png) == ["layers", "npz", "overlay", "sidecar"]
    assert len(files["overlay"]) < len(png["overlay"])
    with np.load(io.BytesIO(png["npz"])) as maps:
        assert np.array_equal(maps["saliency_full"], exp.saliency_full)
