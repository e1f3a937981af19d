"""Bad input on the inspector side: non-finite and out-of-range config numbers, images whose header
declares too many pixels (refused before decoding), and decoder warnings kept off the terminal."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from inspector import ConfigError, ImageError, load_config
from inspector.config import config_from_dict
from inspector.engine.runtime.preprocess import decode_image, image_size, read_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------ config numbers
@pytest.mark.parametrize("section, values, key", [
    ("preprocess", {"mean": [0.5, float("nan"), 0.5]}, "preprocess.mean[1]"),
    ("preprocess", {"std": [float("inf")]}, "preprocess.std[0]"),
    ("preprocess", {"scale": float("nan")}, "preprocess.scale"),
    ("visuals", {"opacity": float("nan")}, "visuals.opacity"),
    ("roi", {"mask": "roi.png", "flag_below": float("nan")}, "roi.flag_below"),
    ("method", {"mu": float("inf")}, "method.mu"),
    ("method", {"rise": {"p": float("nan")}}, "method.rise.p"),
    ("regions", {"value": float("-inf")}, "regions.value"),
    ("regions", {"threshold": "otsu", "value": float("nan")}, "regions.value"),  # unused but still a number
    ("preprocess", {"scale": 10 ** 400}, "preprocess.scale"),  # an int too large for a float
])
def test_non_finite_numbers_are_refused(section, values, key):
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": must be a finite number"):
        config_from_dict({"model": "m.onnx", section: values})


def test_non_finite_message():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": "m.onnx", "preprocess": {"mean": [float("nan"), 0.4, 0.4]}})
    assert str(e.value) == "preprocess.mean[0]: must be a finite number, got nan"


def test_yaml_nan_and_inf_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m.onnx\npreprocess:\n  std: [0.2, .inf, 0.2]\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: preprocess\.std\[1\]: must be a finite number, got inf"):
        load_config(path)
    path.write_text("model: m.onnx\nvisuals:\n  opacity: .nan\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: visuals\.opacity: must be a finite number, got nan"):
        load_config(path)


@pytest.mark.parametrize("regions, allowed", [
    ({"threshold": "fixed", "value": 1.5}, r"\[0, 1\]"),
    ({"threshold": "fixed", "value": -0.1}, r"\[0, 1\]"),
    ({"threshold": "percentile", "value": 101}, r"\[0, 100\]"),
    ({"threshold": "percentile", "value": -1}, r"\[0, 100\]"),
])
def test_regions_value_out_of_range(regions, allowed):
    with pytest.raises(ConfigError, match=rf"^regions\.value: must be in {allowed} for regions\.threshold"):
        config_from_dict({"model": "m.onnx", "regions": regions})


@pytest.mark.parametrize("threshold, value", [("percentile", 99), ("fixed", 1), ("fixed", 0), ("otsu", 7)])
def test_regions_value_in_range_and_otsu_ignores_it(threshold, value):
    cfg = config_from_dict({"model": "m.onnx", "regions": {"threshold": threshold, "value": value}})
    assert cfg.regions.value == value


@pytest.mark.parametrize("flag_below", [-0.01, 1.5])
def test_roi_flag_below_out_of_range(flag_below, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"model: m.onnx\nroi:\n  mask: roi.png\n  flag_below: {flag_below}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: roi\.flag_below: must be in \[0, 1\]"):
        load_config(path)


# ------------------------------------------------------------------------------------ image headers
IMAGE = np.random.default_rng(0).integers(0, 255, (37, 53, 4), dtype=np.uint8)
RGB = np.ascontiguousarray(IMAGE[:, :, :3])
GRAY = np.ascontiguousarray(IMAGE[:, :, 0])
GRAY16 = GRAY.astype(np.uint16) * 257


def encoded(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok
    return buf.tobytes()


def bmp_core(width: int, height: int) -> bytes:
    """A 24-bit BMP with the 12-byte BITMAPCOREHEADER (16-bit width and height)."""
    stride = (3 * width + 3) // 4 * 4
    pixels = bytes(stride * height)
    header = struct.pack("<IHHHH", 12, width, height, 1, 24)
    return b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26) + header + pixels


def bmp_top_down(data: bytes) -> bytes:
    """A BITMAPINFOHEADER BMP rewritten with a negative height (rows stored top-down)."""
    height = struct.unpack("<i", data[22:26])[0]
    return data[:22] + struct.pack("<i", -height) + data[26:]


def tiff_gray(width: int, height: int, order: str, kind: int) -> bytes:
    """An uncompressed 8-bit gray TIFF in byte order ``order`` ('<' or '>') with width and height of
    TIFF type ``kind`` (3 SHORT, 4 LONG)."""
    def entry(tag: int, typ: int, value: int) -> bytes:
        packed = struct.pack(order + "H", value) + b"\0\0" if typ == 3 else struct.pack(order + "I", value)
        return struct.pack(order + "HHI", tag, typ, 1) + packed

    entries = [entry(256, kind, width), entry(257, kind, height), entry(258, 3, 8), entry(259, 3, 1),
               entry(262, 3, 1), entry(273, 4, 0), entry(277, 3, 1), entry(278, 4, height),
               entry(279, 4, width * height)]
    ifd_size = 2 + 12 * len(entries) + 4
    pixel_offset = 8 + ifd_size
    entries[5] = entry(273, 4, pixel_offset)
    magic = b"II*\0" if order == "<" else b"MM\0*"
    ifd = struct.pack(order + "H", len(entries)) + b"".join(entries) + struct.pack(order + "I", 0)
    return magic + struct.pack(order + "I", 8) + ifd + bytes(range(256)) * (width * height // 256 + 1)


def header_cases() -> dict[str, bytes]:
    progressive = encoded(".jpg", RGB, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert b"\xff\xc2" in progressive  # SOF2: a progressive frame, not the baseline SOF0
    return {
        "png": encoded(".png", RGB), "png-rgba": encoded(".png", IMAGE),
        "png-gray16": encoded(".png", GRAY16),
        "jpeg": encoded(".jpg", RGB), "jpeg-gray": encoded(".jpg", GRAY), "jpeg-progressive": progressive,
        "bmp": encoded(".bmp", RGB), "bmp-gray": encoded(".bmp", GRAY), "bmp-core": bmp_core(53, 37),
        "bmp-top-down": bmp_top_down(encoded(".bmp", RGB)),
        "tiff": encoded(".tiff", RGB), "tiff-16": encoded(".tiff", RGB.astype(np.uint16) * 257),
        "tiff-le-short": tiff_gray(53, 37, "<", 3), "tiff-le-long": tiff_gray(53, 37, "<", 4),
        "tiff-be-short": tiff_gray(53, 37, ">", 3), "tiff-be-long": tiff_gray(53, 37, ">", 4),
        "webp-vp8": encoded(".webp", RGB, [cv2.IMWRITE_WEBP_QUALITY, 80]),
        "webp-vp8l": encoded(".webp", RGB, [cv2.IMWRITE_WEBP_QUALITY, 101]),
        "webp-vp8x": encoded(".webp", IMAGE, [cv2.IMWRITE_WEBP_QUALITY, 80]),
        "ppm": encoded(".ppm", RGB), "pgm": encoded(".pgm", GRAY), "pbm": encoded(".pbm", GRAY),
        "ppm-ascii": encoded(".ppm", RGB, [cv2.IMWRITE_PXM_BINARY, 0]),
        "pgm-comments": b"P5\n# made by hand\n53 # width\n# height next\n37\n255\n" + GRAY.tobytes(),
        "pbm-ascii": b"P1\n# 3 x 2\n3 2\n0 1 0\n1 0 1\n",
    }


@pytest.mark.parametrize("name, data", header_cases().items(), ids=list(header_cases()))
def test_header_size_matches_the_decoded_size(name, data):
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded is not None, name
    assert image_size(data) == (decoded.shape[1], decoded.shape[0])


def test_webp_chunks_are_the_ones_tested():
    cases = header_cases()
    assert [cases[k][12:16] for k in ("webp-vp8", "webp-vp8l", "webp-vp8x")] == [b"VP8 ", b"VP8L", b"VP8X"]


@pytest.mark.parametrize("data", [b"", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM\0\0",
                                  b"II*\0\xff\xff\xff\xff", b"RIFF\0\0\0\0WEBPVP8 ", b"P6\n", b"P9 1 1",
                                  b"P5\nabc", b"\xff\xd8\xff\xda\0\x02"])
def test_unknown_or_broken_headers_give_none(data):
    assert image_size(data) is None


def test_decode_image_refuses_from_the_header(monkeypatch):
    data = encoded(".png", RGB)
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded an image over the limit"))
    with pytest.raises(ImageError, match=r"^part\.png: 53x37 pixels is over preprocess\.max_pixels \(1000\)"):
        decode_image(data, "part.png", max_pixels=1000)


def test_decode_image_matches_read_image(tmp_path):
    for ext, image in ((".png", IMAGE), (".png", GRAY16), (".bmp", RGB), (".tiff", RGB)):
        data = encoded(ext, image)
        (tmp_path / f"a{ext}").write_bytes(data)
        from_bytes = decode_image(data, "a", max_pixels=10 ** 6)
        np.testing.assert_array_equal(from_bytes, read_image(tmp_path / f"a{ext}", max_pixels=10 ** 6))
        assert from_bytes.dtype == image.dtype
    bgr_on_disk = encoded(".png", RGB)  # cv2.imencode takes BGR: decoding gives the channels reversed
    np.testing.assert_array_equal(decode_image(bgr_on_disk, "a", max_pixels=10 ** 6), RGB[:, :, ::-1])


def test_decode_image_errors_name_the_image():
    with pytest.raises(ImageError, match=r"^shot 7: the file is empty$"):
        decode_image(b"", "shot 7", max_pixels=100)
    with pytest.raises(ImageError, match=r"^shot 7: not a readable image"):
        decode_image(b"not an image", "shot 7", max_pixels=100)


def test_unknown_header_falls_back_to_the_decoded_size():
    data = encoded(".pgm", GRAY)
    pam = b"P7\nWIDTH 53\nHEIGHT 37\nDEPTH 1\nMAXVAL 255\nTUPLTYPE GRAYSCALE\nENDHDR\n" + GRAY.tobytes()
    assert image_size(pam) is None and image_size(data) == (53, 37)
    if cv2.imdecode(np.frombuffer(pam, np.uint8), cv2.IMREAD_UNCHANGED) is None:
        pytest.skip("this OpenCV does not read PAM")
    with pytest.raises(ImageError, match="53x37 pixels is over preprocess.max_pixels"):
        decode_image(pam, "a.pam", max_pixels=1000)


# ------------------------------------------------------------------------------------ huge images
def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def zero_png(path, width: int, height: int) -> None:
    """An 8-bit gray PNG of zeros (~400 KB for 20000x20000), streamed through zlib row by row."""
    comp = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
                     + png_chunk(b"IEND", b""))


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          check=False)


def test_huge_png_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    zero_png(path, 20000, 20000)  # 400 MB of pixels once decoded
    assert image_size(path.read_bytes()[:64]) == (20000, 20000)
    # The child's own high-water mark (VmHWM starts afresh at exec; getrusage's ru_maxrss would carry the
    # forking pytest process's size over).
    r = run_python(f"""
