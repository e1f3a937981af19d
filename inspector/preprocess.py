"""Image -> model tensor, and the geometry to map a map at model resolution back onto the image.

Pure functions. Arrays handed to the API are RGB (or single-channel); files are decoded with OpenCV
(BGR) and converted to RGB first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from .config import PreprocessConfig
from .errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


@dataclass(frozen=True)
class Geometry:
    """Where the model input came from in the original image.

    Attributes:
        original: (H0, W0) of the image.
        resized: (h, w) the image was resized to before padding/cropping.
        offset: (top, left) of the image inside the model input (letterbox, >= 0) or of the model
            input inside the resized image (center crop, >= 0).
        mode: the resize mode.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    mode: str


def read_image(path: str | os.PathLike, *, max_pixels: int) -> np.ndarray:
    """Decode an image file to RGB (or single-channel) without changing its bit depth."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such file")
    with open(path, "rb") as f:
        return decode_image(f.read(), path, max_pixels=max_pixels)


def decode_image(data: bytes, name: str, *, max_pixels: int) -> np.ndarray:
    """Decode encoded image bytes (a file's content) to RGB (or single-channel), bit depth unchanged."""
    if len(data) == 0:
        raise ImageError(f"{name}: the file is empty")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{name}: not a readable image (unknown format or truncated file)")
    check_size(image, max_pixels, name)
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def check_size(image: np.ndarray, max_pixels: int, name: str) -> None:
    if image.ndim < 2 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"{name}: zero-size image {image.shape}")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError(f"{name}: {image.shape[1]}x{image.shape[0]} pixels is over preprocess.max_pixels "
                         f"({max_pixels}); raise the limit or downscale the image")


def _channels(image: np.ndarray, order: str, name: str) -> np.ndarray:
    """HxWxC float32 in the model's channel order; refuses a channel count that does not fit."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ImageError(f"{name}: expected an HxW or HxWxC image, got shape {image.shape}")
    c = image.shape[2]
    if order == "GRAY":
        if c == 1:
            return image
        if c in (3, 4):
            return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)[:, :, None]
    else:
        if c == 1:
            raise ImageError(f"{name}: single-channel (grayscale) image but the model expects {order}; "
                             "convert the image to colour, or set preprocess.channel_order: GRAY for a gray model")
        if c in (3, 4):
            rgb = image[:, :, :3]
            return rgb[:, :, ::-1] if order == "BGR" else rgb
    raise ImageError(f"{name}: {c} channels; expected 1, 3 or 4")


def as_configured(rgb8: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """A uint8 RGB image as the configured input expects it (GRAY channels, uint16 or float pixels), for
    images the tool makes itself (warm-up, self-test)."""
    image = cv2.cvtColor(rgb8, cv2.COLOR_RGB2GRAY) if cfg.channel_order == "GRAY" else rgb8
    if cfg.input_dtype == "uint16":
        return image.astype(np.uint16) * 257
    if cfg.input_dtype == "float":
        return image.astype(np.float32) / 255
    return image


def _check_dtype(image: np.ndarray, expected: str, name: str) -> None:
    kind = {np.dtype(np.uint8): "uint8", np.dtype(np.uint16): "uint16"}.get(image.dtype)
    if kind is None and np.issubdtype(image.dtype, np.floating):
        kind = "float"
    if kind != expected:
        raise ImageError(f"{name}: {image.dtype} pixels but the config expects {expected} "
                         f"(preprocess.input_dtype); set it and preprocess.scale to match, e.g. uint16 with "
                         "scale 1/65535")


def to_tensor(image: np.ndarray, cfg: PreprocessConfig, size: tuple[int, int], layout: str,
              name: str = "image") -> tuple[np.ndarray, Geometry]:
    """Pre-process one image.

    Args:
        image: HxW or HxWxC (RGB/RGBA), dtype as ``cfg.input_dtype``.
        size: (H, W) of the model input.
        layout: "NCHW" or "NHWC" of the model input.

    Returns:
        float32 tensor [1, C, H, W] (or [1, H, W, C]) and the geometry for mapping results back.
    """
    check_size(image, cfg.max_pixels, name)
    _check_dtype(image, cfg.input_dtype, name)
    pixels = _channels(image, cfg.channel_order, name).astype(np.float32)
    h0, w0 = pixels.shape[:2]
    height, width = size
    if cfg.resize == "stretch":
        resized, offset, canvas = (height, width), (0, 0), None
    else:
        fit = min if cfg.resize == "letterbox" else max
        s = fit(height / h0, width / w0)
        resized = (max(1, round(h0 * s)), max(1, round(w0 * s)))
        offset = (abs(height - resized[0]) // 2, abs(width - resized[1]) // 2)
        canvas = cfg.resize
    out = cv2.resize(pixels, (resized[1], resized[0]), interpolation=cv2.INTER_LINEAR)
    if out.ndim == 2:
        out = out[:, :, None]
    mean = np.asarray(cfg.mean, np.float32)
    std = np.asarray(cfg.std, np.float32)
    out = (out * np.float32(cfg.scale) - mean) / std
    if canvas == "letterbox":  # pad with zeros = the dataset mean after normalisation
        padded = np.zeros((height, width, out.shape[2]), np.float32)
        padded[offset[0]:offset[0] + resized[0], offset[1]:offset[1] + resized[1]] = out
        out = padded
    elif canvas == "shorter_side_center_crop":
        out = out[offset[0]:offset[0] + height, offset[1]:offset[1] + width]
    tensor = out.transpose(2, 0, 1) if layout == "NCHW" else out
    return np.ascontiguousarray(tensor[None]), Geometry((h0, w0), resized, offset, cfg.resize)


def to_original(saliency: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Map a [H, W] map at model resolution onto the original image (zero outside what the model saw)."""
    h0, w0 = geometry.original
    rh, rw = geometry.resized
    top, left = geometry.offset
    if geometry.mode == "letterbox":
        saliency = saliency[top:top + rh, left:left + rw]
    elif geometry.mode == "shorter_side_center_crop":
        canvas = np.zeros((rh, rw), np.float32)
        canvas[top:top + saliency.shape[0], left:left + saliency.shape[1]] = saliency
        saliency = canvas
    return cv2.resize(np.ascontiguousarray(saliency, np.float32), (w0, h0), interpolation=cv2.INTER_LINEAR)
