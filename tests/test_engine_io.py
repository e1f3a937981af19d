"""Config validation, bad images and targets, and `inspector explain` as a user runs it."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from inspector import ConfigError, ImageError, Inspector, ModelContractError, TargetError, load_config
from inspector.jobs.artifacts import canvas_scale, image_area
from onnx_tools import export_model

from .models import export_onnx, fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = {"providers": ["CPUExecutionProvider"]}
CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    model, _, shape = fixture("resnet18")
    plain = export_onnx(model, shape)
    onnx.save(plain, folder / "plain.onnx")
    onnx.save(export_model(plain).model, folder / "r18.sise.onnx")
    return folder


def write_config(folder, model="r18.sise.onnx", **extra) -> str:
    import yaml

    raw = {"model": model, "classes": CLASSES, "runtime": CPU, "method": {"chunk_size": 32}}
    raw.update(extra)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


# ------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("raw,key", [
    ({"model": "m.onnx", "colour": 1}, "colour"),
    ({"model": "m.onnx", "method": {"mu": "high"}}, "method.mu"),
    ({"model": "m.onnx", "method": {"muu": 0.3}}, "method.muu"),
    ({"model": "m.onnx", "preprocess": {"resize": "squash"}}, "preprocess.resize"),
    ({"model": "m.onnx", "preprocess": {"size": [224]}}, "preprocess.size"),
    ({"model": "m.onnx", "method": {"adaptive": "yes"}}, "method.adaptive"),
    ({"preprocess": {}}, "model"),
])
def test_config_errors_name_the_key(tmp_path, raw, key):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        load_config(path)


def test_example_configs_are_valid():
    paths = glob.glob(os.path.join(ROOT, "configs", "*.yaml"))
    assert paths
    for path in paths:
        cfg = load_config(path)
        assert cfg.model.endswith(".onnx")


def test_efficientnet_config_runs_with_on_the_fly_export(tmp_path):
    """configs/efficientnet_lite0.yaml, pointed at a freshly written plain model: the first load exports
    and caches it beside the model, the second reuses the cache."""
    pytest.importorskip("efficientnet_lite_pytorch")
    skimage_data = pytest.importorskip("skimage.data")
    import yaml

    model_path = tmp_path / "efficientnet_lite0.onnx"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_efficientnet_lite0.py"), "-o",
                    str(model_path)], check=True, capture_output=True)
    with open(os.path.join(ROOT, "configs", "efficientnet_lite0.yaml")) as f:
        raw = yaml.safe_load(f)
    raw["model"] = str(model_path)
    raw["runtime"] = CPU
    raw["method"]["max_masks_per_layer"] = 4
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    exp = Inspector.from_config(cfg_path).explain(skimage_data.coffee())
    assert exp.predicted == 967 and exp.scores[967] > 0.5  # espresso
    cached = glob.glob(str(tmp_path / "efficientnet_lite0.*.sise.onnx"))
    assert len(cached) == 1
    stamp = os.path.getmtime(cached[0])
    Inspector.from_config(cfg_path)
    assert os.path.getmtime(cached[0]) == stamp


# ------------------------------------------------------------------------------------ bad input
def test_bad_images_and_targets(models, tmp_path):
    insp = Inspector.from_config(write_config(models))
    good = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ImageError, match="zero-size"):
        insp.explain(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageError, match="2 channels"):
        insp.explain(np.zeros((8, 8, 2), np.uint8))
    assert insp.explain(np.zeros((8, 8), np.uint8)).saliency_full.shape == (8, 8)  # grey: replicated
    with pytest.raises(ImageError, match="uint16"):
        insp.explain(np.zeros((8, 8, 3), np.uint16))
    truncated = tmp_path / "cut.png"
    _, buf = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    truncated.write_bytes(buf.tobytes()[: len(buf) // 3])
    with pytest.raises(ImageError, match="cut.png"):
        insp.explain(str(truncated))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="notes.png"):
        insp.explain(str(text))
    with pytest.raises(TargetError, match="unknown class name 'dent'"):
        insp.explain(good, target="dent")
    with pytest.raises(TargetError, match="out of range"):
        insp.explain(good, target=10)
    assert insp.explain(good, target="c4").target == 4


def test_huge_image_is_refused(models):
    insp = Inspector.from_config(write_config(models, preprocess={"max_pixels": 10_000}))
    with pytest.raises(ImageError, match="max_pixels"):
        insp.explain(np.zeros((200, 200, 3), np.uint8))


def test_sixteen_bit_images_when_configured(models):
    insp = Inspector.from_config(write_config(models, preprocess={"input_dtype": "uint16",
                                                                  "scale": 1 / 65535}))
    img16 = (np.random.default_rng(1).integers(0, 256, (64, 64, 3)) * 257).astype(np.uint16)
    exp16 = insp.explain(img16, target=1)
    exp8 = Inspector.from_config(write_config(models)).explain((img16 // 257).astype(np.uint8), target=1)
    np.testing.assert_allclose(exp16.saliency, exp8.saliency, atol=1e-4)


def test_model_without_contract(models, tmp_path):
    onnx.save(onnx.load(models / "plain.onnx"), tmp_path / "plain.onnx")
    # a plain model is exported on the fly ...
    Inspector.from_options(model=str(tmp_path / "plain.onnx"), runtime=CPU)
    # ... but one that cannot be exported says what to do
    bad = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Flatten", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 48])]))
    onnx.save(bad, tmp_path / "bad.onnx")
    with pytest.raises(ModelContractError, match="onnx_tools export"):
        Inspector.from_options(model=str(tmp_path / "bad.onnx"), runtime=CPU)


# ------------------------------------------------------------------------------------ CLI
def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "inspector", *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=False)


def test_cli_explain_writes_outputs_and_lists_failures(models, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    pic = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    pic[:, :, 0] = 255  # saturated red channel (RGB): a swapped channel order would show
    cv2.imwrite(str(images / "part_a.png"), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(images / "part_b.jpg"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (images / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    r = run_cli("explain", "-c", write_config(models), images, "--out", out, "--target", "c3")
    assert r.returncode == 1, r.stderr
    assert "1 image(s) failed" in r.stderr and "broken.png" in r.stderr
    assert "[3/3]" in r.stderr
    assert "wrote 2 explanation(s)" in r.stdout
    # <image hash>_<settings>_<stem>...
    names = sorted(n.split("_", 2)[2] for n in os.listdir(out / "images"))
    assert names == ["part_a.json", "part_a.npz", "part_a_layers.png", "part_a_overlay.png",
                     "part_a_thumb.jpg", "part_b.json", "part_b.npz", "part_b_layers.png",
                     "part_b_overlay.png", "part_b_thumb.jpg"]
    assert sorted(os.listdir(out)) == ["images", "results.db"]
    (a,) = [out / "images" / n[:-len(".json")] for n in os.listdir(out / "images")
            if n.endswith("part_a.json")]
    data = np.load(f"{a}.npz")
    assert set(data.files) == {"saliency", "saliency_full", "layer_maps", "masks_per_layer", "scores"}
    assert data["saliency_full"].shape == (48, 80) and data["saliency"].shape == (64, 64)
    with open(f"{a}.json") as f:
        meta = json.load(f)
    assert meta["target"]["name"] == "c3" and meta["target"]["index"] == 3
    assert len(meta["settings"]["model_sha256"]) == 64 and meta["settings"]["onnxruntime"]
    assert meta["settings"]["provider"] == "CPUExecutionProvider"
    assert set(meta["timings_s"]) >= {"preprocess", "explain_model", "sampling", "fusion", "total"}
    # the caption bar is above the image, the colour bar right of it; the 48x80 image is drawn 6 times
    # as large (at least 256 px on its short side)
    top, height, width = image_area((48, 80))
    k = canvas_scale((48, 80))
    assert (height, width) == (48 * k, 80 * k) == (288, 480)
    overlay = cv2.imread(f"{a}_overlay.png")[top:top + height, :width]
    # colour order: the file (BGR on disk) is half the input in BGR plus half the JET heatmap
    heat = cv2.applyColorMap((data["saliency_full"] * 255).astype(np.uint8), cv2.COLORMAP_JET)
    expected = cv2.addWeighted(cv2.cvtColor(pic, cv2.COLOR_RGB2BGR), 0.5, heat, 0.5, 0.0)
    expected = cv2.resize(expected, (width, height), interpolation=cv2.INTER_NEAREST)
    drawn = np.zeros(overlay.shape[:2], np.uint8)  # region boxes (3 px with their black edges), labels
    for region in meta["regions"]:
        x0, y0, x1, y1 = (v * k for v in region["box"])
        cv2.rectangle(drawn, (x0, y0), (x1 - 1, y1 - 1), 1, 5)
        drawn[max(0, y0 - 24):y0 + 24, x0:x0 + 70] = 1
    assert drawn.mean() < 0.8
    assert np.abs(overlay[drawn == 0].astype(int) - expected[drawn == 0]).max() <= 1
    assert meta["roi_inside"] is None and meta["flagged"] is False
    assert all(r["area"] >= 16 for r in meta["regions"])


def test_cli_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: nowhere.onnx\nmethod: {mu: -1}\n")
    r = run_cli("explain", "-c", cfg, tmp_path, "--out", tmp_path / "o")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "method.mu" in lines[0]


def test_provider_fallback_is_logged(models, caplog):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA; the fallback path is not taken")
    with caplog.at_level("WARNING"):
        insp = Inspector.from_options(model=str(models / "r18.sise.onnx"),
                                      runtime={"providers": ["CUDAExecutionProvider",
                                                             "CPUExecutionProvider"]})
    assert insp.sessions.provider == "CPUExecutionProvider"
    assert any("CUDAExecutionProvider" in r.getMessage() and "not available" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(ConfigError, match="runtime.providers"):
        Inspector.from_options(model=str(models / "r18.sise.onnx"),
                               runtime={"providers": ["CUDAExecutionProvider"]})


def test_cuda_libraries_preloaded_once_with_the_output_logged(monkeypatch, caplog):
    """Without the CUDA libraries on the loader path, the engine asks onnxruntime-gpu to load them from
    the nvidia-* pip packages (onnxruntime.preload_dlls) once per process, and logs what it printed."""
    import onnxruntime as ort

    from inspector.engine.runtime import session

    calls = []

    def fake_preload(**kwargs):
        calls.append(kwargs)
        print("Failed to load libcudnn.so.9: not found")

    monkeypatch.setattr(ort, "preload_dlls", fake_preload, raising=False)
    monkeypatch.setattr(session, "cuda_libraries", lambda: {"libcudart.so.13": True, "libcudnn.so.9": False})
    monkeypatch.setattr(session, "_preloaded", False)
    with caplog.at_level("WARNING", logger="inspector.engine.runtime.session"):
        session.preload_cuda_libraries()
        session.preload_cuda_libraries()
    assert calls == [{"msvc": False}]
    assert any("Failed to load libcudnn.so.9" in r.getMessage() for r in caplog.records)


def test_cuda_options_float32_sessions_default_to_no_tf32(monkeypatch):
    """use_tf32=0 on float32 sessions (TF32 visibly moved maps on an H100), not on the float16 sampler;
    the config's cuda_options win."""
    import onnxruntime as ort

    from inspector.config import RuntimeConfig
    from inspector.engine.runtime import session

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(session, "_preloaded", True)
    cfg = RuntimeConfig(providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
                        cuda_options={"prefer_nhwc": 1})
    assert session.resolve_providers(cfg) == [("CUDAExecutionProvider", {"use_tf32": "0", "prefer_nhwc": 1}),
                                              "CPUExecutionProvider"]
    assert session.resolve_providers(cfg, fp32=False)[0] == ("CUDAExecutionProvider", {"prefer_nhwc": 1})
    mine = RuntimeConfig(providers=("CUDAExecutionProvider",), cuda_options={"use_tf32": 1})
    assert session.resolve_providers(mine)[0] == ("CUDAExecutionProvider", {"use_tf32": 1})


