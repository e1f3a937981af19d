"""Pre-processing geometry against coordinates worked out by hand: a spot in the image lands where the
resize / letterbox / centre-crop arithmetic says in the model input, and a spot in a model-resolution map
lands back where it came from in the image.

The image is 100 x 200 (H x W), the model input 64 x 64. With pixel centres at i + 0.5, a resize by s maps
image coordinate u to (u + 0.5) * s - 0.5, then the offset applies:
    stretch     s = (64/100, 64/200) = (0.64, 0.32), offset (0, 0)
    letterbox   s = min(0.64, 0.32) = 0.32 -> 32 x 64, padded: offset top (64 - 32) // 2 = 16, left 0
    centre crop s = max(0.64, 0.32) = 0.64 -> 64 x 128, cropped: offset left (128 - 64) // 2 = 32, top 0
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from inspector.config import PreprocessConfig
from inspector.engine.runtime.preprocess import to_original, to_tensor
from inspector.errors import ImageError

H, W = 100, 200
CASES = {  # mode: (scale y, scale x, offset y in the model input, offset x)
    "stretch": (0.64, 0.32, 0.0, 0.0),
    "letterbox": (0.32, 0.32, 16.0, 0.0),
    "shorter_side_center_crop": (0.64, 0.64, 0.0, -32.0),
}


def forward(y: float, x: float, mode: str) -> tuple[float, float]:
    sy, sx, oy, ox = CASES[mode]
    return (y + 0.5) * sy - 0.5 + oy, (x + 0.5) * sx - 0.5 + ox


def centroid(a: np.ndarray) -> tuple[float, float]:
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    return float((yy * a).sum() / a.sum()), float((xx * a).sum() / a.sum())


@pytest.mark.parametrize("mode", sorted(CASES))
def test_a_spot_in_the_image_lands_where_the_arithmetic_says(mode):
    image = np.zeros((H, W, 3), np.uint8)
    image[40:56, 100:132] = 255  # a 16 x 32 spot, centre (47.5, 115.5)
    cfg = PreprocessConfig(resize=mode, scale=1 / 255, mean=(0.0,), std=(1.0,))
    tensor, geometry = to_tensor(image, cfg, (64, 64), "NCHW")
    assert geometry.original == (H, W)
    got = centroid(tensor[0, 0])
    want = forward(47.5, 115.5, mode)
    assert got == pytest.approx(want, abs=0.15), (mode, got, want)


@pytest.mark.parametrize("mode", sorted(CASES))
def test_a_spot_in_a_map_lands_back_on_the_image(mode):
    y, x = 47.5, 115.5  # the image point whose model-input position forward() gives
    ty, tx = forward(y, x, mode)
    yy, xx = np.mgrid[0:64, 0:64]
    blob = np.exp(-((yy - ty) ** 2 + (xx - tx) ** 2) / (2 * 2.0 ** 2)).astype(np.float32)
    _, geometry = to_tensor(np.zeros((H, W, 3), np.uint8), PreprocessConfig(resize=mode), (64, 64), "NCHW")
    back = to_original(blob, geometry)
    assert back.shape == (H, W)
    assert centroid(back) == pytest.approx((y, x), abs=0.6), mode
    if mode == "letterbox":  # the padding rows are not part of the image
        assert geometry.offset == (16, 0) and geometry.resized == (32, 64)
    if mode == "shorter_side_center_crop":  # what the crop cut off is zero evidence
        assert geometry.offset == (0, 32) and geometry.resized == (64, 128)
        assert back[:, :45].max() == 0 and back[:, 155:].max() == 0


def test_grey_images_on_a_colour_model_are_replicated_or_refused():
    """preprocess.gray: replicate gives exactly the tensor of the grey image repeated into three channels
    (done by hand here); refuse names the key to change."""
    grey = np.random.default_rng(7).integers(0, 256, (30, 40), dtype=np.uint8)
    cfg = PreprocessConfig()
    tensor, _ = to_tensor(grey, cfg, (16, 16), "NCHW")
    by_hand, _ = to_tensor(np.stack([grey, grey, grey], axis=2), cfg, (16, 16), "NCHW")
    np.testing.assert_array_equal(tensor, by_hand)
    with pytest.raises(ImageError, match="preprocess.gray: replicate"):
        to_tensor(grey, dataclasses.replace(cfg, gray="refuse"), (16, 16), "NCHW")


def test_letterbox_border_is_the_configured_pixel_value():
    """A 10x20 image letterboxed into 20x20 leaves 5 rows above and below; with letterbox_fill 255 they
    hold what a white pixel becomes, (255/255 - mean) / std per channel; by default the dataset mean (0)."""
    image = np.full((10, 20, 3), 40, np.uint8)
    cfg = PreprocessConfig(resize="letterbox", mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    white, geometry = to_tensor(image, dataclasses.replace(cfg, letterbox_fill=255.0), (20, 20), "NCHW")
    assert geometry.offset == (5, 0) and geometry.resized == (10, 20)
    for channel, expected in enumerate([1.0, 3.0, 0.5]):  # (1 - 0.5) / 0.5, (1 - 0.25) / 0.25, 1 / 2
        np.testing.assert_allclose(white[0, channel, :5], expected, rtol=1e-6)
        np.testing.assert_allclose(white[0, channel, 15:], expected, rtol=1e-6)
    default, _ = to_tensor(image, cfg, (20, 20), "NCHW")
    assert not default[0, :, :5].any() and not default[0, :, 15:].any()
    np.testing.assert_array_equal(white[0, :, 5:15], default[0, :, 5:15])  # the image itself unchanged
