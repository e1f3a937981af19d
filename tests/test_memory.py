"""Memory: the shared, memory-mapped weights file of a large model and the chunk size from a memory budget."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inspector import Inspector
from inspector.common.atomic import PART_SUFFIX, open_atomic
from inspector.engine.runtime import weights
from inspector.engine.runtime.memory import MAX_CHUNK, PER_MASK_FACTOR, chunk_for_budget, largest_tensor_bytes
from inspector.errors import ConfigError

from .test_engine import CPU, IDENTITY_PREPROCESS, check_against_reference, smooth_image

pytest.importorskip("torch")


def engine(path, **method) -> Inspector:
    return Inspector.from_options(model=path, preprocess=IDENTITY_PREPROCESS, method=method, runtime=CPU)


@pytest.fixture
def mapped(monkeypatch):
    """Every model counts as large: its weights go to the shared file."""
    monkeypatch.setattr(weights, "MIN_MODEL_BYTES", 0)


def test_weights_file_holds_every_large_initializer_at_its_offset(exported, mapped, tmp_path):
    _, _, _, source = exported("resnet18")
    path = str(tmp_path / "m.sise.onnx")
    with open(source, "rb") as f, open(path, "wb") as g:
        g.write(f.read())
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    insp = engine(path, chunk_size=16)
    assert insp.model.weights_folder == str(tmp_path)
    files = [n for n in os.listdir(tmp_path) if n.endswith(".weights")]
    assert files == [f"m.sise.{insp.model.sha256[:12]}.weights"]
    data = (tmp_path / files[0]).read_bytes()
    explain = onnx.load_from_string(insp.model.explain_bytes)
    external = [t for t in explain.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert len(external) >= 20  # the convolutions' weights
    for t in external:
        info = {e.key: e.value for e in t.external_data}
        offset, length = int(info["offset"]), int(info["length"])
        assert info["location"] == files[0] and offset % weights.ALIGN == 0
        expected = original[t.name]
        got = np.frombuffer(data[offset:offset + length], expected.dtype).reshape(expected.shape)
        np.testing.assert_array_equal(got, expected)
    large = {n for n, a in original.items() if a.nbytes >= weights.MIN_TENSOR_BYTES}
    for graph in (explain, onnx.load_from_string(insp.model.sampler_bytes),
                  onnx.load_from_string(insp.model.scorer_bytes)):
        kept = {t.name for t in graph.graph.initializer if t.data_location != TensorProto.EXTERNAL}
        assert not kept & large  # the model's weights only in the file (the sampler adds small constants)


def test_mapped_weights_explain_as_the_pytorch_reference(exported, mapped):
    model, taps, shape, path = exported("resnet50")
    assert engine(path, chunk_size=16).model.weights_folder is not None
    check_against_reference(model, taps, path, smooth_image(shape, seed=2), chunk_size=16)


def test_mapped_weights_change_no_map(exported, monkeypatch):
    _, _, shape, path = exported("resnet18")
    image = smooth_image(shape, seed=5)
    kept = engine(path, chunk_size=16)
    monkeypatch.setattr(weights, "MIN_MODEL_BYTES", 0)
    shared = engine(path, chunk_size=16)
    assert kept.model.weights_folder is None and shared.model.weights_folder is not None
    a, b = kept.explain(image), shared.explain(image)
    assert a.masks_per_layer == b.masks_per_layer
    np.testing.assert_allclose(b.layer_maps, a.layer_maps, atol=1e-5)
    np.testing.assert_allclose(b.saliency, a.saliency, atol=1e-5)
    masks = np.random.default_rng(0).random((3, *shape[2:]), dtype=np.float32)  # the mask scorer (RISE)
    np.testing.assert_allclose(shared.score_masks(shared.prepare(image)[0], masks, 1),
                               kept.score_masks(kept.prepare(image)[0], masks, 1), rtol=1e-5)


def test_weights_file_is_written_once_and_a_damaged_one_again(exported, mapped, tmp_path):
    _, _, shape, source = exported("resnet18")
    path = str(tmp_path / "m.sise.onnx")
    with open(source, "rb") as f, open(path, "wb") as g:
        g.write(f.read())
    first = engine(path, chunk_size=8)
    image = smooth_image(shape, seed=1)
    expected = first.explain(image).saliency
    file = weights.weights_path(path, first.model.sha256)
    del first  # its sessions map the file: cutting it under them would be a SIGBUS (the engine never does)
    size, stamp = os.path.getsize(file), os.stat(file).st_mtime_ns
    second = engine(path, chunk_size=8)
    assert os.stat(file).st_mtime_ns == stamp  # reused
    del second
    with open(file, "r+b") as f:
        f.truncate(size // 2)  # damaged (not by the engine: it writes through a temporary file)
    again = engine(path, chunk_size=8)
    assert os.path.getsize(file) == size
    np.testing.assert_allclose(again.explain(image).saliency, expected, atol=1e-6)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(PART_SUFFIX)]


def test_failed_weights_write_leaves_nothing(exported, mapped, tmp_path, monkeypatch, caplog):
    """A full disk in the middle of the file: no weights file, no temporary file, the weights in memory."""
    _, _, shape, source = exported("resnet18")
    path = str(tmp_path / "m.sise.onnx")
    with open(source, "rb") as f, open(path, "wb") as g:
        g.write(f.read())
    calls = {"n": 0}
    real = weights._payload

    def payload_then_full(t):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(t)
    monkeypatch.setattr(weights, "_payload", payload_then_full)
    with caplog.at_level(logging.WARNING):
        insp = engine(path, chunk_size=8)
    assert insp.model.weights_folder is None and "No space left" in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["m.sise.onnx"]
    assert np.isfinite(insp.explain(smooth_image(shape)).saliency).all()


def test_open_atomic_publishes_only_a_complete_file(tmp_path):
    target = tmp_path / "w.bin"
    with pytest.raises(RuntimeError), open_atomic(str(target)) as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    with open_atomic(str(target)) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole" and os.listdir(tmp_path) == ["w.bin"]


def _conv_model() -> onnx.ModelProto:
    """image [N,3,32,32] -> Conv 8 ch (stride 1) [N,8,32,32] -> Conv 16 ch stride 2 [N,16,16,16] -> GAP ->
    logits [N,16]; and a side branch of 40x32x32 that the logits do not depend on (like gradient nodes)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (8, 3, 3, 3)), ("w2", (16, 8, 3, 3)), ("w3", (40, 3, 1, 1)))]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["b"], ["g"]),
             helper.make_node("Flatten", ["g"], ["logits"]),
             helper.make_node("Conv", ["image", "w3"], ["side"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                        ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 16]),
                               helper.make_tensor_value_info("side", TensorProto.FLOAT, ["N", 40, 32, 32])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_largest_tensor_is_the_forward_pass_largest():
    # hand count: a = 8*32*32 floats, b = 16*16*16, the image 3*32*32; the side branch (40*32*32) is not
    # on the way to the logits
    assert largest_tensor_bytes(_conv_model(), ("N", 3, 32, 32), "logits") == 4 * 8 * 32 * 32
    assert largest_tensor_bytes(_conv_model(), ("N", 3, 32, 32), "side") == 4 * 40 * 32 * 32