def example_config(**preprocess) -> dict:
    """The bundled example's config as a dict (CPU, absolute model path), preprocess keys overridden."""
    import yaml

    from inspector.demo import example_dir

    with open(f"{example_dir()}/config.yaml") as f:
        raw = yaml.safe_load(f)
    raw.update(model=os.path.join(example_dir(), raw["model"]), runtime=CPU)
    raw["preprocess"] = {**raw["preprocess"], **preprocess}
    return raw


@pytest.mark.parametrize("preprocess", [{}, {"input_dtype": "uint16", "scale": 1.0 / 65535},
                                        {"input_dtype": "float", "scale": 1.0}])
def test_warm_up_explains_a_noise_image_of_the_configured_dtype(preprocess):
    assert Inspector.from_options(**example_config(**preprocess)).warm_up() > 0


def test_sampler_matmuls_multiply_matrices_only():
    """Every MatMul the sampler adds has two 2-D operands: onnxruntime 1.31 (not 1.32, which CI runs)
    refuses a batched MatMul over an empty batch, which a block with no map in a chunk produces."""
    from onnx import shape_inference

    from inspector.demo import example_dir
    from onnx_tools import build_sampler

    model = onnx.load(os.path.join(example_dir(), "defect_resnet.sise.onnx"))
    for fp16 in (False, True):
        graph = shape_inference.infer_shapes(build_sampler(model, fp16=fp16)).graph
        ranks = {v.name: len(v.type.tensor_type.shape.dim)
                 for v in [*graph.value_info, *graph.input, *graph.output]
                 if v.type.tensor_type.HasField("shape")}
        ranks.update({t.name: len(t.dims) for t in graph.initializer})
        matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.name.startswith("sampler/")]
        assert len(matmuls) >= 2 * 5 + 1  # two per block for upsampling, one for the layer maps
        assert all(ranks[i] == 2 for n in matmuls for i in n.input), [(n.name, [ranks[i] for i in n.input])
                                                                        for n in matmuls]


