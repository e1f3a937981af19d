"""Peak memory of refusing an image above ``preprocess.max_pixels``, against decoding it.

Writes a 20000x20000 8-bit PNG of zeros (about 0.4 MB on disk, 400 MB of pixels), then in two fresh
processes: ``inspector.engine.runtime.preprocess.read_image`` with ``max_pixels=50_000_000`` (refused
from the header), and a plain ``cv2.imdecode`` of the same bytes. Prints each process's peak resident
memory (VmHWM).

    python benchmarks/huge_image_refusal.py
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import zlib

PEAK = 'print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0])'


def zero_png(path: str, side: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
    comp = zlib.compressobj(9)
    row = bytes(side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def peak_mb(code: str) -> tuple[float, str]:
    r = subprocess.run([sys.executable, "-c", code + "\n" + PEAK], capture_output=True, text=True, check=True)
    *said, peak = r.stdout.strip().splitlines()
    return int(peak) / 1024, " ".join(said)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "huge.png")
        zero_png(path, 20000)
        refused, message = peak_mb(
            "from inspector.errors import ImageError\n"
            "from inspector.engine.runtime.preprocess import read_image\n"
            f"try:\n    read_image({path!r}, max_pixels=50_000_000)\nexcept ImageError as e:\n    print(e)")
        decoded, _ = peak_mb(f"import cv2, numpy as np\ncv2.imdecode(np.fromfile({path!r}, np.uint8), "
                             "cv2.IMREAD_UNCHANGED)")
        print(f"20000x20000 PNG, {os.path.getsize(path) / 1e6:.1f} MB on disk")
        print(f"  refused by read_image: peak {refused:.0f} MB ({message})")
        print(f"  decoded by cv2.imdecode: peak {decoded:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
