"""The rewritten model as a whole: checker, untouched original outputs, contract, idempotence,
explicit blocks and the errors for models the export cannot handle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inspector.engine.inspector import Inspector
from onnx_tools import export_model, read_contract
from onnx_tools.errors import AlreadyExportedError, BlockDiscoveryError, ModelInputError, UnsupportedOpError

from .conftest import rel_err, run_model

CPU = {"providers": ["CPUExecutionProvider"]}

torch = pytest.importorskip("torch")
from .models import export_onnx, fixture


@pytest.fixture(scope="module")
def resnet18_onnx():
    model, _, shape = fixture("resnet18")
    return export_onnx(model, shape)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "densenet"])
def test_original_outputs_are_unchanged(name):
    """Bit-identical with graph optimisations off, basic and extended. At ORT_ENABLE_ALL the NCHWc
    layout transformer picks other kernels once block activations are graph outputs, so the original
    outputs may differ in the last bits (seen: 2.4e-7 relative); allow 1e-6."""
    model, _, shape = fixture(name)
    original = export_onnx(model, shape)
    exported = export_model(original).model
    onnx.checker.check_model(exported, full_check=True)
    x = np.random.default_rng(0).standard_normal((3, *shape[1:])).astype(np.float32)
    target = np.zeros((3, 10), np.float32)
    for level in ("disable", "basic", "extended", "all"):
        before = run_model(original, {"image": x}, level=level)
        after = run_model(exported, {"image": x, "sise_target": target}, level=level)
        for out_name, value in before.items():
            if level == "all":
                assert rel_err(after[out_name], value) <= 1e-6, out_name
            else:
                assert np.array_equal(after[out_name], value), (out_name, level)
    # the interface the user had is still there, unchanged
    assert [vi for vi in exported.graph.input if vi.name == "image"] == [original.graph.input[0]]
    assert list(exported.graph.output)[: len(original.graph.output)] == list(original.graph.output)


def test_contract_is_recorded(resnet18_onnx):
    result = export_model(resnet18_onnx, score="sigmoid")
    c = read_contract(result.model)
    assert c == result.contract
    assert (c.input_name, c.input_layout, c.output_name, c.num_classes, c.score) == (
        "image", "NCHW", "logits", 10, "sigmoid")
    assert c.input_shape == ("N", 3, 64, 64)
    assert [b.act_output for b in c.blocks] == [f"sise/act/{i}" for i in range(5)]
    assert [b.grad_output for b in c.blocks] == [f"sise/grad/{i}" for i in range(5)]
    assert [b.range_output for b in c.blocks] == [f"sise/range/{i}" for i in range(5)]
    assert ([b.shape[1:] for b in c.blocks]
            == [(16, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)])
    outputs = {vi.name for vi in result.model.graph.output}
    assert {b.act_output for b in c.blocks} | {b.grad_output for b in c.blocks} <= outputs
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    outs = run_model(result.model, {"image": x, "sise_target": np.zeros((2, 10), np.float32)})
    for b in c.blocks:  # per-channel spatial range of each activation
        act = outs[b.act_output]
        np.testing.assert_allclose(outs[b.range_output], act.max((2, 3)) - act.min((2, 3)), rtol=1e-6)


def test_nhwc_layout_is_recorded():
    model, _, shape = fixture("resnet18-nhwc")
    c = export_model(export_onnx(model, shape)).contract
    assert c.input_layout == "NHWC" and c.input_shape[1:] == (64, 64, 3)


def test_exporting_an_exported_model_is_a_clear_error(resnet18_onnx):
    once = export_model(resnet18_onnx).model
    with pytest.raises(AlreadyExportedError, match="already a SISE export"):
        export_model(once)


def test_explicit_blocks_override_discovery(resnet18_onnx):
    auto = export_model(resnet18_onnx).contract
    chosen = [auto.blocks[3].tensor, auto.blocks[1].tensor]  # given deep-first on purpose
    c = export_model(resnet18_onnx, blocks=chosen).contract
    assert [b.tensor for b in c.blocks] == [auto.blocks[1].tensor, auto.blocks[3].tensor]
    with pytest.raises(BlockDiscoveryError, match="no tensor named 'nope'"):
        export_model(resnet18_onnx, blocks=["nope"])
    with pytest.raises(BlockDiscoveryError, match="rank-4"):
        export_model(resnet18_onnx, blocks=["logits"])


def _graph(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # what exporters write for opset 17; onnx's newest IR needs onnxruntime >= 1.32
    return model


def _image(name="x", shape=(1, 3, 8, 8)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def test_no_block_found_names_the_option():
    w = numpy_helper.from_array(np.ones((192, 4), np.float32), "w")
    model = _graph([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])],
                   [_image()], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    with pytest.raises(BlockDiscoveryError, match="--blocks"):
        export_model(model)


def test_every_unsupported_op_is_listed():
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    fc = numpy_helper.from_array(np.ones((4, 2), np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("LpNormalization", ["c"], ["l"], axis=1, name="lp_a"),
             helper.make_node("Sin", ["l"], ["a"], name="sin_b"),
             helper.make_node("Conv", ["a", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    w2 = numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w2")
    model = _graph(nodes, [_image()], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                   [w, w2, fc])
    with pytest.raises(UnsupportedOpError) as err:
        export_model(model, blocks=["c"])
    msg = str(err.value)
    assert "'lp_a' (LpNormalization, opset 17)" in msg and "'sin_b' (Sin, opset 17)" in msg
    assert "--blocks" in msg and "onnx_tools inspect" in msg  # the way out


def test_shape_subgraphs_carry_no_gradient():
    """A Reshape whose target shape is computed from the image (Shape -> Gather -> Concat) exports, and
    the shape path is not differentiated."""
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(np.random.default_rng(1).standard_normal((256, 3)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Concat", ["n", "minus1"], ["target_shape"], axis=0),
             helper.make_node("Reshape", ["r", "target_shape"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    inits = [w, fc, numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    model = _graph(nodes, [x_info], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    result = export_model(model, score="logit")
    assert [b.tensor for b in result.contract.blocks] == ["r"]
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    target = np.array([[1, 0, 0], [0, 0, 1]], np.float32)
    outs = run_model(result.model, {"x": x, "sise_target": target})
    # d(y_c)/d(r) = fc[:, c] reshaped to (4, 8, 8); its spatial mean per channel
    expected = np.stack([fc_col.reshape(4, 8, 8).mean((1, 2)) for fc_col in
                         numpy_helper.to_array(fc).T[[0, 2]]])
    np.testing.assert_allclose(outs["sise/grad/0"], expected, rtol=1e-5, atol=1e-7)


def test_dims_written_as_minus_one_are_dynamic(tmp_path):
    """PaddlePaddle writes a dynamic batch as ``dim_value: -1`` (some converters write 0), on inputs,
    outputs and value_info: the export reads them as dynamic dims, keeps the original output, and its
    gradient is the hand-computed one (GAP then a linear layer: d y_c / d r = fc[:, c] / (H W) per
    channel)."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    fc_values = rng.standard_normal((4, 2)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    model = _graph(nodes, [_image(shape=(-1, 3, 8, 8))],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 2])],
                   [w, numpy_helper.from_array(fc_values, "fc")])
    model.graph.value_info.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [0, 4, 8, 8]))
    original = model.SerializeToString()
    result = export_model(model, score="logit")
    assert model.SerializeToString() == original  # the caller's model is left alone
    assert result.contract.input_shape == ("N", 3, 8, 8) and result.contract.num_classes == 2
    assert [b.tensor for b in result.contract.blocks] == ["r"]
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)  # a batch of 3 runs
    target = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    outs = run_model(result.model, {"x": x, "sise_target": target})
    np.testing.assert_array_equal(outs["y"], run_model(model, {"x": x})["y"])
    np.testing.assert_allclose(outs["sise/grad/0"], fc_values.T[[0, 1, 0]] / 64, rtol=1e-6, atol=1e-8)
    # the engine exports such a plain model on the fly and explains with batched sampling
    onnx.save(model, tmp_path / "paddle_style.onnx")
    insp = Inspector.from_options(model=str(tmp_path / "paddle_style.onnx"), runtime=CPU, preprocess={
        "resize": "stretch", "scale": 1.0, "mean": [0.0], "std": [1.0], "input_dtype": "float"})
    assert insp.method.chunk_size > 1  # no fall-back to one mask at a time
    exp = insp.explain(rng.standard_normal((8, 8, 3)).astype(np.float32))
    assert exp.saliency.shape == (8, 8) and np.isfinite(exp.saliency).all()


