"""`inspector evaluate` on a detector: true positives matched as worked out by hand, the pointing game on
hand-made maps, and the command on the bundled detector and a few synthetic scenes (every method explains
the same detections; D-RISE scores its masks once per image for all of them)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np

from inspector.demo import example_dir
from inspector.quality.evaluate_detections import match, pointing
from inspector.quality.synthetic import main as synthetic

CLASSES = ["scratch", "crack"]


def det(box, cls, score=0.9):
    return SimpleNamespace(box=box, class_index=cls, score=score)


def test_true_positives_are_matched_greedily_by_score_class_and_iou():
    defects = [{"label": "scratch", "box": [0, 0, 10, 10]}, {"label": "crack", "box": [20, 20, 30, 30]}]
    found = [det([0, 0, 10, 9], 0, 0.9),      # IoU 0.9 with the scratch: a true positive
             det([1, 0, 10, 10], 0, 0.8),     # the scratch again: taken already
             det([20, 20, 30, 30], 0, 0.7),   # the crack's box, the wrong class
             det([20, 20, 30, 25], 1, 0.6),   # the crack, IoU 0.5 exactly: a true positive
             det([40, 40, 50, 50], 1, 0.5)]   # nothing there
    assert match(found, defects, CLASSES) == [(0, 0), (3, 1)]
    assert match([det([20, 20, 30, 24.9], 1)], defects, CLASSES) == []  # IoU 0.49
    assert match(found, [], CLASSES) == []


def test_the_pointing_game_is_a_hit_where_the_maps_peak_is_on_the_mask():
    saliency = np.zeros((4, 5))
    saliency[2, 3] = 1.0
    mask = np.zeros((4, 5), bool)
    assert pointing(saliency, mask) == 0.0
    mask[2, 3] = True
    assert pointing(saliency, mask) == 1.0


def test_evaluate_on_the_bundled_detector(tmp_path):
    data, out = tmp_path / "scenes", tmp_path / "eval"
    assert synthetic(["--scenes", "--out", str(data), "--count", "4", "--seed", "5"]) == 0
    config = tmp_path / "det.yaml"
    with open(os.path.join(example_dir(), "detector", "config.yaml"), encoding="utf-8") as f:
        text = f.read()
    model = os.path.join(example_dir(), "detector", "defect_yolo.sise.onnx")
    config.write_text(text.replace("model: defect_yolo.sise.onnx", f"model: {model}")
                      .replace("method: {name: sise, preset: quality}",
                               "method: {name: sise, preset: quality, drise: {masks: 200}}"))
    r = subprocess.run([sys.executable, "-m", "inspector", "evaluate", "-c", str(config), "--data", str(data),
                        "--out", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    assert "| sise | all |" in r.stdout and "| drise | all |" in r.stdout and "| gradcam | all |" in r.stdout
    with open(out / "per_detection.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(data / "truth.json") as f:
        defects = sum(len(s["defects"]) for s in json.load(f)["scenes"])
    per_method = {m: [r for r in rows if r["method"] == m] for m in ("sise", "drise", "gradcam")}
    keys = {m: [(r["image"], r["detection"], r["label"]) for r in v] for m, v in per_method.items()}
    assert keys["sise"] == keys["drise"] == keys["gradcam"]  # the same true positives for every method
    assert 0.5 * defects <= len(keys["sise"]) <= defects
    for r in rows:
        assert 0.0 <= float(r["ebpg"]) <= 1.0 and r["pointing"] in ("0.0", "1.0")
    drise = per_method["drise"]
    assert all(float(r["masks"]) == 200 for r in drise)
    # D-RISE's masks are shared by an image's detections: 200 passes an image, divided among them
    for r in drise:
        shared = [x for x in drise if x["image"] == r["image"]]
        assert float(r["passes"]) <= 200 / len(shared) + 1e-9
    assert (out / "summary.md").read_text().startswith("| method | size bin |")