def test_chunk_for_budget_by_hand():
    assert chunk_for_budget(100, 10 << 20) == 10
    assert chunk_for_budget(100, 11 << 20) == 9
    assert chunk_for_budget(1, 10 << 20) == 1  # never below one mask
    assert chunk_for_budget(100_000, 1 << 20) == MAX_CHUNK


def test_engine_derives_the_chunk_from_the_budget_unless_given(exported):
    _, _, _, path = exported("resnet18")
    insp = engine(path)
    largest = insp.model.largest_tensor_bytes
    assert largest == 4 * 16 * 32 * 32  # resnet18 fixture, 64x64 input: the stem's 16 channels at 32x32
    budget = 3
    tight = Inspector.from_options(model=path, preprocess=IDENTITY_PREPROCESS,
                                   runtime={**CPU, "memory_budget_mb": budget})
    assert tight.method.chunk_size == (budget << 20) // (PER_MASK_FACTOR * largest) == 6
    given = Inspector.from_options(model=path, preprocess=IDENTITY_PREPROCESS, method={"chunk_size": 40},
                                   runtime={**CPU, "memory_budget_mb": budget})
    assert given.method.chunk_size == 40
    image = smooth_image((1, 3, 64, 64), seed=3)
    np.testing.assert_allclose(tight.explain(image).saliency, given.explain(image).saliency, atol=1e-5)


def test_memory_budget_is_checked():
    with pytest.raises(ConfigError, match="runtime.memory_budget_mb: must be >= 1"):
        Inspector.from_options(model="x.onnx", runtime={"memory_budget_mb": 0})
