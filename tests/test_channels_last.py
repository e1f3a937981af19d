"""A PyTorch re-export of a TensorFlow model: its NHWC input is cast, padded and cast before the first
Transpose, and its activations are transposed back to NHWC after every convolution. The export reads it
as NHWC, with the blocks an NCHW export of the same network has (what tf2onnx writes): the same
activations, and gradients that match torch autograd."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from onnx_tools import export_model

from .conftest import rel_err, run_model
from .models import export_onnx, torch_block_gradients


class Stage(nn.Module):
    """pad -> conv -> a folded BatchNorm (scale, shift) -> relu."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 0)
        self.scale = nn.Parameter(torch.rand(cout) + 0.5)
        self.shift = nn.Parameter(torch.randn(cout) * 0.1)
        self.relu = nn.ReLU()


class Twin(nn.Module):
    """The network in NCHW, as tf2onnx writes it."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([Stage(3, 8, 1), Stage(8, 8, 2), Stage(8, 8, 2)])
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        for s in self.stages:
            x = s.relu(s.conv(F.pad(x, (1, 1, 1, 1))) * s.scale[:, None, None] + s.shift[:, None, None])
        return self.fc(x.mean((2, 3)))


class Reexported(nn.Module):
    """The same network computed in NHWC between its convolutions."""

    def __init__(self, twin: Twin):
        super().__init__()
        self.twin = twin

    def forward(self, x):
        x = F.pad(x.double(), (0, 0, 1, 1, 1, 1)).float()  # Cast, Pad, Cast, then the first Transpose
        for i, s in enumerate(self.twin.stages):
            if i:
                x = F.pad(x, (0, 0, 1, 1, 1, 1))
            y = s.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            x = s.relu(y * s.scale + s.shift)
        return self.twin.fc(x.mean((1, 2)))


def twin_and_reexport() -> tuple[Twin, onnx.ModelProto]:
    """The NCHW network and its NHWC re-export as an ONNX model (same weights)."""
    torch.manual_seed(0)
    twin = Twin().eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Reexported(twin).eval(), (torch.randn(1, 16, 16, 3),), f, dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    return twin, onnx.load_from_string(f.getvalue())


def test_an_nhwc_internal_graph_has_the_blocks_of_its_nchw_twin():
    twin, reexported = twin_and_reexport()
    nhwc = export_model(reexported)
    nchw = export_model(export_onnx(twin, (1, 3, 16, 16)))
    assert nhwc.contract.input_layout == "NHWC" and nchw.contract.input_layout == "NCHW"
    assert [b.shape for b in nhwc.contract.blocks] == [b.shape for b in nchw.contract.blocks] == \
        [(1, 8, 16, 16), (1, 8, 8, 8), (1, 8, 4, 4)]
    for b in (*nhwc.contract.blocks, *nchw.contract.blocks):  # the activations, not the convolutions
        assert b.tensor.endswith("Relu_output_0"), b.tensor
    x = np.random.default_rng(1).standard_normal((2, 16, 16, 3)).astype(np.float32)
    target = np.zeros((2, 5), np.float32)
    target[0, 1], target[1] = 1.0, np.random.default_rng(2).uniform(-1, 1, 5)
    c = nhwc.contract
    outs = run_model(nhwc.model, {c.input_name: x, c.target_input: target})
    twin_outs = run_model(nchw.model, {nchw.contract.input_name: x.transpose(0, 3, 1, 2),
                                       nchw.contract.target_input: target})
    acts, grads = torch_block_gradients(twin, [f"stages.{i}.relu" for i in range(3)],
                                        np.ascontiguousarray(x.transpose(0, 3, 1, 2)), target)
    for mine, theirs, act, grad in zip(c.blocks, nchw.contract.blocks, acts, grads):
        assert rel_err(outs[mine.act_output], twin_outs[theirs.act_output]) <= 1e-5
        assert rel_err(outs[mine.act_output], act) <= 1e-5
        assert rel_err(outs[mine.grad_output], grad) <= 1e-4, mine.tensor
    same = run_model(nhwc.model, {c.input_name: x, c.target_input: target}, optimize=False)[c.output_name]
    assert np.array_equal(same, run_model(reexported, {"image": x},
                                          optimize=False)["logits"])  # the inserted transposes are exact


def test_the_engine_explains_the_reexport_as_its_nchw_twin(tmp_path):
    from .test_engine import inspector_for, pearson, smooth_image

    twin, reexported = twin_and_reexport()
    onnx.save(export_model(reexported).model, tmp_path / "nhwc.sise.onnx")
    onnx.save(export_model(export_onnx(twin, (1, 3, 16, 16))).model, tmp_path / "nchw.sise.onnx")
    image = smooth_image((1, 3, 16, 16))
    mine = inspector_for(str(tmp_path / "nhwc.sise.onnx")).explain(image, target=2)
    theirs = inspector_for(str(tmp_path / "nchw.sise.onnx")).explain(image, target=2)
    assert mine.masks_per_layer == theirs.masks_per_layer and sum(mine.masks_per_layer) > 4
    assert pearson(mine.saliency, theirs.saliency) >= 0.999
