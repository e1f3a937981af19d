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