def _size_agnostic_model(dims):
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    scores = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    return _graph(nodes, [_image(shape=dims)], [scores], [w, fc])


def test_a_plain_model_with_dynamic_size_is_exported_at_the_configured_size(tmp_path):
    """The engine's on-the-fly export of a model with dynamic height and width uses preprocess.size, in the
    input's layout; without it, one error line says which key to set."""
    path = tmp_path / "any_size.onnx"
    onnx.save(_size_agnostic_model(["N", 3, "H", "W"]), path)
    pre = {"resize": "stretch", "scale": 1.0, "mean": [0.0], "std": [1.0], "input_dtype": "float"}
    insp = Inspector.from_options(model=str(path), runtime=CPU, preprocess={**pre, "size": [16, 24]})
    assert insp.contract.input_shape == ("N", 3, 16, 24) and insp.size == (16, 24)
    exp = insp.explain(np.random.default_rng(6).standard_normal((32, 48, 3)).astype(np.float32))
    assert exp.saliency.shape == (16, 24) and exp.saliency_full.shape == (32, 48)
    other = Inspector.from_options(model=str(path), runtime=CPU, preprocess={**pre, "size": [8, 8]})
    assert other.contract.input_shape == ("N", 3, 8, 8)  # another size is another cached export
    from inspector.errors import ModelContractError
    with pytest.raises(ModelContractError, match=r"set preprocess.size: \[H, W\]"):
        Inspector.from_options(model=str(path), runtime=CPU, preprocess=pre)


