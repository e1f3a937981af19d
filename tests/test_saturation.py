"""Block gradients of a score close to saturation (confidence 1 - 1e-7): the softmax and sigmoid scores,
and a softmax or log-softmax inside the model, keep their float32 digits. The textbook forms p * (1 - p)
left 1 - p with no correct digit (block gradients off by up to 17 % of their largest value, with sign
flips). Checked against central differences of the float64 PyTorch model at each block channel."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from onnx_tools import export_model

from .conftest import run_model
from .models import export_onnx

CONFIDENCE_GAP = 1e-7  # 1 - p of the top class
TOP = 2


class Net(nn.Module):
    """conv -> relu (block, 16x16) -> pool -> conv -> relu (block, 8x8) -> mean -> linear -> ``head``."""

    def __init__(self, head: str = "none", classes: int = 5):
        super().__init__()
        self.head = head
        self.c1, self.r1 = nn.Conv2d(3, 6, 3, 1, 1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(6, 6, 3, 1, 1), nn.ReLU()
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(6, classes)

    def forward(self, x):
        z = self.fc(self.r2(self.c2(self.pool(self.r1(self.c1(x))))).mean((2, 3)))
        if self.head == "softmax":
            return torch.softmax(z, 1)
        if self.head == "log_softmax":
            return torch.log_softmax(z, 1)
        if self.head == "sigmoid":
            return torch.sigmoid(z)
        return z


def saturated(head: str, x: np.ndarray, sigmoid: bool) -> Net:
    """A net whose top class sits CONFIDENCE_GAP from 1 on the first image: the bias puts the logits
    there (for a softmax: log((1 - gap) / gap) above the others' log-sum-exp)."""
    torch.manual_seed(0)
    model = Net(head).eval()
    with torch.no_grad():
        model.fc.weight.mul_(0.2)
        model.fc.bias.zero_()
        z = model.fc(model.r2(model.c2(model.pool(model.r1(model.c1(torch.from_numpy(x)))))).mean((2, 3)))[0]
        gap = CONFIDENCE_GAP
        if sigmoid:
            model.fc.bias[TOP] = np.log((1 - gap) / gap) - z[TOP]
        else:
            others = torch.logsumexp(torch.cat([z[:TOP], z[TOP + 1:]]), 0)
            model.fc.bias[TOP] = np.log((1 - gap) / gap) + others - z[TOP]
    return model


def central_differences(model: Net, x: np.ndarray, target: np.ndarray, psi, eps: float = 1e-4):
    """d(sum target * psi(output)) / d(block) as the block gradient output holds it (the spatial mean per
    channel), by central differences in float64: each channel shifted by +-eps at every position."""
    model = model.double()
    out = []
    for layer in (model.r1, model.r2):
        channels = layer(model.c1(torch.from_numpy(x).double())).shape[1] if layer is model.r1 else 6
        grads = np.zeros((len(x), channels))
        for c in range(channels):
            values = []
            for sign in (1, -1):
                def shift(m, i, o, c=c, sign=sign):
                    o = o.clone()
                    o[:, c] += sign * eps
                    return o
                hook = layer.register_forward_hook(shift)
                with torch.no_grad():
                    y = model(torch.from_numpy(x).double())
                hook.remove()
                values.append((torch.from_numpy(target).double() * psi(y)).sum(1).numpy())
            hw = (16 * 16) if layer is model.r1 else (8 * 8)
            grads[:, c] = (values[0] - values[1]) / (2 * eps) / hw
        out.append(grads)
    return out


CASES = {  # model head, export score, psi on the model's output in float64
    "softmax score": ("none", "softmax", lambda y: torch.softmax(y, 1)),
    "sigmoid score": ("none", "sigmoid", torch.sigmoid),
    "softmax inside": ("softmax", "identity", lambda y: y),
    "log-softmax inside": ("log_softmax", "identity", lambda y: y),
    "sigmoid inside": ("sigmoid", "identity", lambda y: y),
}


@pytest.mark.parametrize("case", CASES)
def test_block_gradients_at_confidence_one_minus_1e7_match_central_differences(case):
    head, score, psi = CASES[case]
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 16, 16)).astype(np.float32)
    x[1] = x[0]  # the same image, explained for the top class and for another class
    model = saturated(head, x, sigmoid="sigmoid" in case)
    with torch.no_grad():
        z = model.fc(model.r2(model.c2(model.pool(model.r1(model.c1(torch.from_numpy(x)))))).mean((2, 3)))
    p = torch.sigmoid(z.double()) if "sigmoid" in case else torch.softmax(z.double(), 1)
    assert 1 - float(p[0, TOP]) == pytest.approx(CONFIDENCE_GAP, rel=1e-3)
    result = export_model(export_onnx(model, (1, 3, 16, 16)), score=score)
    c = result.contract
    target = np.zeros((2, 5), np.float32)
    target[0, TOP], target[1, 0] = 1, 1
    outs = run_model(result.model, {c.input_name: x, c.target_input: target})
    references = central_differences(model, x.astype(np.float64), target.astype(np.float64), psi)
    for block, reference in zip(c.blocks, references):
        got = outs[block.grad_output].astype(np.float64)
        for row in range(2):  # each explanation on its own scale (the top class's is ~1e-7 of the other's)
            scale = np.abs(reference[row]).max()
            assert scale > 0
            err = np.abs(got[row] - reference[row]).max() / scale
            assert err < 1e-3, (case, block.tensor, row, err, got[row], reference[row])
