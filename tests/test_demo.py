"""`inspector demo` on the bundled example model and samples, as the README's first command runs it."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np

from inspector.demo import example_dir
from inspector.quality.synthetic import CLASSES


def test_bundled_example_is_complete():
    folder = example_dir()
    with open(os.path.join(folder, "training.json")) as f:
        record = json.load(f)
    assert record["heldout_accuracy"] >= 0.95 and record["classes"] == list(CLASSES)
    size = os.path.getsize(os.path.join(folder, "defect_resnet.sise.onnx"))
    assert size <= 10 * 1024 * 1024
    for label in CLASSES:
        assert os.path.isfile(os.path.join(folder, "samples", f"{label}.png"))
    detector = os.path.join(folder, "detector")
    with open(os.path.join(detector, "training.json")) as f:
        record = json.load(f)
    assert record["heldout_map50"] >= record["map_bar"] >= 0.6 and record["classes"] == list(CLASSES[1:])
    assert os.path.getsize(os.path.join(detector, "defect_yolo.sise.onnx")) <= 10 * 1024 * 1024
    with open(os.path.join(detector, "truth.json")) as f:
        scenes = json.load(f)["scenes"]
    assert len(scenes) == 6 and sum(len(s["defects"]) for s in scenes) >= 10
    for s in scenes:
        assert os.path.isfile(os.path.join(detector, s["image"]))
        assert all(os.path.isfile(os.path.join(detector, d["mask"])) for d in s["defects"])


def test_demo_writes_the_summary(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "inspector", "demo", "--out", str(out)], capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert "open " in r.stdout and "index.html" in r.stdout
    html = (out / "index.html").read_text()
    correct = 0
    for label in CLASSES:
        files = {suffix: glob.glob(str(out / "images" / f"*_{label}{suffix}"))
                 for suffix in (".npz", ".json", "_overlay.png", "_layers.png")}
        assert all(len(found) == 1 for found in files.values()), files
        assert os.path.relpath(files["_overlay.png"][0], out) in html
        with open(files[".json"][0]) as f:
            meta = json.load(f)
        correct += meta["prediction"]["name"] == label
        saliency = np.load(files[".npz"][0])["saliency"]
        assert saliency.shape == (128, 128) and 0.0 <= saliency.min() and saliency.max() <= 1.0
    assert correct >= 5, f"only {correct} of 6 bundled held-out samples classified correctly"
    # the detector: its scenes' true defects found (IoU >= 0.5, same class), each detection's overlay linked
    with open(os.path.join(example_dir(), "detector", "truth.json")) as f:
        scenes = json.load(f)["scenes"]
    found = total = 0
    for s in scenes:
        name = os.path.splitext(os.path.basename(s["image"]))[0]
        (sidecar,) = glob.glob(str(out / "images" / f"*_{name}.json"))
        with open(sidecar) as f:
            detections = json.load(f)["detections"]
        for d in detections:
            overlay = glob.glob(str(out / "images" / f"*_{name}_overlay_{d['position']}.png"))
            assert len(overlay) == 1 and os.path.relpath(overlay[0], out) in html
        for defect in s["defects"]:
            total += 1
            found += any(d["class"]["name"] == defect["label"] and iou(d["box"], defect["box"]) >= 0.5
                         for d in detections)
    assert found >= 0.7 * total, f"the bundled detector found {found} of {total} true defects in its scenes"


def iou(a, b) -> float:
    """Two x1, y1, x2, y2 boxes' intersection over union, by hand."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0
