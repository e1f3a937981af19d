"""The int8 sampler (runtime.sampler_precision: int8): its scores and maps against the float32 sampler's,
the cache beside the model (reuse, new names for a changed model or calibration set, a truncated file, a
read-only folder), the refusal of a model int8 cannot carry, and the maps across chunk sizes."""

from __future__ import annotations

import logging
import os
import shutil
import sys

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn

import onnx_tools
from inspector import Inspector
from inspector.demo import example_dir
from inspector.engine.runtime import int8, openvino_sampler
from inspector.errors import ConfigError
from inspector.quality.synthetic import sample

from .models import export_onnx
from .mounts import make_read_only, tmpfs

EXAMPLE_MODEL = os.path.join(example_dir(), "defect_resnet.sise.onnx")
PREPROCESS = {"size": [128, 128], "resize": "stretch", "scale": 1 / 255, "mean": [0.5, 0.5, 0.5],
              "std": [0.25, 0.25, 0.25]}


def write_calibration(folder, seed: int = 5, count: int = 12) -> str:
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        image = cv2.cvtColor(sample(seed, i).image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(os.path.join(folder, f"cal_{i:02d}.png"), image)
    return str(folder)


def options(model, calibration, precision="int8", runtime="auto", **method) -> dict:
    """The engine's options; the fusion is the bundled config's (soft)."""
    return {"model": str(model), "preprocess": PREPROCESS,
            "method": {"preset": "quality", "fusion": "soft", **method},
            "runtime": {"providers": ["CPUExecutionProvider"], "sampler_precision": precision,
                        "calibration_images": calibration, "sampler_runtime": runtime}}


def needs(runtime: str) -> str:
    """``runtime``, where it can run: OpenVINO comes with the dev extra, so CI fails rather than skips."""
    if runtime == "openvino" and not openvino_sampler.available():
        if os.environ.get("CI"):
            pytest.fail("the openvino package (dev extra) is missing")
        pytest.skip("needs the openvino package (pip install -e '.[cpu,openvino]')")
    return runtime


RUNTIMES = ["onnxruntime", "openvino"]


@pytest.fixture()
def example(tmp_path):
    """(a copy of the bundled model, a calibration folder) in ``tmp_path``."""
    folder = tmp_path / "model"
    folder.mkdir()
    model = folder / "defect_resnet.sise.onnx"
    shutil.copy(EXAMPLE_MODEL, model)
    return model, write_calibration(tmp_path / "calibration")


def cache_files(folder) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".int8.onnx"))


