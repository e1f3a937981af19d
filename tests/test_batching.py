"""Explanations batched across images (Inspector.explain_batch, `--batch-images`): one explain-model run for
several images and sampler runs that mix their masks give each image the explanation it gets alone."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from inspector import Inspector
from inspector.engine.methods import sise as sise_method
from inspector.errors import ImageError

from .test_audit import audit, config, csv_rows, make_inputs
from .test_engine import CPU, IDENTITY_PREPROCESS, pearson, smooth_image

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "configs", "defect_example.yaml")


def example(**method) -> Inspector:
    return Inspector.from_options(**{**_example_options(), "method": {"rise": {"masks": 300}, **method},
                                     "runtime": CPU})


def _example_options() -> dict:
    import yaml

    with open(EXAMPLE) as f:
        options = yaml.safe_load(f)
    options["model"] = os.path.normpath(os.path.join(os.path.dirname(EXAMPLE), options["model"]))
    options.pop("method", None)
    options.pop("runtime", None)
    return options


def photos(n: int) -> list[np.ndarray]:
    """Images of different sizes and contents (each preprocessed to the model's input)."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        h, w = 128 + 9 * i, 128 + 5 * (i % 3)
        smooth = smooth_image((1, 3, h, w), seed=i)
        out.append(np.clip(127 + 60 * smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8))
    return out


def assert_same(alone, together):
    assert len(alone) == len(together)
    for a, b in zip(alone, together):
        assert a.target == b.target and a.predicted == b.predicted
        assert a.masks_per_layer == b.masks_per_layer
        np.testing.assert_allclose(b.scores, a.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.layer_maps, a.layer_maps, atol=1e-5)
        np.testing.assert_allclose(b.saliency, a.saliency, atol=1e-5)
        np.testing.assert_allclose(b.saliency_full, a.saliency_full, atol=1e-5)


@pytest.mark.parametrize("method", ["sise", "gradcam", "rise"])
def test_batched_explanations_equal_one_at_a_time(method):
    """Seven images in groups of three (the last group short), chunks of 7 masks that straddle images:
    the same maps, targets and mask counts as each image explained alone."""
    insp = example(chunk_size=7)
    images = photos(7)
    alone = [insp.explain(im, method=method) for im in images]
    together = insp.explain_batch(images, method=method, batch_images=3)
    assert_same(alone, together)
    if method == "sise":
        assert len({a.target for a in alone}) >= 2 or len({a.total_masks for a in alone}) >= 2
        assert all(a.total_masks > 7 for a in alone)  # several chunks per image, so chunks mix images


def test_batched_sise_with_padded_chunks_and_fixed_targets(monkeypatch):
    """CUDA's padded last chunk (keep 0) and explicit targets, a class and a weight vector."""
    monkeypatch.setattr(sise_method, "PAD_DEVICES", ("cpu",))
    insp = example(chunk_size=5)
    images = photos(4)
    weights = np.linspace(0.0, 1.0, insp.contract.num_classes).astype(np.float32)
    for target in ("crack", weights):
        alone = [insp.explain(im, target=target) for im in images]
        assert_same(alone, insp.explain_batch(images, target=target, batch_images=4))


def test_batched_sise_matches_the_pytorch_reference(exported):
    """Independent of the engine's own single-image path: each image of a batch of three against the PyTorch
    SISE (ResNet-18 fixture with batch norm and residual blocks)."""
    from .sise_reference import sise_reference

    model, taps, shape, path = exported("resnet18")
    insp = Inspector.from_options(model=path, preprocess=IDENTITY_PREPROCESS, method={"chunk_size": 16},
                                  runtime=CPU)
    images = [smooth_image(shape, seed=s) for s in range(3)]
    for image, exp in zip(images, insp.explain_batch(images, batch_images=3)):
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
        ref_maps, ref_fused, ref_counts = sise_reference(model, taps, x, exp.target, mu=insp.method.mu,
                                                         adaptive=insp.method.adaptive,
                                                         cap=insp.method.max_masks_per_layer)
        assert list(exp.masks_per_layer) == ref_counts
        for b, ref in enumerate(ref_maps):
            if ref is not None:
                assert pearson(exp.layer_maps[b], ref) >= 0.99, b
        assert pearson(exp.saliency, ref_fused) >= 0.99


def test_a_bad_image_in_a_batch_fails_alone():
    insp = example()
    images = photos(3)
    bad = np.zeros((64, 64, 3), np.float64)  # the config wants uint8
    out = insp.explain_batch([images[0], bad, images[1], images[2]], errors="collect", batch_images=4,
                             names=["a.png", "bad.png", "c.png", "d.png"])
    assert isinstance(out[1], ImageError) and "bad.png" in str(out[1])
    assert_same([insp.explain(im) for im in images], [out[0], out[2], out[3]])
    with pytest.raises(ImageError, match="bad.png"):
        insp.explain_batch([images[0], bad], batch_images=2, names=["a.png", "bad.png"])


def test_batch_size_rules():
    insp = example(chunk_size=5)
    assert insp.batch_images() == 5  # the default 8, at most the chunk a memory budget allows
    assert insp.batch_images(3) == 3
    assert example().batch_images() == 8


def test_audit_batched_equals_audit_one_at_a_time(tmp_path):
    """`inspector audit --batch-images 4` on eleven images (two unreadable or broken among them) records
    the same results as `--batch-images 1`: prediction, masks, regions and evidence per image."""
    inp = tmp_path / "in"
    make_inputs(inp, 9)
    (inp / "broken.png").write_bytes(b"not an image")
    cv2.imwrite(str(inp / "tiny.png"), np.full((2, 2, 3), 9, np.uint8))
    cfg = config(tmp_path)
    one = audit("-c", cfg, inp, "--out", tmp_path / "one", "--batch-images", "1")
    four = audit("-c", cfg, inp, "--out", tmp_path / "four", "--batch-images", "4")
    assert one.returncode == four.returncode == 1, (one.stderr, four.stderr)  # broken.png fails in both
    a, b = (sorted(csv_rows(tmp_path / out), key=lambda r: r["path"]) for out in ("one", "four"))
    assert [r["path"] for r in a] == [r["path"] for r in b] and len(a) == 11
    columns = ["image_sha256", "status", "prediction", "target", "masks", "regions", "flagged", "retryable"]
    for x, y in zip(a, b):
        assert {k: x[k] for k in columns} == {k: y[k] for k in columns}, x["path"]
        for k in ("confidence", "evidence_peak", "evidence_mean"):
            if x[k]:
                assert abs(float(x[k]) - float(y[k])) < 1e-4, (x["path"], k)
    assert sum(r["status"] == "failed" for r in b) == 1


def test_the_same_bytes_twice_in_one_batch_are_one_result(tmp_path):
    """Two names of one image in the same batch: explained once, the second found in the store (as one at a
    time), not reported as being explained by another process."""
    from .test_inspector_cli import inspector as run_inspector

    folder = tmp_path / "in"
    make_inputs(folder, 3)
    (folder / "copy_of_part_001.png").write_bytes((folder / "part_001.png").read_bytes())
    r = run_inspector("explain", "-c", config(tmp_path), folder, "--out", tmp_path / "out",
                      "--batch-images", "4")
    assert r.returncode == 0, r.stderr
    assert "wrote 3 explanation(s)" in r.stdout and "1 were already in the store" in r.stdout, r.stdout
    a = audit("-c", config(tmp_path), folder, "--out", tmp_path / "audit", "--batch-images", "4")
    assert a.returncode == 0 and "3 explained now, 1 found in the store" in a.stdout, a.stdout + a.stderr
