"""Classifiers a plant may bring that the export once got wrong: ceil-mode pools whose last window
onnxruntime drops, BatchNorm exported in training mode, half- and double-precision models, a single-logit
binary classifier, a fixed batch above 1, opset 7, strided, reversed and cropping slices, tiles,
quantized weights or activations, and ShuffleNet's channel split and shuffle. Each
is either exported right (checked against torch autograd) or refused with one line that names the cause
and the fix."""

from __future__ import annotations

import copy
import io
import itertools
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
nn = torch.nn

from onnx_tools import export_model, precision
from onnx_tools.ceil_pools import sizes
from onnx_tools.errors import ExportError, ModelInputError

from .conftest import rel_err, run_model
from .models import export_onnx, randomize_bn, torch_block_gradients

TOL = 1e-4


class PoolNet(nn.Module):
    """conv -> relu (block) -> pool -> conv -> relu (block) -> mean -> linear."""

    def __init__(self, pool: nn.Module, classes: int = 5):
        super().__init__()
        self.c1, self.r1, self.pool = nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), pool
        self.c2, self.r2, self.fc = nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU(), nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.r2(self.c2(self.pool(self.r1(self.c1(x))))).mean((2, 3)))


def check_against_torch(model: nn.Module, onnx_model: onnx.ModelProto, shape, taps, score="softmax",
                        **options):
    result = export_model(onnx_model, score=score, **options)
    c = result.contract
    assert len(c.blocks) == len(taps), [b.tensor for b in c.blocks]
    x = np.random.default_rng(1).standard_normal((2, *shape[1:])).astype(np.float32)
    target = np.zeros((2, c.num_classes), np.float32)
    target[0, -1] = 1.0
    target[1] = np.random.default_rng(2).uniform(-1, 1, c.num_classes)
    outs = run_model(result.model, {c.input_name: x, c.target_input: target})
    acts, grads = torch_block_gradients(model, taps, x, target, score)
    for b, act, grad in zip(c.blocks, acts, grads):
        assert b.shape[1:] == act.shape[1:], (b.tensor, b.shape, act.shape)  # the contract's shapes too
        assert rel_err(outs[b.act_output], act) <= TOL
        assert rel_err(outs[b.grad_output], grad) <= TOL, (b.tensor, rel_err(outs[b.grad_output], grad))
    return result


def test_ceil_mode_sizes_are_onnxruntimes():
    """sizes()'s third value against the output length onnxruntime itself gives, over 1-D pools."""
    checked = 0
    for op, n, k, s, p in itertools.product(("MaxPool", "AveragePool"), range(3, 12), (2, 3), (2, 3),
                                            (0, 1)):
        if p >= k:
            continue
        node = helper.make_node(op, ["x"], ["y"], kernel_shape=[k], strides=[s], pads=[p, p], ceil_mode=1)
        graph = helper.make_graph([node], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, n])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        length = session.run(None, {"x": np.zeros((1, 1, n), np.float32)})[0].shape[-1]
        assert sizes(n, k, s, 1, p, p)[2] == length, (op, n, k, s, p)
        checked += 1
    assert checked == 144


@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(3, 3, padding=1, ceil_mode=True),
    nn.AvgPool2d(3, 3, padding=1, ceil_mode=True, count_include_pad=True),
    nn.AvgPool2d(3, 3, padding=1, ceil_mode=True, count_include_pad=False),
    nn.MaxPool2d(3, 2, ceil_mode=True),  # a partial last window that is kept: unchanged
], ids=["max", "avg-include-pad", "avg-exclude-pad", "max-partial-kept"])
def test_ceil_mode_pools_match_torch(pool):
    """On 32x32, kernel 3, stride 3, pads 1: onnx's shape inference says 12, torch and onnxruntime 11.
    The export used to build its gradients at 12 and the exported model failed when run."""
    torch.manual_seed(0)
    model = PoolNet(pool).eval()
    result = check_against_torch(model, export_onnx(model, (1, 3, 32, 32)), (1, 3, 32, 32), ["r1", "r2"])
    expected = model.pool(torch.zeros(1, 8, 32, 32)).shape[-1]
    assert result.contract.blocks[1].shape[-1] == expected


def test_a_pool_that_drops_on_one_axis_and_keeps_a_partial_window_on_the_other_is_refused():
    torch.manual_seed(0)
    model = PoolNet(nn.MaxPool2d(3, 3, padding=1, ceil_mode=True)).eval()  # 32: dropped; 33: partial
    with pytest.raises(ModelInputError, match=r"node '.*' \(MaxPool, ceil_mode=1\).*ceil_mode=False"):
        export_model(export_onnx(model, (1, 3, 32, 33)))


def _export_training(model: nn.Module, opset: int) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.train(), (torch.randn(2, 3, 32, 32),), f, dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["logits"], do_constant_folding=False,
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
                          training=torch.onnx.TrainingMode.TRAINING)
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_batchnorm_exported_in_training_mode_is_refused(opset):
    """At opsets 11 and 13 the node carries running-statistics outputs and onnxruntime normalises with
    the batch's statistics: the export took it for eval mode and gave wrong gradients without a word."""
    torch.manual_seed(0)
    model = randomize_bn(PoolNet(nn.Sequential(nn.BatchNorm2d(8), nn.MaxPool2d(2))))
    with pytest.raises(ModelInputError, match=r"BatchNormalization\) was exported in training mode.*eval"):
        export_model(_export_training(model, opset))
    # the same model in eval mode exports and matches torch (the deepest 32x32 tensor is BN's output)
    check_against_torch(model.eval(), export_onnx(model.eval(), (1, 3, 32, 32)), (1, 3, 32, 32),
                        ["pool.0", "r2"])