def _nhwc_through_cast():
    """A TensorFlow-style model re-exported from PyTorch: NHWC uint8 input -> Cast -> scale -> Transpose
    -> Conv -> Relu -> GAP -> Flatten -> MatMul."""
    rng = np.random.default_rng(8)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "k")]
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xf", "k"], ["xs"]),
             helper.make_node("Transpose", ["xs"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12, 16, 3])
    return _graph(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)


def test_nhwc_behind_a_cast_is_found_and_can_be_stated():
    """The layout is read through Cast/Mul preprocessing up to the Transpose (the first reader is a Cast);
    --layout states it; a block named in its channels-last form is refused with the way to the right one."""
    model = _nhwc_through_cast()
    result = export_model(model, score="logit")
    assert result.contract.input_layout == "NHWC"
    assert [(b.tensor, b.shape[1:]) for b in result.contract.blocks] == [("r", (4, 12, 16))]
    x = np.random.default_rng(9).integers(0, 256, (2, 12, 16, 3)).astype(np.float32)
    outs = run_model(result.model, {"x": x, "sise_target": np.array([[1, 0], [0, 1]], np.float32)})
    np.testing.assert_array_equal(outs["y"], run_model(model, {"x": x})["y"])
    assert export_model(model, score="logit", layout="NHWC").contract.input_layout == "NHWC"
    with pytest.raises(ModelInputError, match="--layout NWHC: use NCHW or NHWC"):
        export_model(model, layout="NWHC")
    with pytest.raises(BlockDiscoveryError, match=r"'xs' .* looks channels-last"):
        export_model(model, blocks=["xs"])