from inspector.errors import ImageError
from inspector.engine.runtime.preprocess import read_image
try:
    read_image({str(path)!r}, max_pixels=50_000_000)
except ImageError as e:
    print(e)
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0])
""")
    assert r.returncode == 0, r.stderr
    message, peak_kb = r.stdout.strip().splitlines()
    assert message == (f"{path}: 20000x20000 pixels is over preprocess.max_pixels (50000000); "
                       "raise the limit or downscale the image")
    assert int(peak_kb) < 300 * 1024, f"peak memory {int(peak_kb) // 1024} MB: the image was decoded"


# ------------------------------------------------------------------------------------ decoder warnings
def damaged_jpegs(folder) -> list[str]:
    data = encoded(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    corrupt = bytearray(data)
    corrupt[len(data) // 2:len(data) // 2 + 50] = b"\xff\x00" * 25
    paths = []
    for name, content in (("cut.jpg", data[:len(data) // 2]), ("cut-eoi.jpg", data[:-2]),
                          ("corrupt.jpg", bytes(corrupt))):
        (folder / name).write_bytes(content)
        paths.append(str(folder / name))
    return paths


def test_decoder_warnings_stay_off_the_terminal(tmp_path):
    paths = damaged_jpegs(tmp_path)
    raw = run_python(f"""
import cv2, numpy as np
for p in {paths!r}:
    cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED)
""")
    assert raw.returncode == 0 and "JPEG" in raw.stderr, raw.stderr  # the warning this test is about exists
    ours = run_python(f"""
import logging, sys
from inspector.errors import ImageError
from inspector.engine.runtime.preprocess import read_image
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s: %(message)s")
for p in {paths!r}:
    try:
        read_image(p, max_pixels=10 ** 6)
    except ImageError:
        pass
print("stderr still works", file=sys.stderr)
""")
    assert ours.returncode == 0, ours.stderr
    assert ours.stderr == "stderr still works\n"
    assert "inspector.engine.runtime.preprocess: " in ours.stdout
    assert "corrupt.jpg: the decoder reported: " in ours.stdout