def _export_in(model: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_model_is_read_in_float32_and_matches_torch(dtype):
    """A model saved in float16 or bfloat16 (input, weights and output) was refused; it is exported as the
    float32 model with the same weights (exact in float32), checked against torch on model.float()."""
    torch.manual_seed(0)
    half = PoolNet(nn.MaxPool2d(2)).eval().to(getattr(torch, dtype))
    onnx_model = _export_in(half, torch.randn(1, 3, 32, 32).to(half.fc.weight.dtype))
    assert onnx_model.graph.input[0].type.tensor_type.elem_type != TensorProto.FLOAT
    result = check_against_torch(half.float(), onnx_model, (1, 3, 32, 32), ["r1", "r2"])
    assert result.model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    half_types = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
    assert not any(t.data_type in half_types for t in result.model.graph.initializer)


def test_a_mixed_precision_model_with_float32_input_and_output_matches_torch():
    """The converters' keep-io-types layout: a float32 image cast to float16, a float16 body, the logits
    cast back to float32. The casts become float32 ones."""

    class CastInside(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = PoolNet(nn.AvgPool2d(2)).eval().half()

        def forward(self, x):
            return self.net(x.half()).float()

    torch.manual_seed(0)
    model = CastInside().eval()
    onnx_model = _export_in(model, torch.randn(1, 3, 32, 32))
    assert any(n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT16 for n in onnx_model.graph.node)
    check_against_torch(model.net.float(), onnx_model, (1, 3, 32, 32), ["r1", "r2"])


def test_a_double_precision_model_is_refused():
    torch.manual_seed(0)
    model = PoolNet(nn.Identity()).eval().double()
    with pytest.raises(ModelInputError, match=r"block '.*' is float64: the engine computes in float32.*"
                                              r"model\.float\(\)"):
        export_model(_export_in(model, torch.randn(1, 3, 32, 32).double()))


def test_half_constants_cast_targets_and_declared_types_become_float32():
    """Every place a half type can hide, in one hand-built graph: a float16 initializer, Constant,
    ConstantOfShape value, Cast target, EyeLike dtype and value_info, also inside an If branch. The
    float32 graph computes what numpy computes from the same (float16-exact) numbers."""
    half = np.array([[0.5, -1.25], [2.0, 0.375]], np.float16)
    k = numpy_helper.from_array(np.array([3.0], np.float16))
    fill = numpy_helper.from_array(np.array([0.25], np.float16))
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float16))),
         helper.make_node("Mul", ["xh", "two"], ["doubled"])], "then", [],
        [helper.make_tensor_value_info("doubled", TensorProto.FLOAT16, [1, 2])])
    other = helper.make_graph([helper.make_node("Identity", ["xh"], ["same"])], "else", [],
                              [helper.make_tensor_value_info("same", TensorProto.FLOAT16, [1, 2])])
    nodes = [
        helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
        helper.make_node("Constant", [], ["k"], value=k),
        helper.make_node("MatMul", ["xh", "w"], ["xw"]),
        helper.make_node("Mul", ["xw", "k"], ["xk"]),
        helper.make_node("ConstantOfShape", ["shape"], ["filled"], value=fill),
        helper.make_node("Add", ["xk", "filled"], ["xf"]),
        helper.make_node("EyeLike", ["w"], ["eye"], dtype=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["xf", "eye"], ["xe"]),
        helper.make_node("If", ["flag"], ["branch"], then_branch=branch, else_branch=other),
        helper.make_node("Add", ["xe", "branch"], ["y16"]),
        helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
                     helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(half, "w"), numpy_helper.from_array(np.array([1, 2], np.int64), "shape")],
        value_info=[helper.make_tensor_value_info("xw", TensorProto.FLOAT16, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert precision.as_float32(model)
    onnx.checker.check_model(model, full_check=True)
    text = str(model)
    assert "FLOAT16" not in text and "data_type: 10" not in text and "elem_type: 10" not in text
    x = np.array([[1.5, -0.75]], np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    w = half.astype(np.float64)
    for flag, branch_factor in ((True, 2.0), (False, 1.0)):
        y = session.run(None, {"x": x, "flag": np.array(flag)})[0]
        expected = (x @ w) * 3.0 + 0.25 + x * branch_factor
        np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert not precision.as_float32(model)  # nothing left to change


def test_a_single_logit_needs_a_sigmoid_score():
    """softmax over one class is 1 whatever the image: every gradient was 0 and every map empty."""
    torch.manual_seed(0)
    model = PoolNet(nn.MaxPool2d(2), classes=1).eval()
    onnx_model = export_onnx(model, (1, 3, 32, 32))
    with pytest.raises(ModelInputError, match=r"'logits' has one class.*--score sigmoid"):
        export_model(onnx_model)
    result = check_against_torch(model, onnx_model, (1, 3, 32, 32), ["r1", "r2"], score="sigmoid")
    assert result.contract.num_classes == 1


def test_a_fixed_batch_above_one_is_named_as_the_cause():
    torch.manual_seed(0)
    model = PoolNet(nn.Identity()).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), f, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"])
    for options in ({}, {"output": "logits"}, {"input_shape": (1, 3, 32, 32)}):
        with pytest.raises(ModelInputError, match=r"input 'image' has a fixed batch of 2.*dynamic_axes"):
            export_model(onnx.load_from_string(f.getvalue()), **options)


def test_an_opset_7_model_is_read_at_opset_9_and_matches_torch():
    """The gradients use Expand (opset 8); an opset-7 model used to end in 'internal error'."""
    rng = np.random.default_rng(0)
    w0, w1 = (rng.standard_normal(s).astype(np.float32) * 0.3 for s in ((8, 3, 3, 3), (8, 8, 3, 3)))
    fc_w = rng.standard_normal((4, 8)).astype(np.float32) * 0.3
    fc_b = rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["b0"]),
             helper.make_node("Conv", ["b0", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["b1"]),
             helper.make_node("GlobalAveragePool", ["b1"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "opset7", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(v, n) for v, n in ((w0, "w0"), (w1, "w1"), (fc_w, "fc_w"), (fc_b, "fc_b"))])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)], ir_version=4)
    onnx.checker.check_model(onnx_model, full_check=True)

    class Same(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.r0 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.ReLU()
            self.c1, self.r1 = nn.Conv2d(8, 8, 3, 2, 1, bias=False), nn.ReLU()
            self.fc = nn.Linear(8, 4)
            for p, v in ((self.c0.weight, w0), (self.c1.weight, w1), (self.fc.weight, fc_w),
                         (self.fc.bias, fc_b)):
                p.data.copy_(torch.from_numpy(v))

        def forward(self, x):
            return self.fc(self.r1(self.c1(self.r0(self.c0(x)))).mean((2, 3)))

    result = check_against_torch(Same().eval(), onnx_model, (1, 3, 16, 16), ["r0", "r1"])
    assert result.contract.source_opset == 9


class NormNet(nn.Module):
    """Blocks followed by the layers a ConvNeXt- or GroupNorm-style net puts on the gradient path, and a
    global max pool written as amax."""

    def __init__(self, norm: str):
        super().__init__()
        self.norm = norm
        self.c1, self.r1 = nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU()
        self.layer_norm, self.group_norm = nn.LayerNorm(8), nn.GroupNorm(4, 8)
        with torch.no_grad():
            for p in (*self.layer_norm.parameters(), *self.group_norm.parameters()):
                p.add_(torch.rand(p.shape) * 0.5)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.r1(self.c1(x))
        if self.norm == "layer":  # over channels, channels-last as ConvNeXt
            y = self.layer_norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        elif self.norm == "group":
            y = self.group_norm(y)
        return self.fc(self.r2(self.c2(y)).amax((2, 3)))


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_layer_and_group_norm_and_an_amax_head_match_torch(norm):
    """LayerNormalization (opset 17), GroupNorm (InstanceNormalization between Reshapes) and ReduceMax
    were refused on the gradient path."""
    torch.manual_seed(0)
    model = NormNet(norm).eval()
    onnx_model = export_onnx(model, (1, 3, 32, 32), opset=17)
    if norm == "layer":  # the last 32x32 activation is the normalised map, transposed back to NCHW
        assert export_model(onnx_model).contract.blocks[0].tensor == "/Transpose_1_output_0"
    # r1 named, so the normalisation lies on the gradient path
    check_against_torch(model, onnx_model, (1, 3, 32, 32), ["r1", "r2"],
                        blocks=["/r1/Relu_output_0", "/r2/Relu_output_0"])


def test_padded_copies_built_from_slice_and_concat_are_not_blocks():
    """Circular padding exports as Slice + Concat: its [.., 34, 32] and [.., 34, 34] copies were taken
    for two more blocks (four for a two-conv net), one pixel off the image when upsampled."""

    class Circular(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.r1 = nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"), nn.ReLU()
            self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, padding_mode="circular")
            self.r2, self.fc = nn.ReLU(), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.r2(self.c2(self.r1(self.c1(x)))).mean((2, 3)))

    torch.manual_seed(0)
    model = Circular().eval()
    result = check_against_torch(model, export_onnx(model, (1, 3, 32, 32)), (1, 3, 32, 32), ["r1", "r2"])
    assert [b.shape[2:] for b in result.contract.blocks] == [(32, 32), (16, 16)]