def pearson(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def sampler_scores(insp: Inspector, explained, target: int) -> np.ndarray:
    """The scores ``insp``'s sampler gives the first 8 maps of each block of an explained image [K]."""
    blocks = insp.contract.blocks
    device = {onnx_tools.act_input(i): a for i, a in enumerate(explained.activations)}
    device[onnx_tools.IMAGE] = explained.images
    out = []
    for b, block in enumerate(blocks):
        rows = np.arange(min(8, block.shape[1]), dtype=np.int64)
        feeds = {onnx_tools.idx_input(i): rows if i == b else np.zeros(0, np.int64)
                 for i in range(len(blocks))}
        feeds.update({onnx_tools.KEEP: np.ones((len(rows), 1), np.float32),
                      onnx_tools.OWNER: np.zeros(len(rows), np.int64),
                      onnx_tools.TARGET: insp._one_hot(target)})
        out.append(insp.sessions.run_sampler(feeds, device, [onnx_tools.SCORES])[0][:, 0])
    return np.concatenate(out)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_scores_and_maps_follow_float32(example, runtime):
    """On the bundled (trained) model, the int8 sampler's masked-image scores follow the float32 sampler's
    (r >= 0.99, mean |difference| <= 0.01; a score near a class boundary may move more), and the fused
    maps of held-out images agree (r >= 0.99, the bar for the defect images), with the same maps
    selected."""
    model, calibration = example
    float32 = Inspector.from_options(**options(model, calibration, "float32"))
    int8_engine = Inspector.from_options(**options(model, calibration, runtime=needs(runtime)))
    assert int8_engine.sampler_precision == "int8" and float32.sampler_precision == "float32"
    assert int8_engine.sessions.sampler_runtime == runtime == int8_engine.settings()["sampler_runtime"]
    assert int8_engine.settings()["sampler_precision"] == "int8"
    s8, s32 = [], []
    for i in range(3):
        tensor, _ = float32.prepare(sample(11, i).image)
        target = float32.explain(sample(11, i).image).target
        explained = float32._explain_run(tensor, float32._one_hot(target))[0]
        s8.append(sampler_scores(int8_engine, explained, target))
        s32.append(sampler_scores(float32, explained, target))
    s8, s32 = np.concatenate(s8), np.concatenate(s32)
    assert not np.array_equal(s8, s32)  # really another graph
    assert pearson(s8, s32) >= 0.99 and np.abs(s8 - s32).mean() <= 0.01, (s8, s32)
    for i in range(3, 7):
        a = float32.explain(sample(11, i).image)
        b = int8_engine.explain(sample(11, i).image, target=a.target)
        assert a.masks_per_layer == b.masks_per_layer
        assert pearson(a.saliency, b.saliency) >= 0.99


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_maps_are_equal_across_chunk_sizes(example, runtime):
    model, calibration = example
    small = Inspector.from_options(**options(model, calibration, runtime=needs(runtime), chunk_size=7))
    large = Inspector.from_options(**options(model, calibration, runtime=runtime, chunk_size=64))
    assert small.sampler_precision == large.sampler_precision == "int8"
    for i in range(2):
        a = small.explain(sample(11, i).image)
        b = large.explain(sample(11, i).image, target=a.target)
        np.testing.assert_allclose(a.saliency, b.saliency, atol=2e-5)
        for x, y in zip(a.layer_maps, b.layer_maps):
            np.testing.assert_allclose(x, y, atol=2e-5)


def test_the_cache_is_reused_and_renamed_for_another_model_or_calibration_set(example, tmp_path, monkeypatch):
    model, calibration = example
    first = Inspector.from_options(**options(model, calibration))
    [name] = cache_files(model.parent)
    assert name.startswith("defect_resnet.") and first.model.sha256[:12] in name
    stamp = os.stat(model.parent / name).st_mtime_ns
    monkeypatch.setattr(int8, "build", lambda *a, **k: pytest.fail("quantized again despite the cache"))
    again = Inspector.from_options(**options(model, calibration))
    assert again.sampler_precision == "int8" and os.stat(model.parent / name).st_mtime_ns == stamp
    image = sample(11, 5).image
    np.testing.assert_array_equal(first.explain(image).saliency, again.explain(image).saliency)
    monkeypatch.undo()

    # another calibration set (one image changed): another file, the first one kept
    cv2.imwrite(os.path.join(calibration, "cal_00.png"), cv2.cvtColor(sample(6, 0).image, cv2.COLOR_RGB2BGR))
    Inspector.from_options(**options(model, calibration))
    assert len(cache_files(model.parent)) == 2 and name in cache_files(model.parent)

    # another model (the same graph with one more metadata entry): another file again
    proto = onnx.load(str(model))
    proto.metadata_props.add(key="note", value="retrained")
    other = model.parent / "other.sise.onnx"
    onnx.save(proto, str(other))
    changed = Inspector.from_options(**options(other, calibration))
    assert changed.model.sha256 != first.model.sha256
    assert any(f.startswith("other.") and changed.model.sha256[:12] in f for f in cache_files(model.parent))


def test_a_truncated_cache_file_is_built_again(example, caplog):
    model, calibration = example
    Inspector.from_options(**options(model, calibration))
    [name] = cache_files(model.parent)
    path = model.parent / name
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 3])
    with caplog.at_level(logging.WARNING):
        insp = Inspector.from_options(**options(model, calibration))
    assert insp.sampler_precision == "int8"
    assert "cannot be read" in caplog.text and name in caplog.text
    assert int8.read_cached(str(path)) is not None and len(path.read_bytes()) > len(whole) // 3


