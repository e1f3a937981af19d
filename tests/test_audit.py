"""`inspector audit`: bad files, kill and resume with a real signal, shards and merge, ROI flags."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import yaml

from inspector.demo import example_dir
from inspector.synthetic import sample


def make_inputs(folder, count):
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        s = sample(55, i)
        cv2.imwrite(os.path.join(folder, f"part_{i:03d}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))


def config(tmp_path, **extra):
    with open(os.path.join(example_dir(), "config.yaml")) as f:
        raw = yaml.safe_load(f)
    raw["model"] = os.path.join(example_dir(), raw["model"])
    raw.update(extra)
    path = tmp_path / f"config_{len(extra)}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def audit(*args, wait=True):
    cmd = [sys.executable, "-m", "inspector", "audit", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


def rows_of(out):
    with open(os.path.join(out, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def summary(rows):
    return {r["key"]: (r["prediction"], round(r["confidence"], 6), r["regions"], r["error"] != "") for r in rows}


def test_bad_files_are_recorded_and_the_run_goes_on(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 3)
    data = cv2.imencode(".jpg", sample(1, 1).image)[1].tobytes()
    (inp / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (inp / "text.png").write_text("this is not an image")
    (inp / "empty.png").write_bytes(b"")
    r = audit("-c", config(tmp_path), inp, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    rows = {row["key"]: row for row in rows_of(tmp_path / "out")}
    assert len(rows) == 6
    assert {k for k, v in rows.items() if v["error"]} == {"truncated.jpg", "text.png", "empty.png"}
    assert "empty" in rows["empty.png"]["error"]
    with open(tmp_path / "out" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    report = (tmp_path / "out" / "report.html").read_text()
    assert "3 failed" in report and "part_000" in report


def test_kill_and_resume_loses_nothing_and_repeats_nothing(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 24)
    cfg = config(tmp_path)
    reference = tmp_path / "reference"
    assert audit("-c", cfg, inp, "--out", reference).returncode == 0
    out = tmp_path / "out"
    proc = audit("-c", cfg, inp, "--out", out, wait=False)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if results.exists() and results.read_bytes().count(b"\n") >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    interrupted = results.read_bytes().count(b"\n")
    assert 6 <= interrupted < 24, "the kill must land mid-run"
    r = audit("-c", cfg, inp, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = rows_of(out)
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)) == 24
    assert summary(rows) == summary(rows_of(reference))
    assert not [f for f in os.listdir(out / "images") if f.endswith(".part")]
    again = audit("-c", cfg, inp, "--out", out)  # a third run has nothing left to do
    assert again.returncode == 0 and len(rows_of(out)) == 24


def test_two_shards_merged_equal_one_run(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 10)
    cfg = config(tmp_path)
    assert audit("-c", cfg, inp, "--out", tmp_path / "all").returncode == 0
    for i in range(2):
        assert audit("-c", cfg, inp, "--out", tmp_path / f"s{i}", "--shard", f"{i}/2").returncode == 0
    parts = [rows_of(tmp_path / f"s{i}") for i in range(2)]
    assert parts[0] and parts[1] and not ({r["key"] for r in parts[0]} & {r["key"] for r in parts[1]})
    r = subprocess.run([sys.executable, "-m", "inspector", "audit-merge", tmp_path / "s0", tmp_path / "s1",
                        "--out", tmp_path / "merged"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert summary(rows_of(tmp_path / "merged")) == summary(rows_of(tmp_path / "all"))
    assert (tmp_path / "merged" / "images" / "part_000_overlay.png").exists()
    wrong = audit("-c", cfg, inp, "--out", tmp_path / "s0", "--shard", "1/2")  # a folder keeps its shard
    assert wrong.returncode == 2 and "another shard" in wrong.stderr


def test_roi_evidence_and_flag(tmp_path):
    samples = os.path.join(example_dir(), "samples")
    inp = tmp_path / "in"
    inp.mkdir()
    cv2.imwrite(str(inp / "crack.png"), cv2.imread(os.path.join(samples, "crack.png")))
    defect = cv2.imread(os.path.join(samples, "crack_mask.png"), cv2.IMREAD_GRAYSCALE)
    near = cv2.dilate(defect, np.ones((25, 25), np.uint8))
    cv2.imwrite(str(tmp_path / "roi_on.png"), near)
    cv2.imwrite(str(tmp_path / "roi_off.png"), 255 - near)
    on = audit("-c", config(tmp_path, roi={"mask": str(tmp_path / "roi_on.png")}), inp, "--out", tmp_path / "on")
    off = audit("-c", config(tmp_path, roi={"mask": str(tmp_path / "roi_off.png"), "flag_below": 0.5}), inp,
                "--out", tmp_path / "off")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    row_on, row_off = rows_of(tmp_path / "on")[0], rows_of(tmp_path / "off")[0]
    assert row_on["roi_inside"] == pytest.approx(1 - row_off["roi_inside"], abs=1e-5)
    assert row_on["roi_inside"] > 0.5 and not row_on["flagged"] and row_off["flagged"]
    assert "Flagged: evidence mostly outside the ROI (1)" in (tmp_path / "off" / "report.html").read_text()
