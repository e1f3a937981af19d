"""`inspector explain` and `inspector report` through the store, and the one-line errors of every command."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import subprocess
import sys

import cv2
import pytest

from inspector.demo import example_dir
from inspector.jobs.artifacts import image_area
from inspector.quality.synthetic import sample

CONFIG = os.path.join(example_dir(), "config.yaml")


def inspector(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "inspector", *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=False, cwd=cwd)


def write(path, seed, i, ext=".png"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = cv2.imencode(ext, cv2.cvtColor(sample(seed, i).image, cv2.COLOR_RGB2BGR))[1].tobytes()
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def sidecars(out) -> dict[str, dict]:
    """source path -> sidecar, for every JSON sidecar under <out>/images."""
    found = {}
    for path in glob.glob(os.path.join(out, "images", "*.json")):
        with open(path) as f:
            meta = json.load(f)
        found[meta["source"]] = meta
    return found


def test_repeated_names_never_overwrite_and_the_count_is_the_files_written(tmp_path):
    digests = {
        "lot/x.png": write(tmp_path / "lot" / "x.png", 1, 0),
        "lot/x.jpg": write(tmp_path / "lot" / "x.jpg", 1, 1, ".jpg"),
        "lot/a__b.png": write(tmp_path / "lot" / "a__b.png", 1, 2),
        "lot/a/b.png": write(tmp_path / "lot" / "a" / "b.png", 1, 3),
        "day1/001.png": write(tmp_path / "day1" / "001.png", 2, 0),
        "day2/001.png": write(tmp_path / "day2" / "001.png", 3, 0),
    }
    out = tmp_path / "out"
    r = inspector("explain", "-c", CONFIG, tmp_path / "lot", tmp_path / "lot" / "a" / "b.png",
                  tmp_path / "day1", tmp_path / "day2", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "wrote 6 explanation(s)" in r.stdout
    assert len(os.listdir(out / "images")) == 6 * 5  # npz, overlay, layers, sidecar, thumbnail
    found = sidecars(out)
    assert {os.path.relpath(k, tmp_path): v["image_sha256"] for k, v in found.items()} == digests
    for meta in found.values():  # each overlay belongs to its own image: its size follows its source's
        name = [n for n in os.listdir(out / "images") if n.startswith(meta["image_sha256"][:16])
                and n.endswith("_overlay.png")]
        assert len(name) == 1
        shown, source = cv2.imread(str(out / "images" / name[0])).shape, cv2.imread(meta["source"]).shape
        top, height, width = image_area(source)
        assert shown[0] == top + height and shown[1] > width

    again = inspector("explain", "-c", CONFIG, tmp_path / "day1", tmp_path / "day2", "--out", out)
    assert again.returncode == 0 and "wrote 0 explanation(s)" in again.stdout
    assert "2 were already in the store" in again.stdout
    assert len(os.listdir(out / "images")) == 30
    other = inspector("explain", "-c", CONFIG, tmp_path / "day1", "--out", out, "--target", "crack")
    # another target, another result
    assert other.returncode == 0 and "wrote 1 explanation(s)" in other.stdout
    assert len(os.listdir(out / "images")) == 35
    import sqlite3

    with contextlib.closing(sqlite3.connect(out / "results.db")) as db:  # each run's own status, not its
        statuses = [s for (s,) in db.execute("SELECT status FROM runs ORDER BY id")]  # last image's
    assert statuses == ["finished"] * 3
    assert "handled: 6 of 6 in" in r.stderr and r.stderr.count("[") == 6  # a line per image in a log


def test_report_from_a_store_into_another_folder(tmp_path):
    write(tmp_path / "in" / "p.png", 4, 0)
    write(tmp_path / "in2" / "q.png", 4, 1)
    out = tmp_path / "audit"
    assert inspector("audit", "-c", CONFIG, tmp_path / "in", "--out", out).returncode == 0
    assert inspector("audit", "-c", CONFIG, tmp_path / "in2", "--out", out).returncode == 0
    r = inspector("report", "--store", out, "--out", tmp_path / "views")
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "views" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        row = json.loads(line)
        assert (tmp_path / "views" / row["artifacts"]["overlay"]).is_file()
    r = inspector("report", "--store", "sqlite:///" + str(out / "results.db"), "--out", tmp_path / "one",
                  "--run", 1)
    assert r.returncode == 0 and "1 image(s)" in r.stdout


def one_error_line(r, code=2) -> str:
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_every_failure_is_one_line_and_debug_shows_the_traceback(tmp_path):
    write(tmp_path / "in" / "p.png", 5, 0)
    (tmp_path / "o").mkdir()
    (tmp_path / "garbage.db").write_bytes(os.urandom(4096))
    cases = [
        (("explain", "-c", CONFIG, tmp_path / "in", "--out", tmp_path / "o", "--store", "mysql://u@h/db"),
         "only SQLite and PostgreSQL"),
        (("explain", "-c", CONFIG, tmp_path / "in", "--out", tmp_path / "o", "--store",
          "sqlite:///" + str(tmp_path / "garbage.db")), "garbage.db"),
        (("explain", "-c", CONFIG, tmp_path / "in", "--out", tmp_path / "in" / "p.png"), "is a file"),
        (("explain", "-c", CONFIG, tmp_path / "nothing-here", "--out", tmp_path / "o"),
         "no such file or folder"),
        (("explain", "-c", CONFIG, tmp_path / "o", "--out", tmp_path / "o2"), "no images found"),
        (("audit", "-c", CONFIG, tmp_path / "in", "--out", tmp_path / "o", "--store",
          "postgresql+psycopg://nobody@127.0.0.1:1/none"), "cannot open the results store"),
        (("report", "--store", tmp_path / "empty", "--out", tmp_path / "v"), "no results store here"),
        (("audit-merge", tmp_path / "in", "--out", tmp_path / "m"), "not an audit folder"),
    ]
    for args, expect in cases:
        assert expect in one_error_line(inspector(*args)), args
    target = inspector("explain", "-c", CONFIG, tmp_path / "in", "--out", tmp_path / "t", "--target", "no")
    assert "unknown class name 'no'" in one_error_line(target) and not (tmp_path / "t").exists()
    debug = inspector("--debug", "report", "--store", tmp_path / "empty", "--out", tmp_path / "v")
    assert debug.returncode == 2 and "Traceback" in debug.stderr and debug.stderr.strip().endswith(
        "no results store here")
    for cli in ("inspector", "onnx_tools"):
        v = subprocess.run([sys.executable, "-m", cli, "--version"], capture_output=True, text=True,
                           check=False)
        assert v.returncode == 0 and v.stdout.split()[-1][0].isdigit(), v.stdout


def test_jpeg_overlays_without_npz_are_recorded_and_kept_on_resume(tmp_path):
    import yaml

    with open(CONFIG) as f:
        raw = yaml.safe_load(f)
    raw["model"] = os.path.join(example_dir(), raw["model"])
    raw["outputs"] = {"overlay": "jpg", "npz": False}
    cfg = tmp_path / "jpg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    write(tmp_path / "in" / "p.png", 6, 0)
    out = tmp_path / "out"
    r = inspector("audit", "-c", cfg, tmp_path / "in", "--out", out)
    assert r.returncode == 0, r.stderr
    names = sorted(n.split("_", 2)[2] for n in os.listdir(out / "images"))
    assert names == ["p.json", "p_layers.png", "p_overlay.jpg", "p_thumb.jpg"]
    row = json.loads((out / "results.jsonl").read_text())
    assert sorted(row["artifacts"]) == ["layers", "overlay", "sidecar", "thumb"]
    assert row["artifacts"]["overlay"].endswith("_overlay.jpg")
    assert "_overlay.jpg" in (out / "report.html").read_text()
    again = inspector("audit", "-c", cfg, tmp_path / "in", "--out", out)
    assert again.returncode == 0 and "0 explained now, 1 found in the store" in again.stdout


NUMBERS = [  # (arguments, words of the one error line); each was an "unexpected ..." line or accepted
    (["audit", "-c", CONFIG, ".", "--out", "o", "--shard", f"1/{10**23}"], "need 0 <= I < N <= 100000"),
    (["report", "--store", "s", "--out", "o", "--run", str(10**23)], "--run: 1000"),
    (["report", "--store", "s", "--out", "o", "--run", "0"], "must be from 1 to"),
    (["station", "-c", CONFIG, "--port", "99999"], "--port: 99999: must be from 1 to 65535"),
    (["station", "-c", CONFIG, "--max-upload-mb", "nan"], "--max-upload-mb: nan: must be a number above 0"),
    (["station", "-c", CONFIG, "--max-upload-mb", "-1"], "must be a number above 0"),
    (["station", "-c", CONFIG, "--settle", "inf"], "--settle: inf: must be a number at least 0"),
    (["watch", "-c", CONFIG, "--in", "i", "--out", "o", "--poll", "nan"], "--poll: nan"),
    (["watch", "-c", CONFIG, "--in", "i", "--out", "o", "--poll", "0"], "--poll: 0: must be a number above"),
    (["watch", "-c", CONFIG, "--in", "i", "--out", "o", "--settle", "nan"], "--settle: nan"),
    (["evaluate", "-c", CONFIG, "--data", "d", "--limit", "0"], "--limit: 0: must be from 1"),
    (["audit", "-c", CONFIG, ".", "--out", "o", "--gpus-per-worker", "inf"], "--gpus-per-worker: inf"),
    (["audit", "-c", CONFIG, ".", "--out", "o", "--workers", "0"], "--workers: 0: must be from 1"),
    (["explain", "-c", CONFIG, ".", "--out", "o", "--batch-images", str(10**23)], "--batch-images"),
]


@pytest.mark.parametrize("args,words", NUMBERS, ids=[" ".join(a[-2:]) for a, _ in NUMBERS])
def test_every_numeric_option_is_checked_for_range_and_finiteness(args, words, tmp_path):
    r = subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True, timeout=60,
                       check=False, cwd=tmp_path)
    assert words in one_error_line(r), r.stderr


def test_a_reader_that_leaves_early_is_no_error(tmp_path):
    """`inspector schema | head`: the pipe closes before the schema is written; the command stops
    quietly with the status a shell gives a tool ended by SIGPIPE (it printed 'error: Broken pipe')."""
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, "-m", "inspector", "schema"], stdout=write,
                           stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write)
    assert (r.returncode, r.stderr) == (141, "")


def test_an_explanation_prints_its_shapes_not_its_arrays():
    from inspector import Inspector

    insp = Inspector.from_config(CONFIG)
    exp = insp.explain(sample(8, 2).image)
    text = repr(exp)
    assert len(text) < 300 and "saliency=128x128" in text and f"masks={exp.total_masks}" in text, text
    assert "array" not in text and "\n" not in text