@pytest.mark.parametrize("preprocess", [{"input_dtype": "uint16", "scale": 1.0 / 65535},
                                        {"input_dtype": "float", "scale": 1.0}])
def test_doctor_self_test_feeds_the_configured_dtype(preprocess):
    """The doctor's self-test image (uint8 RGB from inspector.quality.synthetic) is converted like
    warm_up's."""
    from inspector.config import config_from_dict
    from inspector.doctor import self_test

    provider, seconds, summary = self_test(config_from_dict(example_config(**preprocess)))
    assert provider == "CPUExecutionProvider" and seconds > 0 and summary.endswith("saliency ok")


def test_doctor_reports_two_onnxruntime_packages_at_once(monkeypatch):
    """`pip install '.[gpu]'` into an environment that has `.[cpu]` leaves onnxruntime and onnxruntime-gpu
    side by side, sharing one module: doctor says so, with the fix, and exits 1 (it did not notice)."""
    import importlib.metadata as md

    from inspector import doctor

    real = md.version
    monkeypatch.setattr(doctor.md, "version",
                        lambda dist: "1.31.1" if dist == "onnxruntime-gpu" else real(dist))
    lines: list[str] = []
    assert doctor.run_doctor(None, out=lines.append) == 1
    problem = [line for line in lines if "onnxruntime packages are installed at once" in line]
    assert len(problem) == 1 and "pip uninstall -y onnxruntime-gpu onnxruntime" in problem[0], lines
    monkeypatch.setattr(doctor.md, "version", real)
    lines.clear()
    assert doctor.run_doctor(None, out=lines.append) == 0, lines  # one package: all good
