"""The pictures a part page shows, found through the store and never through a path from the request:
artifacts (only inside their run's folder or the store's), the original image (only a file whose
SHA-256 is the one recorded), and the overlay cut to the image so that it lies exactly over the original."""

from __future__ import annotations

import functools
import hashlib
import os

import cv2
import numpy as np

from ..common.reading import open_regular, read_regular
from ..engine.runtime.preprocess import decode_image, image_size
from ..jobs.artifacts import display_rgb, image_area
from ..store import Store

BROWSER_TYPES = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"BM": "image/bmp"}
ARTIFACT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".json": "application/json",
    ".npz": "application/octet-stream",
}


def _inside(path: str, folder: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, base]) == base


def artifact_file(store: Store, part: dict, kind: str) -> str | None:
    """Absolute path of a part's artifact, or None when it is missing or would lie outside both its
    run's folder and the store's folder (a hostile or damaged row)."""
    if kind not in part["artifacts"]:
        return None
    relative = part["artifacts"][kind][0]
    path = store.locate(part["out_dir"], relative)
    homes = [part["out_dir"]] + ([store.home] if store.home else [])
    if not any(_inside(path, home) for home in homes) or not os.path.isfile(path):
        return None
    return path


def media_type(path: str) -> str:
    return ARTIFACT_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


@functools.lru_cache(maxsize=256)
def _file_sha256(path: bytes, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open_regular(path, what="image file") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def original_path(part: dict) -> bytes | None:
    """The first known path of the part's image whose content has the recorded SHA-256 (the file may
    have moved to the done folder, or been replaced by another part's image); hashes are remembered per
    path, size and modification time, so a page view does not read the image again."""
    for raw in dict.fromkeys(part["input_paths"]):
        try:
            st = os.stat(raw)
            if _file_sha256(raw, st.st_size, st.st_mtime_ns) == part["image_sha256"]:
                return raw
        except OSError:
            continue
    return None


def original_bytes(part: dict) -> bytes | None:
    """The part's image file as it was explained; its bytes are hashed again after reading, so a file
    replaced since :func:`original_path` looked at it is never served as this part's."""
    raw = original_path(part)
    if raw is None:
        return None
    try:  # the file hashed to the part's image a moment ago: its size is the image's
        data = read_regular(raw, os.stat(raw).st_size, what="image file")
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == part["image_sha256"] else None


def for_browser(data: bytes, max_pixels: int) -> tuple[bytes, str]:
    """(bytes, media type) a browser shows: PNG, JPEG and BMP as they are, anything else (TIFF, PNM,
    16-bit) decoded and sent as PNG."""
    for magic, kind in BROWSER_TYPES.items():
        if data.startswith(magic):
            return data, kind
    image = decode_image(data, "original", max_pixels=max_pixels)
    _, buf = cv2.imencode(".png", cv2.cvtColor(display_rgb(image), cv2.COLOR_RGB2BGR))
    return buf.tobytes(), "image/png"


def overlay_cut(overlay_path: str, original: bytes, max_pixels: int) -> bytes:
    """The overlay's image area alone (no caption bar, no colour bar), as PNG, the size of the original."""
    size = image_size(original)
    if size is None:
        image = decode_image(original, "original", max_pixels=max_pixels)
        size = (image.shape[1], image.shape[0])
    return _cut(overlay_path, os.stat(overlay_path).st_mtime_ns, size)


@functools.lru_cache(maxsize=8)  # a 5 MP cut is about 10 MB
def _cut(overlay_path: str, _mtime_ns: int, size: tuple[int, int]) -> bytes:
    width, height = size
    picture = cv2.imread(overlay_path, cv2.IMREAD_COLOR)
    if picture is None:
        raise OSError(f"{overlay_path}: not a readable overlay")
    top, drawn_height, drawn_width = image_area((height, width))  # a small image is drawn enlarged
    area = picture[top : top + drawn_height, :drawn_width]
    if area.shape[:2] != (drawn_height, drawn_width):
        raise OSError(
            f"{overlay_path}: {picture.shape[1]}x{picture.shape[0]} does not fit a {width}x{height} image"
        )
    if (drawn_height, drawn_width) != (height, width):
        area = cv2.resize(area, (width, height), interpolation=cv2.INTER_AREA)
    _, buf = cv2.imencode(".png", np.ascontiguousarray(area), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return buf.tobytes()


@functools.lru_cache(maxsize=8)
def colour_bar(colormap: str, width: int = 24, height: int = 256) -> bytes:
    from ..config import COLORMAPS

    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(width, axis=1)
    _, buf = cv2.imencode(".png", cv2.applyColorMap(ramp, COLORMAPS[colormap.lower()]))
    return buf.tobytes()
