"""Whole-model parity: the exported sise/act/* and sise/grad/* against torch autograd on the same
weights, for fixture architectures exported with torch's legacy and dynamo exporters."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from onnx_tools import export_model

from .conftest import rel_err, run_model
from .models import export_onnx, fixture, torch_block_gradients

TOL = 1e-4


def check_parity(name: str, *, dynamo: bool, score: str = "softmax", opset: int | None = None,
                 batch: int = 2):
    model, taps, shape = fixture(name)
    onnx_model = export_onnx(model, shape, dynamo=dynamo, opset=opset)
    if dynamo:
        batch = shape[0]  # the dynamo exporter fixes the batch dim
    result = export_model(onnx_model, score=score)
    c = result.contract
    assert len(c.blocks) == len(taps), [b.tensor for b in c.blocks]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
    target = np.zeros((batch, c.num_classes), np.float32)
    target[0, 3] = 1.0  # one-hot
    if batch > 1:
        target[1] = rng.uniform(-1, 1, c.num_classes)  # arbitrary class weights
    outs = run_model(result.model, {c.input_name: x, c.target_input: target})
    acts, grads = torch_block_gradients(model, taps, x, target, score)
    for b, act, grad in zip(c.blocks, acts, grads):
        assert outs[b.act_output].shape == act.shape
        assert rel_err(outs[b.act_output], act) <= TOL, (b.tensor, rel_err(outs[b.act_output], act))
        assert outs[b.grad_output].shape == grad.shape
        err = rel_err(outs[b.grad_output], grad)
        assert err <= TOL, f"{name} block {b.index} ({b.tensor}): gradient rel. error {err:.2e}"
    return onnx_model, result


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16", "mobilenetv2", "densenet",
                                  "resnet18-nhwc"])
def test_legacy_export_gradients_match_torch(name):
    check_parity(name, dynamo=False)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "densenet", "resnet18-nhwc"])
def test_dynamo_export_gradients_match_torch(name):
    check_parity(name, dynamo=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_dynamo_export_gradients_match_torch_slow(name):
    check_parity(name, dynamo=True)


@pytest.mark.parametrize("score", ["sigmoid", "logit", "identity"])
def test_other_scores_match_torch(score):
    check_parity("resnet18", dynamo=False, score=score)


@pytest.mark.parametrize("opset", [11, 13])
def test_older_opsets_match_torch(opset):
    check_parity("mobilenetv2", dynamo=False, opset=opset)


@pytest.mark.parametrize("name,channels,sizes", [
    ("resnet50-full", [64, 256, 512, 1024, 2048], [112, 56, 28, 14, 7]),
    ("vgg16-full", [64, 128, 256, 512, 512], [224, 112, 56, 28, 14]),
])
def test_full_size_block_discovery(name, channels, sizes):
    """torchvision-style ResNet-50 (3904 maps) and VGG16 (1472 maps) at 224x224, and the discovered
    tensors are exactly the tapped module outputs (stem ReLU + stage outputs; ReLUs before the pools)."""
    model, taps, shape = fixture(name)
    exported = export_model(export_onnx(model, shape))
    c = exported.contract
    assert [b.channels for b in c.blocks] == channels
    assert [b.shape[2] for b in c.blocks] == sizes
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    target = np.zeros((1, c.num_classes), np.float32)
    target[0, 0] = 1.0
    outs = run_model(exported.model, {c.input_name: x, c.target_input: target},
                     outputs=[b.act_output for b in c.blocks])
    acts, _ = torch_block_gradients(model, taps, x, target)
    for b, act in zip(c.blocks, acts):
        assert rel_err(outs[b.act_output], act) <= 1e-4, b.tensor


@pytest.mark.slow
def test_full_size_resnet50_gradients_match_torch():
    check_parity("resnet50-full", dynamo=False, batch=1)
