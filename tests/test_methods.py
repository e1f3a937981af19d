"""The method protocol: a method registered at runtime runs end to end through the engine, RISE's old
config keys still work, and an unknown method name is a ConfigError naming the registered ones."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from inspector import ConfigError, Inspector, load_config
from inspector.demo import example_dir
from inspector.engine.methods import METHODS, Method, MethodContext, MethodResult, get_method
from inspector.jobs.record import result_settings, settings_hash


@pytest.fixture(scope="module")
def example():
    return Inspector.from_config(os.path.join(example_dir(), "config.yaml"))


def sample(label: str = "crack") -> str:
    return os.path.join(example_dir(), "samples", f"{label}.png")


@dataclass(frozen=True)
class ToySettings:
    level: float = 0.25


class Toy(Method):
    """The whole recipe: a name, whether it reads gradients, its settings, and explain()."""

    name = "toy"
    needs_gradients = False
    settings_type = ToySettings

    def __init__(self):
        self.seen = []

    def explain(self, context: MethodContext) -> MethodResult:
        self.seen.append(context)
        saliency = np.full(context.size, context.settings.level, np.float32)
        if context.progress is not None:
            context.progress(1, 1)
        return MethodResult(saliency=saliency, layer_maps=None, masks_per_layer=(3,))


def test_a_method_registered_at_runtime_runs_end_to_end(example, monkeypatch):
    toy = Toy()
    monkeypatch.setitem(METHODS, "toy", toy)
    progress = []
    exp = example.explain(sample(), target="crack", method="toy",
                          progress=lambda done, total: progress.append((done, total)))

    (context,) = toy.seen
    crack = example.config.classes.index("crack")
    assert context.target_weights.dtype == np.float32 and context.target_weights.shape == (6,)
    assert np.array_equal(context.target_weights, np.eye(6, dtype=np.float32)[crack])
    assert context.size == example.size == (128, 128) and context.settings == ToySettings()
    assert context.chunk_size == 64 and context.tensor.shape[0] == 1
    assert progress == [(1, 1)]

    blocks = len(example.contract.blocks)
    assert np.all(exp.saliency == 0.25) and exp.saliency.shape == (128, 128)
    assert exp.saliency_full.shape == cv2.imread(sample()).shape[:2] and np.all(exp.saliency_full == 0.25)
    assert exp.layer_maps.shape == (blocks, 128, 128) and not exp.layer_maps.any()
    assert exp.masks_per_layer == (0,) * (blocks - 1) + (3,) and exp.total_masks == 3  # a blockless total
    assert exp.target == crack and exp.settings["method"] == "toy"
    assert exp.scores.shape == (6,) and exp.predicted == int(np.argmax(exp.scores))


def test_a_runtime_method_can_be_the_configured_one(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", Toy())
    insp = Inspector.from_options(model=os.path.join(example_dir(), "defect_resnet.sise.onnx"),
                                  method={"name": "toy"}, runtime={"providers": ["CPUExecutionProvider"]})
    exp = insp.explain(sample("pits"))
    assert exp.settings["method"] == "toy" and np.all(exp.saliency == 0.25)


def write_config(tmp_path, name: str, method: str):
    with open(os.path.join(example_dir(), "config.yaml")) as f:
        base = f.read()
    model = os.path.join(example_dir(), "defect_resnet.sise.onnx")
    text = base.replace("model: defect_resnet.sise.onnx", f"model: {model}")
    text = re.sub(r"^method: .*$", f"method: {method}", text, flags=re.MULTILINE)
    assert f"method: {method}" in text
    path = tmp_path / name
    path.write_text(text)
    return path


def test_old_rise_keys_still_work_with_a_warning(tmp_path, caplog):
    old = write_config(tmp_path, "old.yaml",
                       "{name: rise, rise_masks: 40, rise_grid: 4, rise_p: 0.4, seed: 2}")
    new = write_config(tmp_path, "new.yaml", "{name: rise, rise: {masks: 40, grid: 4, p: 0.4}, seed: 2}")
    with caplog.at_level(logging.WARNING, logger="inspector.config"):
        old_cfg = load_config(old)
    said = [r.getMessage() for r in caplog.records]
    for key in ("masks", "grid", "p"):
        assert any(f"method.rise_{key} is deprecated" in m and f"use method.rise.{key}" in m
                   for m in said), said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="inspector.config"):
        new_cfg = load_config(new)
    assert not caplog.records
    assert old_cfg == new_cfg and new_cfg.method.rise.masks == 40 and new_cfg.method.resolved().rise.seed == 2

    a, b = Inspector(old_cfg), Inspector(new_cfg)
    assert settings_hash(result_settings(a)) == settings_hash(result_settings(b))
    ea, eb = a.explain(sample(), target=2), b.explain(sample(), target=2)
    assert ea.masks_per_layer == eb.masks_per_layer and ea.masks_per_layer[-1] == 40
    np.testing.assert_array_equal(ea.saliency, eb.saliency)


def test_both_spellings_of_a_rise_key_are_refused(tmp_path):
    path = write_config(tmp_path, "both.yaml", "{rise_masks: 40, rise: {masks: 50}}")
    with pytest.raises(ConfigError, match=r"method\.rise_masks and method\.rise\.masks are both set"):
        load_config(path)


def test_unknown_method_names_the_registered_ones(example):
    with pytest.raises(ConfigError, match=r"^method\.name: 'nope' is not one of drise, gradcam, rise, sise$"):
        get_method("nope")
    with pytest.raises(ConfigError, match=r"'nope' is not one of drise, gradcam, rise, sise"):
        example.explain(sample(), method="nope")
    with pytest.raises(ConfigError, match=r"method\.name: 'nope'"):
        Inspector.from_options(model=os.path.join(example_dir(), "defect_resnet.sise.onnx"),
                               method={"name": "nope"})


def test_new_config_keys_at_their_defaults_keep_stored_results_hash():
    """The settings hash of the bundled example as sise-inspector computed it before preprocess.gray,
    preprocess.letterbox_fill and method.fusion existed (commit 2cdf7d3): a store filled then is still found
    complete. (The example now asks for the soft fusion: with the paper's, its hash is the old one.)"""
    shipped = load_config(os.path.join(example_dir(), "config.yaml"))
    assert shipped.method.fusion == "soft"
    insp = Inspector(dataclasses.replace(shipped, method=dataclasses.replace(shipped.method, fusion="otsu")))
    assert settings_hash(result_settings(Inspector(shipped))) != \
        "80f1e28372bc7a5fbc37d33981536e81c0181e0624d08e165b654a32d066cd2d"
    assert settings_hash(result_settings(insp)) == \
        "80f1e28372bc7a5fbc37d33981536e81c0181e0624d08e165b654a32d066cd2d"
    changed = Inspector(dataclasses.replace(insp.config, preprocess=dataclasses.replace(
        insp.config.preprocess, letterbox_fill=255.0)))
    assert settings_hash(result_settings(changed)) != settings_hash(result_settings(insp))