class HeadNet(nn.Module):
    """Two blocks, then one of: tanh GELU (opset 20 exports it as Gelu), CELU, a pixel shuffle between the
    blocks (DepthToSpace), or a cosine head (F.normalize: ReduceL2, Clip, Expand, Div)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.c1, self.r1 = nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU()
        # after the shuffle (64x64, 4 channels) a stride of 4 gives the second block 16x16
        self.c2 = nn.Conv2d(4, 8, 3, 4, 1) if kind == "pixel_shuffle" else nn.Conv2d(16, 8, 3, 2, 1)
        self.r2 = {"gelu_tanh": nn.GELU(approximate="tanh"), "celu": nn.CELU(0.7)}.get(kind, nn.ReLU())
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.r1(self.c1(x))
        if self.kind == "pixel_shuffle":
            y = nn.functional.pixel_shuffle(y, 2)
        features = self.r2(self.c2(y)).mean((2, 3))
        if self.kind == "cosine":
            return nn.functional.normalize(features, dim=1) @ nn.functional.normalize(self.fc.weight, dim=1).T
        return self.fc(features)


@pytest.mark.parametrize("kind", ["gelu_tanh", "celu", "pixel_shuffle", "cosine"])
def test_more_layers_on_the_gradient_path_match_torch(kind):
    torch.manual_seed(0)
    model = HeadNet(kind).eval()
    shape = (1, 3, 32, 32)
    check_against_torch(model, export_onnx(model, shape, opset=20), shape, ["r1", "r2"])


class Unsupported(nn.Module):
    """A layer without a gradient builder (Atan) either in the head, after every block, or in the body,
    with a block tensor after it."""

    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.c1, self.r1 = nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(8, 8, 3, 4 if where == "body" else 2, 1), nn.ReLU()
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        y = self.r1(self.c1(x))
        if self.where == "body":
            y = torch.atan(nn.functional.interpolate(y, scale_factor=2))  # 64x64, then a conv to 16x16
        logits = self.fc(self.r2(self.c2(y)).mean((2, 3)))
        return torch.atan(logits) if self.where == "head" else logits


def test_the_refusal_says_whether_naming_blocks_can_avoid_the_layer():
    torch.manual_seed(0)
    head = export_onnx(Unsupported("head").eval(), (1, 3, 32, 32))
    with pytest.raises(ExportError, match=r"Atan.*no block can be named after '/Atan'.*every block's "):
        export_model(head)
    body = export_onnx(Unsupported("body").eval(), (1, 3, 32, 32))
    with pytest.raises(ExportError, match=r"Atan.*name such block tensors with --blocks") as refused:
        export_model(body)
    assert "no block can be named" not in str(refused.value)


def test_a_head_that_keeps_some_classes_matches_torch():
    """logits[:, [0, 2, 4, 2]] exports as a Gather, which was refused."""

    class Subset(PoolNet):
        def forward(self, x):
            return super().forward(x)[:, [0, 2, 4, 2]]

    torch.manual_seed(0)
    model = Subset(nn.MaxPool2d(2)).eval()
    check_against_torch(model, export_onnx(model, (1, 3, 32, 32)), (1, 3, 32, 32), ["r1", "r2"])


class Mover(nn.Module):
    """Between two blocks: a YOLOv5-style Focus (strided slices, steps of 2), a flip (a slice with step -1),
    a pad that crops (negative pads); in the head a repeat (Tile), a strided slice and a reversed gather."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, width, 3, 1, 1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(8 * width, 2 * width, 3, 1, 1), nn.ReLU()
        self.fc = nn.Linear(2 * width, 5)
        self.reversed = torch.arange(2 * width - 1, -1, -1)

    def forward(self, x):
        y = self.r1(self.c1(x))
        y = torch.cat([y[..., ::2, ::2], y[..., 1::2, ::2], y[..., ::2, 1::2], y[..., 1::2, 1::2]], 1)
        y = nn.functional.pad(torch.cat([y, torch.flip(y, [3])], 1), (-1, 1, 2, -2))
        z = self.r2(self.c2(y)).mean((2, 3))
        return self.fc(z.repeat(1, 2)[:, ::2] * 0.5 + z[:, self.reversed].flip(1) * 0.5)


