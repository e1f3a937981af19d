"""`inspector watch` as a real subprocess: complete files only, corrupt files, SIGTERM, restart."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import cv2

from inspector.demo import example_dir
from inspector.synthetic import sample


@contextlib.contextmanager
def service(tmp_path, log_name):
    """The watch service as a subprocess; leaving the block sends SIGTERM and expects exit status 0."""
    cfg = os.path.join(example_dir(), "config.yaml")
    with open(tmp_path / log_name, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "inspector", "watch", "-c", cfg, "--in", str(tmp_path / "in"),
                                 "--out", str(tmp_path / "out"), "--poll", "0.1", "--settle", "0.6"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def wait_for(condition, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def png_bytes(i):
    return cv2.imencode(".png", cv2.cvtColor(sample(77, i).image, cv2.COLOR_RGB2BGR))[1].tobytes()


def test_watch_service(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    with service(tmp_path, "run1.log"):
        (inp / "a.png").write_bytes(png_bytes(1))
        (inp / "broken.png").write_text("not an image")
        data = png_bytes(2)
        with open(inp / "slow.png", "wb") as f:  # written in pieces, never idle for the settle time
            for k in range(0, len(data), len(data) // 6 + 1):
                f.write(data[k:k + len(data) // 6 + 1])
                f.flush()
                time.sleep(0.3)
        assert wait_for(lambda: (inp / "done" / "slow.png").exists() and (inp / "done" / "a.png").exists()
                        and (inp / "failed" / "broken.png").exists())
    text = (tmp_path / "run1.log").read_text()
    assert text.count("OK a.png") == 1 and text.count("OK slow.png") == 1 and text.count("FAILED broken.png") == 1
    assert "stopping after 3 image(s)" in text
    assert text.index("warmed up in") < text.index("watching") < text.index("OK a.png")  # warm before the line
    assert "not a readable image" in (inp / "failed" / "broken.png.error.txt").read_text()
    for stem in ("a", "slow"):
        for suffix in (".npz", ".json", "_overlay.png", "_layers.png"):
            assert (out / f"{stem}{suffix}").is_file()
    assert sorted(os.listdir(inp)) == ["done", "failed"]

    with service(tmp_path, "run2.log"):  # a restart handles only what is new
        (inp / "b.png").write_bytes(png_bytes(3))
        assert wait_for(lambda: (inp / "done" / "b.png").exists())
    text = (tmp_path / "run2.log").read_text()
    assert "OK b.png" in text and "a.png" not in text and "stopping after 1 image(s)" in text