def test_the_engine_explains_an_nhwc_model_behind_a_cast(tmp_path):
    onnx.save(_nhwc_through_cast(), tmp_path / "tf_style.onnx")
    raw_pixels = {"scale": 1.0, "mean": [0.0], "std": [1.0]}
    insp = Inspector.from_options(model=str(tmp_path / "tf_style.onnx"), runtime=CPU,
                                  export={"score": "logit"}, preprocess=raw_pixels)
    assert insp.contract.input_layout == "NHWC" and insp.size == (12, 16)
    exp = insp.explain(np.random.default_rng(10).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    assert exp.saliency.shape == (12, 16) and exp.saliency_full.shape == (24, 32)


@pytest.mark.parametrize("fc_value, expect", [(0.0, "every block's gradient is zero"),
                                              (1e9, "gradients up to"),
                                              (float("nan"), "not finite")])
def test_degenerate_models_are_reported_at_load(tmp_path, caplog, fc_value, expect):
    """A model whose gradients are all zero (a constant head), astronomically large, or not finite: a
    warning when it is loaded (an error for non-finite), naming the model and what to check."""
    model = _size_agnostic_model(["N", 3, 8, 8])
    fc = next(t for t in model.graph.initializer if t.name == "fc")
    fc.CopyFrom(numpy_helper.from_array(np.full((4, 2), fc_value, np.float32), "fc"))
    path = tmp_path / "degenerate.onnx"
    onnx.save(model, path)
    options = {"model": str(path), "runtime": CPU, "export": {"score": "logit"},
               "preprocess": {"scale": 1.0, "mean": [0.0], "std": [1.0]}}
    from inspector.errors import ModelContractError
    if np.isnan(fc_value):
        with pytest.raises(ModelContractError, match=expect):
            Inspector.from_options(**options)
        return
    with caplog.at_level("WARNING", logger="inspector.engine.inspector"):
        Inspector.from_options(**options)
    said = [r.getMessage() for r in caplog.records if r.name == "inspector.engine.inspector"]
    assert any(expect in m and "degenerate." in m for m in said), said


def test_a_sound_model_loads_without_gradient_warnings(tmp_path, caplog):
    path = tmp_path / "sound.onnx"
    onnx.save(_size_agnostic_model(["N", 3, 8, 8]), path)
    with caplog.at_level("WARNING", logger="inspector.engine.inspector"):
        insp = Inspector.from_options(model=str(path), runtime=CPU, export={"score": "logit"})
    assert insp.gradient_problems() == []
    assert not [r for r in caplog.records if r.name == "inspector.engine.inspector"]


def _batch_one_model(x_batch=1, mix_batch=False):
    """Conv -> Relu -> GAP -> Reshape to a constant [1, 4] -> MatMul: a batch of one written into the graph
    (``x_batch`` 1: declared too; "N": declared dynamic but baked in). ``mix_batch``: the features are
    centred over the batch, so images influence each other."""
    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.array([1, 4], np.int64), "flat")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Reshape", ["p", "flat"], ["f"], name="flatten_to_1x4")]
    if mix_batch:
        nodes += [helper.make_node("ReduceMean", ["f"], ["m"], axes=[0], keepdims=1),
                  helper.make_node("Sub", ["f", "m"], ["f2"]), helper.make_node("Add", ["f2", "f"], ["f3"])]
    nodes.append(helper.make_node("MatMul", ["f3" if mix_batch else "f", "fc"], ["y"]))
    model = _graph(nodes, [_image(shape=(x_batch, 3, 8, 8))],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x_batch, 2])], inits)
    return model


@pytest.mark.parametrize("x_batch", [1, "N"])
def test_a_batch_of_one_is_freed_when_that_is_safe(tmp_path, x_batch):
    """A fixed batch of 1 (declared, or baked into a Reshape of a 'dynamic' model) is freed: the export
    takes any batch and gives each image what the original gives it alone; the engine then scores many
    masks per run."""
    model = _batch_one_model(x_batch)
    result = export_model(model, score="logit")
    assert result.contract.input_shape[0] == "N"
    x = np.random.default_rng(12).standard_normal((3, 3, 8, 8)).astype(np.float32)
    together = run_model(result.model, {"x": x, "sise_target": np.eye(2, dtype=np.float32)[[0, 1, 0]]})["y"]
    for k in range(3):
        np.testing.assert_allclose(together[k:k + 1], run_model(model, {"x": x[k:k + 1]})["y"], rtol=1e-5)
    onnx.save(model, tmp_path / "batch_one.onnx")
    raw_pixels = {"scale": 1.0, "mean": [0.0], "std": [1.0]}
    insp = Inspector.from_options(model=str(tmp_path / "batch_one.onnx"), runtime=CPU,
                                  export={"score": "logit"}, preprocess=raw_pixels)
    assert insp.method.chunk_size > 1
    assert np.isfinite(insp.explain(np.zeros((8, 8, 3), np.uint8)).saliency).all()
    kept = export_model(model, score="logit", keep_batch=True)  # --keep-batch
    assert kept.contract.input_shape[0] == x_batch


def test_a_batch_of_one_stays_when_images_would_mix():
    """A model whose images influence each other at a batch of several keeps its batch of 1, and the note
    says why (the export logs it as a warning)."""
    from onnx_tools.rebatch import rebatch

    model = _batch_one_model(1, mix_batch=True)
    kept = rebatch(model)
    assert not kept.changed and kept.model is model
    assert kept.note.startswith("the batch stays fixed") and "differ" in kept.note
    freed = rebatch(_batch_one_model(1))
    assert freed.changed and "Reshape 'flatten_to_1x4' target [1, 4]" in freed.note


