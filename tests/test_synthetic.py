"""The synthetic defect generator: deterministic, masks exact, sizes spanning <1 % to >20 %."""

from __future__ import annotations

import csv
import json
import os

import cv2
import numpy as np

from inspector.quality.synthetic import CLASSES, main, sample, scene


def test_deterministic():
    a, b = sample(5, 17), sample(5, 17)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(sample(5, 17).image, sample(6, 17).image)


def test_masks_are_exact():
    """Against the same image rendered without its defect: a hard-edged defect changes nothing outside
    its mask and (up to pixels saturated in both renderings) everything inside; a stain changes its mask
    and a soft halo no wider than its blur kernel (radius 8)."""
    for i in range(1, 61):
        s, clean = sample(11, i), sample(11, i, label="ok")
        changed = np.abs(s.image.astype(int) - clean.image).max(axis=2) > 0
        if s.label == "ok":
            assert not changed.any() and not s.mask.any()
        elif s.label == "stain":
            halo = cv2.dilate(s.mask.astype(np.uint8), np.ones((19, 19), np.uint8)).astype(bool)
            assert s.mask.any() and np.all(changed[s.mask]) and not np.any(changed & ~halo)
        else:
            assert s.mask.any() and not np.any(changed & ~s.mask), s.label
            assert changed[s.mask].mean() >= 0.97, (s.label, changed[s.mask].mean())
        x0, y0, x1, y1 = s.box
        if s.mask.any():
            ys, xs = np.nonzero(s.mask)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_sizes_and_classes_cover_the_range():
    samples = [sample(2, i) for i in range(240)]
    assert {s.label for s in samples} == set(CLASSES)
    areas = np.array([s.area_fraction for s in samples if s.label != "ok"])
    assert (areas < 0.01).mean() > 0.2 and (areas > 0.2).sum() >= 5


def test_cli_writes_images_masks_and_manifest(tmp_path):
    assert main(["--out", str(tmp_path), "--count", "12", "--seed", "4", "--size", "96"]) == 0
    with open(tmp_path / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and [r["label"] for r in rows[:6]] == list(CLASSES)
    for r in rows:
        image = cv2.imread(os.path.join(tmp_path, r["image"]))
        mask = cv2.imread(os.path.join(tmp_path, r["mask"]), cv2.IMREAD_GRAYSCALE) > 127
        assert image.shape == (96, 96, 3)
        assert abs(mask.mean() - float(r["area_fraction"])) < 1e-6
        assert np.array_equal(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), sample(4, int(r["id"][:5]), 96).image)


def test_texture_surfaces_from_scikit_image():
    import pytest

    pytest.importorskip("skimage")
    for i in range(1, 7):
        s = sample(3, i, 96, surfaces=("brick", "gravel", "grass"))
        clean = sample(3, i, 96, label="ok", surfaces=("brick", "gravel", "grass"))
        assert s.surface in ("brick", "gravel", "grass") and s.image.shape == (96, 96, 3)
        if s.label not in ("ok", "stain"):
            changed = np.abs(s.image.astype(int) - clean.image).max(axis=2) > 0
            assert not np.any(changed & ~s.mask) and changed[s.mask].mean() >= 0.97


def test_an_audit_of_the_data_set_takes_its_images_not_its_masks(tmp_path):
    """The masks folder is marked (.sise-skip): auditing the folder the generator wrote lists its images
    only (the masks were audited as parts before)."""
    from inspector.jobs.audit import list_inputs

    assert main(["--out", str(tmp_path), "--count", "6", "--seed", "4", "--size", "64"]) == 0
    keys = [k for k, _ in list_inputs(str(tmp_path))]
    assert len(keys) == 6 and all(k.startswith("images/") for k in keys), keys


def test_scenes_hold_several_separate_defects_and_their_truth(tmp_path):
    """A detector's data: 1-4 defects a scene, of every defect class, none touching another; each box is
    its mask's extent; the CLI's truth.json lists exactly the files it wrote, and an audit skips masks/."""
    scenes = [scene(3, i) for i in range(80)]
    assert {len(s.defects) for s in scenes} >= {1, 2, 3, 4} and max(len(s.defects) for s in scenes) <= 4
    assert {d.label for s in scenes for d in s.defects} == set(CLASSES[1:])
    for s in scenes:
        taken = np.zeros(s.image.shape[:2], bool)
        for d in s.defects:
            ys, xs = np.nonzero(d.mask)
            assert d.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            near = cv2.dilate(d.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            assert not (near & taken).any()
            taken |= d.mask
    assert np.array_equal(scene(3, 7).image, scenes[7].image)
    assert main(["--scenes", "--out", str(tmp_path), "--count", "5", "--seed", "3"]) == 0
    with open(tmp_path / "truth.json") as f:
        truth = json.load(f)
    assert truth["seed"] == 3 and len(truth["scenes"]) == 5
    for i, entry in enumerate(truth["scenes"]):
        image = cv2.cvtColor(cv2.imread(str(tmp_path / entry["image"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(image, scenes[i].image)
        for d, listed in zip(scenes[i].defects, entry["defects"], strict=True):
            mask = cv2.imread(str(tmp_path / listed["mask"]), cv2.IMREAD_GRAYSCALE) > 127
            assert np.array_equal(mask, d.mask)
            assert listed["label"] == d.label and tuple(listed["box"]) == d.box
    assert os.path.isfile(tmp_path / "masks" / ".sise-skip")
