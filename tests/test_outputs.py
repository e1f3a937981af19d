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
from inspector.jobs.artifacts import (
    LABEL_BAND,
    artifact_suffixes,
    canvas_scale,
    caption_height,
    image_area,
    layer_strip,
    overlay,
    render,
    stroke,
)

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
    top, height, width = image_area(image.shape)
    assert (height, width) == (288, 384)  # 96 px enlarged 3 times: at least 256 on the short side
    heat = cv2.applyColorMap((exp.saliency_full * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    expected = cv2.addWeighted(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), 0.5, heat, 0.5, 0.0)
    expected = cv2.resize(expected, (width, height), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(out[top:top + height, :width], expected)  # no caption drawn over the part
    assert out.shape[0] == top + height and out[:top].max() == 255  # the caption is in the bar above
    bar = out[top:top + height, width + 4 + 2]  # one column of the colour bar, top to bottom
    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None]
    ramp = cv2.applyColorMap(ramp, cv2.COLORMAP_VIRIDIS)[:, 0]
    assert np.array_equal(bar, ramp)


def test_a_camera_image_is_drawn_at_its_own_size():
    assert canvas_scale((2048, 2448)) == canvas_scale((256, 300)) == 1
    assert image_area((300, 256))[1:] == (300, 256)
    assert canvas_scale((255, 400)) == 2 and canvas_scale((16, 16)) == 16 and canvas_scale((28, 28)) == 10


def test_a_small_images_labels_cover_little_of_it_and_the_strip_names_lie_above_the_tiles():
    """A 16x16 patch with one region: the region's label and box change under a tenth of the enlarged
    image (drawn at 16 x 16 px they covered most of it); the layer strip's names are in bands above
    its tiles, which hold the maps untouched."""
    h = w = 16
    saliency = np.zeros((h, w), np.float32)
    saliency[6:10, 6:10] = 1.0
    regions = find_regions(saliency, how="fixed", value=0.5, min_area=1)
    image = np.full((h, w, 3), 128, np.uint8)
    out = overlay(image, saliency, alpha=0.0, regions=regions, label="crack 0.99 | target crack")
    top, height, width = image_area(image.shape)
    assert (height, width) == (256, 256)
    changed = (out[top:top + height, :width] != 128).any(axis=2)
    assert 0 < changed.mean() < 0.1, changed.mean()
    exp = Explanation(saliency=saliency, saliency_full=saliency, layer_maps=np.stack([saliency, saliency]),
                      scores=np.array([0.01, 0.99], np.float32), target=1, target_weights=np.eye(2)[1],
                      predicted=1, masks_per_layer=(3, 4))
    strip = layer_strip(exp, image)
    assert strip.shape == (LABEL_BAND + 128, 4 * 128, 3)
    fused = strip[LABEL_BAND:, 3 * 128:]
    expected = cv2.resize(cv2.applyColorMap((saliency * 255).astype(np.uint8), cv2.COLORMAP_JET), (128, 128),
                          interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(fused, expected) and (strip[:LABEL_BAND] == 255).any()


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
        top, height, width = image_area(image.shape)
        area = picture[top:top + height, :width].astype(int)
        alpha = cfg.visuals.good_opacity if good else cfg.visuals.opacity
        heat = cv2.applyColorMap((exp.saliency_full * 255).astype(np.uint8), cv2.COLORMAP_JET)
        blended = cv2.addWeighted(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), 1 - alpha, heat, alpha, 0.0)
        blended = cv2.resize(blended, (width, height), interpolation=cv2.INTER_NEAREST)
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
    tile = strip[LABEL_BAND:, 171:342]  # block 0 (below its name), 96x128 enlarged to 128x171
    expected = cv2.applyColorMap((exp.layer_maps[0] * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    assert np.array_equal(tile, cv2.resize(expected, (171, 128), interpolation=cv2.INTER_NEAREST))


def test_jpeg_overlays_and_no_npz():
    exp, image = explanation(1)
    cfg = config(outputs={"overlay": "jpg", "npz": False, "jpeg_quality": 80})
    files = render(exp, image, cfg)
    assert sorted(files) == ["layers", "overlay", "sidecar", "thumb"]
    assert files["overlay"][:3] == b"\xff\xd8\xff"  # a JPEG
    assert artifact_suffixes(cfg.outputs) == {"overlay": "_overlay.jpg", "layers": "_layers.png",
                                              "sidecar": ".json", "thumb": "_thumb.jpg"}
    png = render(exp, image, config())
    assert sorted(png) == ["layers", "npz", "overlay", "sidecar", "thumb"]
    assert len(files["overlay"]) < len(png["overlay"])
    with np.load(io.BytesIO(png["npz"])) as maps:
        assert np.array_equal(maps["saliency_full"], exp.saliency_full)


def test_the_thumbnail_is_the_overlays_image_area_made_small():
    """The thumbnail written with each result: the overlay's image area (where the station lays the
    overlay over the original) at most 192 px, as JPEG; not the caption band above it."""
    from inspector.jobs.artifacts import image_area

    exp, image = explanation(1)
    files = render(exp, image, config())
    drawn = cv2.imdecode(np.frombuffer(files["overlay"], np.uint8), cv2.IMREAD_COLOR)
    thumb = cv2.imdecode(np.frombuffer(files["thumb"], np.uint8), cv2.IMREAD_COLOR)
    top, height, width = image_area(image.shape)
    assert max(thumb.shape[:2]) <= 192
    assert abs(thumb.shape[1] / thumb.shape[0] - width / height) < 0.02 * width / height
    area = drawn[top:top + height, :width]
    expected = cv2.resize(area, thumb.shape[1::-1], interpolation=cv2.INTER_AREA)
    encoded = cv2.imencode(".jpg", expected, [cv2.IMWRITE_JPEG_QUALITY, 80])[1]
    as_jpeg = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    assert np.abs(thumb.astype(int) - as_jpeg.astype(int)).mean() < 1  # (the test image is noise: JPEG errs)
    caption_only = cv2.resize(drawn[:top], thumb.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(thumb.astype(int) - caption_only.astype(int)).mean() > 20  # not the caption band