@pytest.mark.parametrize("opset", [11, 17])
def test_strided_and_reversed_slices_tiles_and_cropping_pads_match_torch(opset):
    """Slice with steps other than 1, Tile and Pad with negative pads were refused on the gradient path."""
    torch.manual_seed(0)
    model = Mover().eval()
    result = check_against_torch(model, export_onnx(model, (1, 3, 32, 32), opset=opset), (1, 3, 32, 32),
                                 ["r1", "r2"])
    assert [b.shape[2:] for b in result.contract.blocks] == [(32, 32), (16, 16)]


def test_the_engine_explains_a_newly_covered_model_as_the_torch_sise(tmp_path):
    """End to end: a ceil-mode pool, LayerNorm and an amax head in one model, explained by
    the engine and by the PyTorch SISE of tests/sise_reference.py."""
    from .test_engine import check_against_reference, smooth_image

    class Covered(NormNet):
        def __init__(self):
            super().__init__("layer")
            self.pool = nn.MaxPool2d(3, 3, padding=1, ceil_mode=True)

        def forward(self, x):
            y = self.pool(self.r1(self.c1(x)))  # 32x32 -> 11x11, onnxruntime's size
            y = self.layer_norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return self.fc(self.r2(self.c2(y)).amax((2, 3)))

    torch.manual_seed(0)
    model = Covered().eval()
    path = tmp_path / "covered.sise.onnx"
    onnx.save(export_model(export_onnx(model, (1, 3, 32, 32))).model, path)
    _, counts = check_against_reference(model, ["r1", "r2"], str(path), smooth_image((1, 3, 32, 32)))
    assert sum(counts) > 4