def test_a_model_that_fails_at_a_batch_of_several_is_one_clear_error(tmp_path):
    """A 'dynamic' batch baked into a Reshape, exported with --keep-batch: onnxruntime fails when the
    engine scores masks in chunks (RISE: 16 per run). explain() raises one ModelRunError naming the way
    out (the record path keeps any explain() error as that image's failure)."""
    from inspector.errors import ModelRunError

    kept = export_model(_batch_one_model("N"), score="logit", keep_batch=True)
    onnx.save(kept.model, tmp_path / "baked.sise.onnx")
    insp = Inspector.from_options(model=str(tmp_path / "baked.sise.onnx"), runtime=CPU,
                                  preprocess={"scale": 1.0, "mean": [0.0], "std": [1.0]},
                                  method={"name": "rise", "rise": {"masks": 16, "grid": 2}})  # 16 per run
    with pytest.raises(ModelRunError, match=r"at a batch of several: export the original model again"):
        insp.explain(np.zeros((8, 8, 3), np.uint8))


def test_new_builders_inside_a_whole_model_match_float64_finite_differences():
    """A small CNN using the builders added for third-party models (reflect Pad, LRN, Gelu, Elu, Max,
    Softplus) between its blocks and its logits: each block's exported per-channel gradient equals float64
    finite differences of the model's own tail (onnx's reference evaluator)."""
    from .gradcheck import channel_gradient_fd64

    rng = np.random.default_rng(21)
    w = lambda *s: numpy_helper.from_array((rng.standard_normal(s) * 0.4).astype(np.float32))
    inits = []
    for name, shape in (("w0", (6, 3, 3, 3)), ("w1", (6, 6, 3, 3)), ("w2", (6, 6, 3, 3)), ("fc", (6, 4))):
        t = w(*shape)
        t.name = name
        inits.append(t)
    inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["b0"]),  # block 0
             helper.make_node("Pad", ["b0", "pads"], ["p0"], mode="reflect"),
             helper.make_node("Conv", ["p0", "w1"], ["c1"], strides=[2, 2]),
             helper.make_node("LRN", ["c1"], ["l1"], size=3, alpha=0.3, beta=0.75, bias=1.5),
             helper.make_node("Gelu", ["l1"], ["b1"]),  # block 1
             helper.make_node("Conv", ["b1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Elu", ["c2"], ["e2"], alpha=0.8),
             helper.make_node("Softplus", ["b1"], ["s1"]),
             helper.make_node("Max", ["e2", "s1"], ["m2"]),
             helper.make_node("GlobalAveragePool", ["m2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    model = _graph(nodes, [_image(shape=("N", 3, 10, 10))],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits, opset=20)
    result = export_model(model, score="logit", blocks=["b0", "b1"])
    x = rng.standard_normal((1, 3, 10, 10)).astype(np.float32)
    for target in (0, 3):
        outs = run_model(result.model, {"x": x, "sise_target": np.eye(4, dtype=np.float32)[[target]]})
        for i, block in enumerate(("b0", "b1")):
            check = channel_gradient_fd64(model, block, "y", outs[f"sise/act/{i}"], target)
            for fd, predicted in check(outs[f"sise/grad/{i}"][0].astype(np.float64)):
                assert abs(fd - predicted) <= 1e-4 * max(1.0, abs(fd)), (block, target, fd, predicted)


def test_the_float64_reference_ops_agree_with_onnxruntime():
    """The float64 finite differences above evaluate LRN and Gelu with implementations written from the
    ONNX spec (onnx's reference evaluator departs from it for LRN); they agree with onnxruntime."""
    from onnx.reference import ReferenceEvaluator

    from .gradcheck import _spec_ops

    x = np.random.default_rng(22).standard_normal((2, 7, 3, 4)).astype(np.float32)
    cases = (("LRN", {"size": 5, "alpha": 0.3, "beta": 0.6, "bias": 1.2}, 17), ("Gelu", {}, 20))
    for op, attrs, opset in cases:
        model = _graph([helper.make_node(op, ["x"], ["y"], **attrs)], [_image(shape=x.shape)],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)], opset=opset)
        spec = ReferenceEvaluator(model, new_ops=_spec_ops()).run(None, {"x": x})[0]
        np.testing.assert_allclose(spec, run_model(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)


def test_changing_the_export_settings_exports_again(tmp_path):
    """The on-the-fly export is cached beside the plain model per export setting: another export.score is
    another exported file with that score, never the old export reused."""
    path = tmp_path / "plain.onnx"
    onnx.save(_size_agnostic_model(["N", 3, 8, 8]), path)
    for score in ("softmax", "logit", "softmax"):
        insp = Inspector.from_options(model=str(path), runtime=CPU, export={"score": score})
        assert insp.contract.score == score
    assert len(list(tmp_path.glob("plain.*.sise.onnx"))) == 2
