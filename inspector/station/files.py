"""The pictures a part page shows, found through the store and never through a path from the request:
artifacts (only inside their run's folder or the store's), the original image (only a file whose
SHA-256 is the one recorded), and the overlay cut to the image so that it lies exactly over the original."""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import os
import threading

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


SIZES = {"thumb": 192, "preview": 1600}  # longest side of a part's pictures in the queue and on its page
JPEG_QUALITY = {"thumb": 80, "preview": 90, "full": 92}


def picture(store: Store, part: dict, what: str, size: str, max_pixels: int) -> tuple[bytes, str]:
    """(bytes, media type) of one of a part's pictures: ``what`` the original or an overlay kind (drawn
    over the image area only, so that it lies exactly on the original), ``size`` thumb, preview (the
    part page before zooming in) or full (the camera's resolution). The original at full size is its
    file as it is where a browser can show it; everything else is made here, previews and thumbnails
    kept in a cache of bounded bytes, so that neither a page nor the station's memory grows with the
    camera's resolution.

    Raises:
        LookupError: the original or the overlay is missing (a 404).
        InspectorError: the image cannot be decoded.
    """
    if what == "overlay" and size == "thumb":  # written with the result (results recorded before: made here)
        made = artifact_file(store, part, "thumb")
        if made is not None:
            return read_regular(made, 8 << 20, what="thumbnail"), "image/jpeg"
    overlay = None
    if what != "original":
        overlay = artifact_file(store, part, what)
        if overlay is None:
            raise LookupError(f"part {part['id']} has no {what} file in its folder")
    stamp = os.stat(overlay).st_mtime_ns if overlay else 0
    key = (part["image_sha256"], overlay, stamp, size)
    found = _pictures.get(key)  # made from the recorded content: valid while the overlay file is the same
    if found is not None:
        return found, "image/jpeg"
    found = None
    if overlay is not None and (dimensions := picture_size(part)) is not None:
        with contextlib.suppress(OSError):  # the original's header is enough; else decode it below
            found = _scaled(_overlay_area(overlay, dimensions), size)
    if found is None:
        data = original_bytes(part)
        if data is None:
            raise LookupError("the original image is no longer where it was explained")
        if size == "full" and overlay is None:
            return for_browser(data, max_pixels)
        found = _make_picture(data, overlay, size, max_pixels)
    if size != "full":
        _pictures.put(key, found)
    return found, "image/jpeg"


def reference_picture(data: bytes, name: str, size: str, max_pixels: int) -> bytes:
    """A golden image's picture (cached like a part's previews, by content)."""
    key = (hashlib.sha256(data).hexdigest(), None, 0, size)
    found = _pictures.get(key)
    if found is None:
        found = _make_picture(data, None, size, max_pixels, name)
        _pictures.put(key, found)
    return found


def _make_picture(original: bytes, overlay_path: str | None, size: str, max_pixels: int,
                  name: str = "original") -> bytes:
    image = display_rgb(decode_image(original, name, max_pixels=max_pixels))
    if overlay_path is not None:
        picture_bgr = _overlay_area(overlay_path, (image.shape[1], image.shape[0]))
    else:
        picture_bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return _scaled(picture_bgr, size)


def _scaled(picture_bgr: np.ndarray, size: str) -> bytes:
    """A BGR picture as JPEG, its longest side at most SIZES[size]."""
    height, width = picture_bgr.shape[:2]
    longest = SIZES.get(size)
    if longest is not None and max(width, height) > longest:
        k = longest / max(width, height)
        picture_bgr = cv2.resize(picture_bgr, (max(1, round(width * k)), max(1, round(height * k))),
                                 interpolation=cv2.INTER_AREA)
    quality = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY[size]]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(picture_bgr), quality)
    if not ok:
        raise OSError("the picture could not be encoded")
    return buf.tobytes()


def _overlay_area(overlay_path: str, size: tuple[int, int]) -> np.ndarray:
    """The overlay's image area alone (no caption bar, no colour bar), BGR: the size of the original, or a
    whole multiple of it for a small image (drawn enlarged, so that its labels can be read)."""
    width, height = size
    drawing = cv2.imread(overlay_path, cv2.IMREAD_COLOR)
    if drawing is None:
        raise OSError(f"{overlay_path}: not a readable overlay")
    top, drawn_height, drawn_width = image_area((height, width))  # a small image is drawn enlarged
    area = drawing[top : top + drawn_height, :drawn_width]
    if area.shape[:2] != (drawn_height, drawn_width):
        raise OSError(
            f"{overlay_path}: {drawing.shape[1]}x{drawing.shape[0]} does not fit a {width}x{height} image"
        )
    return area  # a small image's overlay stays at its drawn size: the page scales it over the original


class ByteCache:
    """A least-recently-used cache of byte strings, bounded by their total size (thread-safe)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key, value: bytes) -> None:
        with self._lock:
            if key in self._items or len(value) > self.max_bytes:
                return
            self._items[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)


_pictures = ByteCache(48 * 2**20)  # about 150 previews of a 12 MP part, or thousands of thumbnails


def picture_size(part: dict) -> tuple[int, int] | None:
    """(width, height) of the part's original from its file's header, or None."""
    raw = original_path(part)
    if raw is None:
        return None
    try:
        with open_regular(raw, what="image file") as f:
            head = f.read(1 << 18)  # a JPEG's frame header may follow a large EXIF block
    except OSError:
        return None
    return image_size(head)


@functools.lru_cache(maxsize=8)
def colour_bar(colormap: str, width: int = 24, height: int = 256) -> bytes:
    from ..config import COLORMAPS

    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(width, axis=1)
    _, buf = cv2.imencode(".png", cv2.applyColorMap(ramp, COLORMAPS[colormap.lower()]))
    return buf.tobytes()