def test_the_engine_explains_a_half_precision_model_with_strided_slices_as_the_torch_sise(tmp_path):
    """End to end: the Mover model (Focus slices, flip, cropping pad, Tile) saved in float16, exported
    and explained by the engine, against the PyTorch SISE of the float32 model with the same weights."""
    from .test_engine import check_against_reference, smooth_image

    torch.manual_seed(0)
    half = Mover(width=16).eval().half()
    path = tmp_path / "mover.sise.onnx"
    onnx.save(export_model(_export_in(half, torch.randn(1, 3, 32, 32).half())).model, path)
    _, counts = check_against_reference(half.float(), ["r1", "r2"], str(path), smooth_image((1, 3, 32, 32)))
    assert sum(counts) > 12, counts  # a real run, not one or two maps


def _weights_quantized(onnx_model: onnx.ModelProto, model: nn.Module) -> onnx.ModelProto:
    """Weight-only quantization, by hand: each conv weight becomes int8 per output channel (zero point 0),
    the linear layer's weight uint8 per tensor with zero point 128, each read through DequantizeLinear.
    ``model`` gets the dequantized weights, so torch computes what the quantized graph computes."""
    out = copy.deepcopy(onnx_model)
    graph = out.graph
    params = dict(model.named_parameters())
    for i, t in enumerate(list(graph.initializer)):
        if t.name not in ("c1.weight", "c2.weight", "fc.weight"):
            continue
        w = numpy_helper.to_array(t).astype(np.float64)
        if t.name == "fc.weight":
            scale = np.float32((w.max() - w.min()) / 255)
            q = np.clip(np.round(w / scale) + 128, 0, 255).astype(np.uint8)
            zero, axis = np.uint8(128), {}
            back = (q.astype(np.float32) - 128) * scale
        else:
            scale = (np.abs(w).reshape(len(w), -1).max(1) / 127).astype(np.float32)
            q = np.clip(np.round(w / scale.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
            zero, axis = np.zeros(len(w), np.int8), {"axis": 0}
            back = q.astype(np.float32) * scale.reshape(-1, 1, 1, 1)
        graph.initializer.remove(t)
        graph.initializer.extend([numpy_helper.from_array(q, t.name + "_q"),
                                  numpy_helper.from_array(np.asarray(scale), t.name + "_scale"),
                                  numpy_helper.from_array(np.asarray(zero), t.name + "_zero")])
        graph.node.insert(0, helper.make_node("DequantizeLinear", [t.name + "_q", t.name + "_scale",
                                                                   t.name + "_zero"], [t.name], **axis))
        with torch.no_grad():
            params[t.name].copy_(torch.from_numpy(back))
    return out


@pytest.mark.parametrize("opset", [13, 20])
def test_a_model_with_quantized_weights_is_read_as_its_dequantized_float_model(opset):
    """DequantizeLinear of constant weights (per channel and per tensor with a zero point): onnx's
    reference implementation has no DequantizeLinear before opset 19, so folding failed and the export
    stopped with 'could not evaluate the model's constant subgraphs'."""
    torch.manual_seed(0)
    model = PoolNet(nn.MaxPool2d(2)).eval()
    quantized = _weights_quantized(export_onnx(model, (1, 3, 32, 32), opset=opset), model)
    assert sum(n.op_type == "DequantizeLinear" for n in quantized.graph.node) == 3
    check_against_torch(model, quantized, (1, 3, 32, 32), ["r1", "r2"])


def _calibration(count: int = 4):
    from onnxruntime.quantization import CalibrationDataReader

    class Images(CalibrationDataReader):
        def __init__(self):
            rngs = [np.random.default_rng(i) for i in range(count)]
            self.left = [{"image": r.standard_normal((1, 3, 32, 32)).astype(np.float32)} for r in rngs]

        def get_next(self):
            return self.left.pop() if self.left else None

    return Images()


def _quantized_by_onnxruntime(tmp_path, model: nn.Module, how: str, **options) -> onnx.ModelProto:
    from onnxruntime import quantization as q

    source, target = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(export_onnx(model, (1, 3, 32, 32), opset=17), source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "dynamic":
            q.quantize_dynamic(str(source), str(target), op_types_to_quantize=["Conv"])
        else:
            fmt = q.QuantFormat.QDQ if how == "static QDQ" else q.QuantFormat.QOperator
            q.quantize_static(str(source), str(target), _calibration(), quant_format=fmt, **options)
    return onnx.load(target)


@pytest.mark.parametrize("how", ["static QOperator", "dynamic"])
def test_a_model_computing_in_integers_is_refused_with_the_way_out(tmp_path, how):
    """QLinearConv or ConvInteger on the image's values has no class-score gradients; it used to fail with
    'the class output does not depend on the image input' (the integer tensors cut the path)."""
    torch.manual_seed(0)
    model = PoolNet(nn.MaxPool2d(2)).eval()
    quantized = _quantized_by_onnxruntime(tmp_path, model, how, per_channel=True)
    with pytest.raises(ModelInputError, match=r"node '.*' \((QLinearConv|DynamicQuantizeLinear)\) computes "
                                              r"in integer arithmetic.*quant_format=QuantFormat\.QDQ"):
        export_model(quantized)


class OnnxInTorch(nn.Module):
    """A QDQ ONNX graph evaluated op by op in torch, each QuantizeLinear -> DequantizeLinear pair as torch's
    fake_quantize (its own straight-through gradient, stopped where the rounded value saturates): an
    implementation of the QDQ gradient independent of the export's. Block tensors pass through the
    Identity modules ``b0``, ``b1``, ... so that hooks (and the PyTorch SISE) can tap them."""

    def __init__(self, model: onnx.ModelProto, blocks: list[str]):
        super().__init__()
        self.graph, self.blocks = model.graph, blocks
        self.taps = nn.ModuleDict({f"b{k}": nn.Identity() for k in range(len(blocks))})
        self.constants = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
                          for t in model.graph.initializer}
        self.device_probe = nn.Parameter(torch.zeros(()), requires_grad=False)  # the PyTorch SISE reads it

    def forward(self, x):
        F = nn.functional
        values = {**self.constants, self.graph.input[0].name: x.requires_grad_(torch.is_grad_enabled())}
        quantized = {}  # a QuantizeLinear's output -> (its float input, scale, zero point, integer range)
        for node in self.graph.node:
            a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
            i = [values.get(n) for n in node.input]
            op = node.op_type
            if op == "QuantizeLinear":
                lo, hi = (0, 255) if i[2].dtype == torch.uint8 else (-128, 127)
                quantized[node.output[0]] = (i[0], i[1], i[2], lo, hi)
                continue
            if op == "DequantizeLinear" and node.input[0] in quantized:
                source, scale, zero, lo, hi = quantized[node.input[0]]
                assert torch.equal(scale, i[1]) and torch.equal(zero, i[2]) and scale.ndim == 0
                y = torch.fake_quantize_per_tensor_affine(source, float(scale), int(zero), lo, hi)
            elif op == "DequantizeLinear":  # constant weights or biases
                shape = [-1] + [1] * (i[0].ndim - 1) if i[1].ndim == 1 else []
                y = ((i[0].double() - i[2].double().reshape(shape)) * i[1].double().reshape(shape)).float()
            elif op == "Conv":
                pads = a.get("pads", [0, 0, 0, 0])
                assert pads[:2] == pads[2:]
                y = F.conv2d(i[0], i[1], i[2] if len(i) > 2 else None, a.get("strides", 1), pads[:2],
                             a.get("dilations", 1), a.get("group", 1))
            elif op == "MaxPool":
                y = F.max_pool2d(i[0], a["kernel_shape"], a.get("strides"), a.get("pads", [0, 0])[:2])
            elif op == "ReduceMean":
                y = i[0].mean(dim=a["axes"], keepdim=bool(a.get("keepdims", 1)))
            elif op == "Relu":
                y = torch.relu(i[0])
            elif op == "Gemm":
                y = i[0] @ (i[1].T if a.get("transB") else i[1]) + i[2]
            else:
                raise AssertionError(f"the test's evaluator lacks {op}")
            if node.output[0] in self.blocks:
                y = self.taps[f"b{self.blocks.index(node.output[0])}"](y)
            values[node.output[0]] = y
        return values[self.graph.output[0].name]


def _qdq_pool_net(tmp_path) -> onnx.ModelProto:
    torch.manual_seed(0)
    return _quantized_by_onnxruntime(tmp_path, PoolNet(nn.MaxPool2d(2), classes=6).eval(), "static QDQ")


QDQ_BLOCKS = ["/r1/Relu_output_0_DequantizeLinear_Output", "/r2/Relu_output_0_DequantizeLinear_Output"]


def test_a_qdq_model_is_read_with_the_straight_through_gradient(tmp_path):
    """onnxruntime's static QDQ quantization (which folds each ReLU into its quantizer's zero point)
    against torch's fake_quantize: the same activations and gradients."""
    quantized = _qdq_pool_net(tmp_path)
    assert not any(n.op_type == "Relu" for n in quantized.graph.node)  # folded into the quantizers
    result = export_model(quantized)
    c = result.contract
    assert [b.tensor for b in c.blocks] == QDQ_BLOCKS
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    target = np.zeros((2, c.num_classes), np.float32)
    target[0, 1] = 1.0
    target[1] = np.random.default_rng(2).uniform(-1, 1, c.num_classes)
    outs = run_model(result.model, {c.input_name: x, c.target_input: target})
    acts, grads = torch_block_gradients(OnnxInTorch(quantized, QDQ_BLOCKS), ["taps.b0", "taps.b1"], x, target)
    scales = {n.output[0]: n.input[1] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    initializers = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    for b, act, grad in zip(c.blocks, acts, grads):
        # float convolutions summed in another order may round a value at a level's midpoint the other way
        step, off = float(initializers[scales[b.tensor]]), np.abs(outs[b.act_output] - act)
        assert (off > 0).mean() <= 1e-3 and off.max() <= step * 1.001, ((off > 0).sum(), off.max(), step)
        assert np.abs(grad).max() > 0 and (act == 0).mean() > 0.2  # real gradients, the folded ReLU acts
        assert rel_err(outs[b.grad_output], grad) <= TOL, (b.tensor, rel_err(outs[b.grad_output], grad))


def test_the_engine_runs_a_qdq_model_as_its_graph_says(tmp_path):
    """onnxruntime fuses QDQ groups into integer kernels by default, whose results are not the graph's:
    with symmetric activations the block activations moved by up to 30 quantization steps and the
    gradients by 8e-3. The engine's sessions run the graph as written (checked against torch's
    fake_quantize evaluation of the same graph)."""
    from inspector.config import RuntimeConfig
    from inspector.engine.runtime.session import make_session

    torch.manual_seed(0)
    quantized = _quantized_by_onnxruntime(tmp_path, PoolNet(nn.MaxPool2d(2), classes=6).eval(), "static QDQ",
                                          extra_options={"ActivationSymmetric": True})
    result = export_model(quantized)
    c = result.contract
    cpu = RuntimeConfig(providers=("CPUExecutionProvider",))
    session = make_session(result.model.SerializeToString(), cpu, "explain model")
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    target = np.eye(c.num_classes, dtype=np.float32)[[2, 4]]
    names = [o.name for o in session.get_outputs()]
    outs = dict(zip(names, session.run(names, {c.input_name: x, c.target_input: target})))
    acts, grads = torch_block_gradients(OnnxInTorch(quantized, QDQ_BLOCKS), ["taps.b0", "taps.b1"], x, target)
    for b, act, grad in zip(c.blocks, acts, grads):
        assert (outs[b.act_output] != act).mean() <= 1e-3
        assert rel_err(outs[b.grad_output], grad) <= TOL, (b.tensor, rel_err(outs[b.grad_output], grad))


def test_the_engine_explains_a_qdq_model_as_the_torch_sise(tmp_path):
    """End to end: the engine's SISE of the exported QDQ model against the PyTorch SISE of the same graph
    run by torch with fake_quantize."""
    from .test_engine import check_against_reference, smooth_image

    quantized = _qdq_pool_net(tmp_path)
    path = tmp_path / "int8.sise.onnx"
    onnx.save(export_model(quantized).model, path)
    _, counts = check_against_reference(OnnxInTorch(quantized, QDQ_BLOCKS).eval(), ["taps.b0", "taps.b1"],
                                        str(path), smooth_image((1, 3, 32, 32)))
    assert sum(counts) > 4, counts


def test_constants_the_reference_implementation_cannot_evaluate_stay_unfolded(monkeypatch):
    """When one constant node cannot be evaluated, the others are still folded (they were all left
    unfolded, or the export stopped)."""
    from onnx_tools import graph as graph_module

    class Refuses(graph_module._dequantize_linear()):
        def _run(self, *args, **kwargs):
            raise NotImplementedError("not here")

    torch.manual_seed(0)
    model = PoolNet(nn.MaxPool2d(2)).eval()
    quantized = _weights_quantized(export_onnx(model, (1, 3, 32, 32), opset=17), model)
    reshape = helper.make_node("Reshape", ["c1.weight_scale", "flat_shape"], ["flat_scale"])
    quantized.graph.node.insert(0, reshape)
    quantized.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "flat_shape"))
    monkeypatch.setattr(graph_module, "_dequantize_linear", lambda: Refuses)
    folded = graph_module.fold_constants(copy.deepcopy(quantized))
    kinds = {node.output[0]: node.op_type for node in folded.graph.node}
    assert kinds["flat_scale"] == "Constant"
    assert [kinds[f"{p}.weight"] for p in ("c1", "c2", "fc")] == ["DequantizeLinear"] * 3


class Between(nn.Module):
    """A layer that moves or repeats pixels between two blocks of the same size as the first."""

    def __init__(self, move):
        super().__init__()
        self.move = move
        self.c1, self.r1 = nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(8 if move == "tile" else 4, 6, 3, 2, 1), nn.ReLU()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = self.r1(self.c1(x))
        y = {"flip": lambda: torch.flip(y, [3]), "roll": lambda: torch.roll(y, 5, 2),
             "tile": lambda: y.repeat(1, 2, 1, 1),
             "pad then crop": lambda: nn.functional.pad(y, (1, 1, 1, 1))[:, :, 2:, 2:]}[self.move]()
        return self.fc(self.r2(self.c2(y)).mean((2, 3)))


@pytest.mark.parametrize("move", ["flip", "roll", "tile", "pad then crop"])
def test_a_flipped_rolled_tiled_or_shifted_copy_is_not_taken_for_the_block(move):
    """The copy after the ReLU was the last 32x32 tensor every path passes through, so it stood for the
    block: its maps were mirrored or shifted against the image (or held every channel twice)."""
    torch.manual_seed(0)
    model = Between(move).eval()
    result = check_against_torch(model, export_onnx(model, (1, 3, 32, 32)), (1, 3, 32, 32), ["r1", "r2"])
    assert result.contract.blocks[0].shape[1] == 4  # r1's channels (equal to torch's r1, checked above)


def test_a_qdq_model_with_onnxruntimes_contrib_quantizers_is_refused_with_the_way_out(tmp_path):
    torch.manual_seed(0)
    quantized = _quantized_by_onnxruntime(tmp_path, PoolNet(nn.MaxPool2d(2)).eval(), "static QDQ",
                                          extra_options={"UseQDQContribOps": True})
    with pytest.raises(ModelInputError, match=r"\(com\.microsoft\.QuantizeLinear\) is onnxruntime's contrib "
                                              r"quantizer.*without extra_options UseQDQContribOps"):
        export_model(quantized)


@pytest.mark.parametrize("how", ["optimised by onnxruntime", "QOperator head"])
def test_an_op_outside_the_onnx_domain_is_named(tmp_path, how):
    """onnxruntime's FusedConv (a model saved after its extended optimisations) or QGemm (QOperator
    quantization of a Linear layer) used to end in 'no output shaped [N, num_classes] among ['logits']',
    since shape inference stops at them: the advice to name the output could not help."""
    torch.manual_seed(0)
    model = PoolNet(nn.MaxPool2d(2)).eval()
    if how == "QOperator head":
        quantized = _quantized_by_onnxruntime(tmp_path, model, "static QOperator",
                                              op_types_to_quantize=["Gemm"])
    else:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / "fused.onnx")
        ort.InferenceSession(export_onnx(model, (1, 3, 32, 32)).SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        quantized = onnx.load(tmp_path / "fused.onnx")
    op = "QGemm" if how == "QOperator head" else "FusedConv"
    assert any(n.domain == "com.microsoft" and n.op_type == op for n in quantized.graph.node)
    with pytest.raises(ModelInputError, match=rf"\(com\.microsoft\.{op}\) is outside the standard ONNX domain"
                                              r".*QDQ format"):
        export_model(quantized, output="logits")


def test_float16_forward_passes_are_refused_for_a_quantized_model(tmp_path):
    """runtime.fp16 converted the QDQ graph's scales to float16, which onnxruntime rejected with a raw
    INVALID_GRAPH error when the engine started."""
    from inspector import Inspector
    from inspector.errors import ModelContractError

    from .test_engine import IDENTITY_PREPROCESS

    path = tmp_path / "int8.sise.onnx"
    onnx.save(export_model(_qdq_pool_net(tmp_path)).model, path)
    with pytest.raises(ModelContractError, match=r"int8\.sise\.onnx: the model is quantized \(node '.*', "
                                                 r"DequantizeLinear\).*runtime\.fp16: false"):
        Inspector.from_options(model=str(path), preprocess=IDENTITY_PREPROCESS,
                               runtime={"providers": ["CPUExecutionProvider"], "fp16": True})


class ConcatModule(nn.Module):
    def forward(self, a, b):
        return torch.cat((a, b), 1)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's basic unit as torchvision writes it: split the channels in two (chunk), a branch on
    one half, concatenate, and shuffle the channels with sizes read from the tensor (x.size())."""

    def __init__(self, c: int):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1), nn.ReLU(), nn.Conv2d(h, h, 3, 1, 1, groups=h),
                                    nn.Conv2d(h, h, 1), nn.ReLU())
        self.cat = ConcatModule()

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        y = self.cat(a, self.branch(b))
        n, c, h, w = y.size()
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)


class ShuffleNet(nn.Module):
    def __init__(self, units: int = 8, c: int = 8, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2))
        self.units = nn.Sequential(*[ShuffleUnit(c) for _ in range(units)])
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.units(self.stem(x)).mean((2, 3)))


def test_a_shufflenet_exported_with_a_fixed_batch_of_one_matches_torch():
    """Each unit's split reads Shape of the previous unit's output; once the batch is freed, the shuffle's
    Reshape targets [0, C, H, W] copy their batch from inputs whose shapes are known only after the
    previous split is folded: one folding round per unit (8 here; folding used to stop after 6, leaving the
    output's batch unknown and the model refused with 'no output shaped [N, num_classes]')."""
    torch.manual_seed(0)
    model = ShuffleNet().eval()
    onnx_model = export_onnx(model, (1, 3, 32, 32), dynamic_batch=False)
    result = check_against_torch(model, onnx_model, (1, 3, 32, 32), ["stem.1", "units.7.cat"])
    assert result.contract.input_shape[0] == "N"  # the batch was freed: the engine scores many masks per run


class ChannelsLastMix(nn.Module):
    """A ConvNeXt-style tail: a Linear over the channels of a permuted map, permuted back (no longer
    contiguous), then an adaptive average pool, which PyTorch's dynamo exporter ends in as_strided."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 3, 2, 1)
        self.mix, self.act = nn.Linear(8, 8), nn.GELU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 5)

    def forward(self, x):
        y = self.c2(self.r1(self.c1(x))).permute(0, 2, 3, 1)
        y = self.act(self.mix(y)).permute(0, 3, 1, 2)
        return self.fc(torch.flatten(self.pool(y), 1))


def test_dynamos_as_strided_view_is_read_as_a_reshape_and_matches_torch():
    """as_strided exports as Reshape([-1]) then Gather(axis 0) of indices 0..C-1 shaped [1, C, 1, 1]:
    refused before ('gathering along the batch axis'), as ConvNeXt exported with the default exporter was;
    read as a Reshape, its gradients match torch and the batch is freed."""
    torch.manual_seed(0)
    model = ChannelsLastMix().eval()
    onnx_model = export_onnx(model, (1, 3, 16, 16), dynamo=True)
    assert any(n.op_type == "Gather" and "as_strided" in n.name for n in onnx_model.graph.node)
    result = check_against_torch(model, onnx_model, (1, 3, 16, 16), ["r1", "c2"])
    assert result.contract.input_shape[0] == "N"
