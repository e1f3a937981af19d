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


def check_parity(name: str, *, dynamo: bool, score: str = "softmax", opset: int | None = None, batch: int = 2):
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


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16", "mobilenetv2", "densenet", "resnet18-nhwc"])
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
