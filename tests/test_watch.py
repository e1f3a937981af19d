"""`inspector watch` as a real subprocess: complete files only, corrupt files, SIGTERM, restart, the same
name dropped twice, folders that would feed the service its own outputs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time

import cv2
import sqlalchemy as sa

from inspector.demo import example_dir
from inspector.quality.synthetic import sample


@contextlib.contextmanager
def service(tmp_path, log_name, *extra, config=None):
    """The watch service as a subprocess; leaving the block sends SIGTERM and expects exit status 0."""
    cfg = config or os.path.join(example_dir(), "config.yaml")
    with open(tmp_path / log_name, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "inspector", "watch", "-c", cfg,
                                 "--in", str(tmp_path / "in"),
                                 "--out", str(tmp_path / "out"), "--poll", "0.1", "--settle", "0.6", *extra],
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


def artifacts(out, stem):
    return sorted(n.split("_", 2)[2] for n in os.listdir(out / "images")
                  if n.split("_", 2)[2].startswith(stem))


def test_watch_service(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    done, failed = out / "done", out / "failed"
    with service(tmp_path, "run1.log"):
        (inp / "a.png").write_bytes(png_bytes(1))
        (inp / "broken.png").write_text("not an image")
        data = png_bytes(2)
        with open(inp / "slow.png", "wb") as f:  # written in pieces, never idle for the settle time
            for k in range(0, len(data), len(data) // 6 + 1):
                f.write(data[k:k + len(data) // 6 + 1])
                f.flush()
                time.sleep(0.3)
        assert wait_for(lambda: (done / "slow.png").exists() and (done / "a.png").exists()
                        and (failed / "broken.png").exists())
    text = (tmp_path / "run1.log").read_text()
    assert (text.count("OK a.png") == 1 and text.count("OK slow.png") == 1
            and text.count("FAILED broken.png") == 1)
    assert "stopping after 3 image(s)" in text
    # warm before the line
    assert text.index("warmed up in") < text.index("watching") < text.index("OK a.png")
    assert "not a readable image" in (failed / "broken.png.error.txt").read_text()
    for stem in ("a", "slow"):
        suffixes = (".json", ".npz", "_layers.png", "_overlay.png", "_thumb.jpg")
        assert artifacts(out, stem) == [f"{stem}{s}" for s in suffixes]
    assert os.listdir(inp) == []

    with service(tmp_path, "run2.log"):  # a restart handles only what is new
        (inp / "b.png").write_bytes(png_bytes(3))
        assert wait_for(lambda: (done / "b.png").exists())
    text = (tmp_path / "run2.log").read_text()
    assert "OK b.png" in text and "a.png" not in text and "stopping after 1 image(s)" in text


def test_the_same_name_dropped_twice_overwrites_nothing(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    first, second = png_bytes(4), png_bytes(5)
    with service(tmp_path, "run.log"):
        (inp / "part.png").write_bytes(first)
        assert wait_for(lambda: (out / "done" / "part.png").exists())
        (inp / "part.png").write_bytes(second)  # the camera reuses the name for the next part
        assert wait_for(lambda: (out / "done" / "part.1.png").exists())
        (inp / "part.png").write_bytes(first)  # and the first part again (a re-inspection)
        assert wait_for(lambda: (out / "done" / "part.2.png").exists())
    assert (out / "done" / "part.png").read_bytes() == first
    assert (out / "done" / "part.1.png").read_bytes() == second
    assert (out / "done" / "part.2.png").read_bytes() == first
    text = (tmp_path / "run.log").read_text()
    assert text.count("OK part.png") == 3 and "(already in the store)" in text
    assert artifacts(out, "part") == ["part.json", "part.json", "part.npz", "part.npz", "part_layers.png",
                                      "part_layers.png", "part_overlay.png", "part_overlay.png",
                                      "part_thumb.jpg", "part_thumb.jpg"]
    engine = sa.create_engine("sqlite:///" + str(out / "results.db"))
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT i.path, r.image_sha256 FROM inputs i "
                                    "JOIN results r ON r.id = i.result_id ORDER BY i.path")).all()
    engine.dispose()
    digest = {k: hashlib.sha256(v).hexdigest() for k, v in (("first", first), ("second", second))}
    assert [(os.path.basename(p), h) for p, h in rows] == [
        ("part.1.png", digest["second"]), ("part.2.png", digest["first"]), ("part.png", digest["first"])]


def test_folders_inside_the_watched_folder_are_refused(tmp_path):
    cfg = os.path.join(example_dir(), "config.yaml")
    inp = tmp_path / "in"
    inp.mkdir()
    for args, option in (([ "--out", str(inp)], "--out"),
                         (["--out", str(tmp_path / "o"), "--done", str(inp / "d")], "--done")):
        r = subprocess.run([sys.executable, "-m", "inspector", "watch", "-c", cfg, "--in", str(inp), *args],
                           capture_output=True, text=True, timeout=120, check=False)
        lines = r.stderr.strip().splitlines()
        assert (r.returncode == 2 and len(lines) == 1 and f"{option} " in lines[0]
                and "inside --in" in lines[0])


def test_error_files_of_very_long_names_fit_the_file_system(tmp_path):
    from inspector.jobs.watch import error_file

    long = tmp_path / ("x" * 240 + ".png")
    name = error_file(str(long))
    assert len(os.path.basename(name).encode()) <= 200 and name.endswith(".error.txt")
    assert error_file(str(tmp_path / "a.png")) == str(tmp_path / "a.png.error.txt")
    with open(name, "w") as f:  # the file system takes it
        f.write("x")