def test_a_read_only_model_folder_keeps_float32_with_a_warning(tmp_path, caplog):
    with tmpfs(tmp_path / "ro", "16m") as folder:
        model = os.path.join(folder, "defect_resnet.sise.onnx")
        shutil.copy(EXAMPLE_MODEL, model)
        make_read_only(folder)
        with caplog.at_level(logging.WARNING):
            insp = Inspector.from_options(**options(model, write_calibration(tmp_path / "cal")))
        assert insp.sampler_precision == "float32" and insp.settings()["sampler_precision"] == "float32"
        assert "cannot write the int8 sampler's cache file" in caplog.text and "float32" in caplog.text
        assert cache_files(folder) == [] and not [f for f in os.listdir(folder) if f.endswith(".part")]
        assert insp.explain(sample(11, 0).image).saliency.max() > 0


class Outlier(nn.Module):
    """A classifier whose first block has one channel of huge values that nothing after it reads: int8's one
    range per tensor spends all its levels on that channel and the informative ones round to zero."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
        with torch.no_grad():
            self.block1[0].weight[0] *= 3e4
            self.block1[0].bias[0] = 3e6
            self.block2[0].weight[:, 0] = 0.0
            self.head[2].weight *= 40.0  # scores that vary with the image, not all near 1/4

    def forward(self, x):
        return self.head(self.block2(self.block1(x)))


def test_a_model_int8_cannot_carry_is_refused_once_and_keeps_float32(tmp_path, caplog, monkeypatch):
    model = tmp_path / "outlier.sise.onnx"
    onnx.save(onnx_tools.export_model(export_onnx(Outlier().eval(), (1, 3, 32, 32))).model, str(model))
    calibration = write_calibration(tmp_path / "cal")
    settings = {**options(model, calibration), "preprocess": {**PREPROCESS, "size": [32, 32]}}
    with caplog.at_level(logging.WARNING):
        insp = Inspector.from_options(**settings)
    assert insp.sampler_precision == "float32"
    assert "int8 refused" in caplog.text and "runs in float32" in caplog.text
    [name] = cache_files(tmp_path)  # the refusal is cached: the next start does not quantize again
    cached = int8.read_cached(str(tmp_path / name))
    assert not cached.accepted and cached.agreement < int8.MIN_AGREEMENT and cached.float_layers
    monkeypatch.setattr(int8, "build", lambda *a, **k: pytest.fail("quantized again despite the refusal"))
    assert Inspector.from_options(**settings).sampler_precision == "float32"


def test_config_errors_name_the_key(tmp_path, example):
    model, calibration = example
    with pytest.raises(ConfigError, match="runtime.calibration_images"):
        Inspector.from_options(**options(model, None))
    with pytest.raises(ConfigError, match="fp16"):
        Inspector.from_options(**{**options(model, calibration),
                                  "runtime": {**options(model, calibration)["runtime"], "fp16": True}})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"runtime.calibration_images: .*empty holds no image files"):
        Inspector.from_options(**options(model, str(empty)))
    with pytest.raises(ConfigError, match=r"runtime.calibration_images: cannot list"):
        Inspector.from_options(**options(model, str(tmp_path / "missing")))


def test_the_cpus_int8_instructions_are_read_from_cpuinfo(tmp_path):
    from inspector.engine.runtime.cpu import int8_instructions

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_bf16 amx_int8\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_bf16 amx_int8\n")
    assert int8_instructions(str(info)) == ["AVX512-VNNI", "AMX-INT8"]
    info.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert int8_instructions(str(info)) == ["Arm dot product"]
    info.write_text("flags\t\t: fpu sse avx2\n")
    assert int8_instructions(str(info)) == []
    assert int8_instructions(str(tmp_path / "missing")) is None


def test_doctor_says_whether_the_int8_sampler_runs(example, tmp_path):
    import yaml

    from inspector import doctor

    model, calibration = example
    config = tmp_path / "int8.yaml"
    config.write_text(yaml.safe_dump(options(model, calibration)))
    lines: list[str] = []
    assert doctor.run_doctor(str(config), out=lines.append) == 0, lines
    text = "\n".join(lines)
    assert "cpu int8 instructions:" in text and "int8 " in text and "ms a sample" in text
    assert "int8 sampler: runs, calibrated on " + calibration in text and "scores r = " in text
    assert len(cache_files(model.parent)) == 1  # the self-test (capped maps) shares the engine's calibration
    config.write_text(yaml.safe_dump(options(model, calibration, "float32")))
    lines.clear()
    assert doctor.run_doctor(str(config), out=lines.append) == 0, lines
    assert any("int8 sampler: off" in line for line in lines)


def test_openvino_and_onnxruntime_run_the_same_int8_graph(example):
    """The two runtimes compile one cached int8 graph: their maps agree closely (their integer kernels
    round alike but add in other orders), and auto picks OpenVINO where it is installed."""
    model, calibration = example
    ort_engine = Inspector.from_options(**options(model, calibration, runtime="onnxruntime"))
    ov_engine = Inspector.from_options(**options(model, calibration, runtime=needs("openvino")))
    assert Inspector.from_options(**options(model, calibration)).sessions.sampler_runtime == "openvino"
    assert len(cache_files(model.parent)) == 1
    for i in range(3):
        a = ort_engine.explain(sample(11, i).image)
        b = ov_engine.explain(sample(11, i).image, target=a.target)
        assert pearson(a.saliency, b.saliency) >= 0.999
        for x, y in zip(a.layer_maps, b.layer_maps):
            if x is not None:
                assert pearson(x, y) >= 0.99


def test_openvino_is_named_when_it_is_missing_or_asked_for_float32(example, monkeypatch):
    model, calibration = example
    with pytest.raises(ConfigError, match="sampler_runtime: openvino runs the int8 sampler"):
        Inspector.from_options(**options(model, calibration, "float32", runtime="openvino"))
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino fails as where it is not installed
    assert not openvino_sampler.available()
    assert Inspector.from_options(**options(model, calibration)).sessions.sampler_runtime == "onnxruntime"
    with pytest.raises(ConfigError, match=r"needs the openvino package: pip install -e '\.\[cpu,openvino\]'"):
        Inspector.from_options(**options(model, calibration, runtime="openvino"))


def test_a_failing_quantization_keeps_float32_with_a_warning(example, monkeypatch, caplog):
    model, calibration = example

    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported op in this graph\nmore lines")

    monkeypatch.setattr(int8, "quantize", broken)
    with caplog.at_level(logging.WARNING):
        insp = Inspector.from_options(**options(model, calibration))
    assert insp.sampler_precision == "float32" and cache_files(model.parent) == []
    assert "quantizing " in caplog.text and "RuntimeError: Unsupported op in this graph" in caplog.text
    assert "more lines" not in caplog.text


def test_stored_results_tell_int8_from_float32(example):
    """A result's settings name the int8 sampler (calibration and runtime), so its hash differs from
    float32's; float32 settings are those stored before the option existed."""
    from inspector.jobs.record import result_settings, settings_hash

    model, calibration = example
    float32 = result_settings(Inspector.from_options(**options(model, calibration, "float32")))
    assert "sampler_int8" not in float32 and "sampler_runtime" not in float32
    on_ort = result_settings(Inspector.from_options(**options(model, calibration, runtime="onnxruntime")))
    assert on_ort["sampler_runtime"] == "onnxruntime" and len(on_ort["sampler_int8"]) == 64
    assert settings_hash(on_ort) != settings_hash(float32)
    other = write_calibration(os.path.join(os.path.dirname(calibration), "other"), seed=6)
    moved = result_settings(Inspector.from_options(**options(model, other, runtime="onnxruntime")))
    assert moved["sampler_int8"] != on_ort["sampler_int8"]
