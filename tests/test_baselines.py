"""Grad-CAM and RISE on the engine against independent torch computations, and `inspector evaluate`."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F

from inspector import Inspector
from inspector.engine.methods.rise import rise_masks
from onnx_tools import export_model

from .models import export_onnx, fixture
from .test_engine import IDENTITY_PREPROCESS, smooth_image

CPU = {"providers": ["CPUExecutionProvider"]}


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    model, taps, shape = fixture("resnet18")
    path = tmp_path_factory.mktemp("r18") / "r18.sise.onnx"
    onnx.save(export_model(export_onnx(model, shape)).model, path)
    return model, taps, shape, str(path)


def test_gradcam_matches_torch(resnet):
    model, taps, shape, path = resnet
    image = smooth_image(shape, seed=2)
    exp = Inspector.from_options(model=path, preprocess=IDENTITY_PREPROCESS, runtime=CPU).explain(
        image, target=4, method="gradcam")
    acts = {}
    hook = dict(model.named_modules())[taps[-1]].register_forward_hook(
        lambda m, i, o: acts.setdefault("a", o))
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[None]))
    psi = torch.softmax(model(x), 1)[0, 4]
    hook.remove()
    (grad,) = torch.autograd.grad(psi, [acts["a"]])
    cam = F.relu((grad.mean((2, 3), keepdim=True) * acts["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=shape[2:], mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    cam = (cam - cam.min()) / (cam.max() - cam.min())
    np.testing.assert_allclose(exp.saliency, cam, atol=1e-4)


def test_rise_matches_torch_scoring(resnet):
    model, _, shape, path = resnet
    image = smooth_image(shape, seed=6)
    method = {"rise": {"masks": 300, "grid": 5, "p": 0.5}, "seed": 3, "chunk_size": 64}
    exp = Inspector.from_options(model=path, preprocess=IDENTITY_PREPROCESS, runtime=CPU,
                                 method=method).explain(image, target=2, method="rise")
    masks = rise_masks(300, shape[2:], grid=5, p=0.5, seed=3)
    assert masks.min() >= 0 and masks.max() <= 1 and abs(masks.mean() - 0.5) < 0.1
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[None]))
    with torch.no_grad():
        scores = (torch.softmax(model(x * torch.from_numpy(masks)[:, None]), 1)[:, 2]
                  .numpy().astype(np.float64))
    sal = np.tensordot(scores, masks, axes=1)
    sal = (sal - sal.min()) / (sal.max() - sal.min())
    np.testing.assert_allclose(exp.saliency, sal, atol=1e-4)
    assert exp.masks_per_layer[-1] == 300


def test_evaluate_cli_on_a_small_set(tmp_path):
    from inspector.demo import example_dir
    from inspector.quality.synthetic import main as synth

    data = tmp_path / "data"
    synth(["--out", str(data), "--count", "8", "--seed", "31"])
    out = tmp_path / "eval"
    cfg = f"{example_dir()}/config.yaml"
    r = subprocess.run([sys.executable, "-m", "inspector", "evaluate", "-c", cfg, "--data", str(data),
                        "--methods", "sise,gradcam", "--out", str(out)], capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    overall = {row["method"]: row for row in table if row["bin"] == "all"}
    assert set(overall) == {"sise", "gradcam"} and overall["sise"]["images"] == "6"  # 2 'ok' images skipped
    for row in table:
        for key in ("ebpg", "miou", "bbox", "drop", "increase"):
            assert 0.0 <= float(row[key]) <= 100.0
    assert (out / "summary.md").read_text().startswith("| method |")
    with open(out / "per_image.csv") as f:
        assert len(list(csv.DictReader(f))) == 12
