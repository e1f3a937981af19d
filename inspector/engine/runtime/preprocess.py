"""Image -> model tensor, and the geometry to map a map at model resolution back onto the image.

Pure functions. Arrays handed to the API are RGB (or single-channel); files are decoded with OpenCV
(BGR) and converted to RGB first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from ...common.reading import IMAGE_LIMIT_HINT, image_limit, read_regular
from ...config import PreprocessConfig
from ...errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
log = logging.getLogger(__name__)
_STDERR_LOCK = threading.Lock()  # file descriptor 2 is process-wide: one redirect at a time


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
    if not os.path.lexists(path):
        raise ImageError(f"{path}: no such file")
    try:
        data = read_regular(path, image_limit(max_pixels), what="image file", limit_hint=IMAGE_LIMIT_HINT)
    except OSError as e:
        raise ImageError(f"{path}: cannot read the image ({e.strerror})") from e
    return decode_image(data, path, max_pixels=max_pixels)


def decode_image(data: bytes, name: str, *, max_pixels: int) -> np.ndarray:
    """Decode encoded image bytes (a file's content) to RGB (or single-channel) without changing the bit
    depth. Images whose header declares more than ``max_pixels`` pixels are refused before decoding;
    ``name`` names the image in errors and in the log."""
    if len(data) == 0:
        raise ImageError(f"{name}: the file is empty")
    size = image_size(data)
    if size is not None:
        _check_pixels(size[0], size[1], max_pixels, name)
    try:
        with _decoder_messages(name):
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None:
        raise ImageError(f"{name}: not a readable image (unknown format or truncated file)")
    check_size(image, max_pixels, name)
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


@contextlib.contextmanager
def _decoder_messages(name: str) -> Iterator[None]:
    """Send what C decoders print on file descriptor 2 (libjpeg's "Premature end of JPEG file", libpng
    warnings) to the log at INFO instead of the user's terminal."""
    with _STDERR_LOCK, contextlib.ExitStack() as stack:
        try:
            capture = stack.enter_context(tempfile.TemporaryFile())
            saved = os.dup(2)
        except OSError:  # no temporary folder or no descriptor 2: let the decoder print
            saved = None
        if saved is None:
            yield
            return
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(capture.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace").strip()
    if text:
        log.info("%s: the decoder reported: %s", name, " | ".join(text.splitlines()))


def check_size(image: np.ndarray, max_pixels: int, name: str) -> None:
    if image.ndim < 2 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"{name}: zero-size image {image.shape}")
    _check_pixels(image.shape[1], image.shape[0], max_pixels, name)


def _check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} pixels is over preprocess.max_pixels "
                         f"({max_pixels}); raise the limit or downscale the image")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, JPEG, BMP, TIFF, WebP or PNM file, without decoding;
    None for another format or a header that cannot be parsed."""
    readers = ((b"\x89PNG\r\n\x1a\n", _png_size), (b"\xff\xd8", _jpeg_size), (b"BM", _bmp_size),
               (b"II*\x00", _tiff_size), (b"MM\x00*", _tiff_size), (b"RIFF", _webp_size), (b"P", _pnm_size))
    for magic, reader in readers:
        if data[:len(magic)] == magic:
            try:
                size = reader(data)
            except (struct.error, IndexError, ValueError):
                return None
            return size if size is not None and size[0] > 0 and size[1] > 0 else None
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


# Start-of-frame markers (SOF0..SOF15) carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0..RST7, SOI: no length field


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        while data[i] == 0xFF:  # fill bytes before a marker
            i += 1
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            return None
        length = struct.unpack(">H", data[i:i + 2])[0]
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 3:i + 7])
            return width, height  # height 0 (set later by a DNL marker) is unknown -> None
        if length < 2:
            return None
        i += length
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    header = struct.unpack("<I", data[14:18])[0]
    if header == 12:  # BITMAPCOREHEADER: unsigned 16-bit
        return struct.unpack("<HH", data[18:22])
    if header >= 16:  # BITMAPINFOHEADER and later (and OS/2 2.x): signed 32-bit, negative height = top-down
        width, height = struct.unpack("<ii", data[18:26])
        return (width, abs(height)) if width > 0 else None
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[ifd:ifd + 2])[0]
    found: dict[int, int] = {}
    for k in range(count):
        entry = data[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257) and kind == 3:  # SHORT, left-justified in the 4-byte value field
            found[tag] = struct.unpack(order + "H", entry[8:10])[0]
        elif tag in (256, 257) and kind == 4:  # LONG
            found[tag] = struct.unpack(order + "I", entry[8:12])[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    if data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: key frame tag (3 bytes), start code, 14-bit width and height
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f, then 14-bit width - 1 and height - 1
        if data[20] != 0x2F:
            return None
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: flags, 3 reserved bytes, 24-bit canvas width - 1 and height - 1
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
    return None


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 3 or data[1:2] not in b"123456" or not data[2:3].isspace():
        return None
    numbers: list[int] = []
    i = 2
    while len(numbers) < 2 and i < len(data):
        c = data[i:i + 1]
        if c.isspace():
            i += 1
        elif c == b"#":  # a comment runs to the end of the line
            end = data.find(b"\n", i)
            i = len(data) if end < 0 else end + 1
        elif c.isdigit():
            j = i
            while j < len(data) and data[j:j + 1].isdigit():
                j += 1
            numbers.append(int(data[i:j]))
            i = j
        else:
            return None
    return (numbers[0], numbers[1]) if len(numbers) == 2 else None


_GRAY_NOTED = threading.Event()  # "grey images are replicated" is logged once per process


def _channels(image: np.ndarray, order: str, name: str, gray: str = "replicate") -> np.ndarray:
    """HxWxC in the model's channel order; a grey image on a colour model has its channel repeated
    (``gray: replicate``) or is refused; other channel counts that do not fit are refused."""
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
        if c == 1 and gray == "replicate":
            if not _GRAY_NOTED.is_set():
                _GRAY_NOTED.set()
                log.info("grey images are given to the %s model with their channel repeated three times "
                         "(preprocess.gray: replicate)", order)
            return np.repeat(image, 3, axis=2)
        if c == 1:
            raise ImageError(f"{name}: single-channel (grayscale) image but the model expects {order} and "
                             "preprocess.gray is refuse; set preprocess.gray: replicate to repeat the "
                             "channel, or convert the image to colour")
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
    pixels = _channels(image, cfg.channel_order, name, cfg.gray).astype(np.float32)
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
    if canvas == "letterbox":  # the border: the dataset mean (zero after normalisation) or a pixel value
        raw = cfg.letterbox_fill
        fill = 0.0 if raw == "mean" else (np.float32(raw) * np.float32(cfg.scale) - mean) / std
        padded = np.empty((height, width, out.shape[2]), np.float32)
        padded[:] = fill
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


def box_to_original(box, geometry: Geometry) -> tuple[float, float, float, float]:
    """An x1, y1, x2, y2 box in model-input pixels, in the original image's pixels (clipped to it): the
    inverse of the resize and of the letterbox's border or the crop's offset."""
    h0, w0 = geometry.original
    rh, rw = geometry.resized
    top, left = geometry.offset
    sign = 1.0 if geometry.mode == "shorter_side_center_crop" else -1.0  # crop: the input starts inside
    x1, y1, x2, y2 = (float(v) for v in box)
    xs = [min(max((x + sign * left) * w0 / rw, 0.0), float(w0)) for x in (x1, x2)]
    ys = [min(max((y + sign * top) * h0 / rh, 0.0), float(h0)) for y in (y1, y2)]
    return xs[0], ys[0], xs[1], ys[1]
