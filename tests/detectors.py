"""Fixture detectors written for the tests: one small YOLO-style network (backbone with strides 2-32, a
neck joining strides 8, 16 and 32, a head per stride) exported in each head convention the export reads,
and their decoding in torch: the reference for the canonical head and its gradients.

The backbone's blocks that every head branch depends on are ``stem`` (stride 2), ``stage1`` (4) and
``stage2`` (8, the last tensor all three branches read): the export must find exactly these.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from torch import nn

from .models import conv_bn, randomize_bn

TAPS = ["stem", "stage1", "stage2"]
STRIDES = (8, 16, 32)
CONVENTIONS = ("yolov8", "yolov5", "yolox")


class TinyYolo(nn.Module):
    """``convention``: how the head's values are laid out and decoded (the module docstring of
    onnx_tools.detection); ``sigmoid``: whether the network applies the sigmoid to objectness and class
    scores itself (True) or returns logits."""

    def __init__(self, num_classes: int = 3, convention: str = "yolov8", sigmoid: bool = True,
                 width: int = 8):
        super().__init__()
        self.c, self.convention, self.sigmoid = num_classes, convention, sigmoid
        w = width
        self.stem = conv_bn(3, w, 3, 2)
        self.stage1 = conv_bn(w, 2 * w, 3, 2)
        self.stage2 = nn.Sequential(conv_bn(2 * w, 4 * w, 3, 2), conv_bn(4 * w, 4 * w, 3))
        self.stage3 = conv_bn(4 * w, 4 * w, 3, 2)
        self.stage4 = conv_bn(4 * w, 4 * w, 3, 2)
        self.lateral = conv_bn(8 * w, 4 * w, 1)
        outs = 4 + num_classes + (0 if convention == "yolov8" else 1)
        self.heads = nn.ModuleList(nn.Conv2d(4 * w, outs, 1) for _ in STRIDES)

    def features(self, x):
        p3 = self.stage2(self.stage1(self.stem(x)))
        p4 = self.stage3(p3)
        p5 = self.stage4(p4)
        p4 = self.lateral(torch.cat([p4, nn.functional.interpolate(p5, scale_factor=2.0)], 1))
        return [p3, p4, p5]

    def forward(self, x):
        rows = []
        for head, stride, p in zip(self.heads, STRIDES, self.features(x)):
            t = head(p)  # [N, outs, h, w]
            h, w = t.shape[2:]
            t = t.flatten(2).permute(0, 2, 1)  # [N, h*w, outs]
            ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                                    torch.arange(w, dtype=torch.float32), indexing="ij")
            grid = torch.stack([xs.flatten(), ys.flatten()], 1)
            if self.convention == "yolox":  # raw: offsets and log sizes; objectness and classes after
                scores = t[..., 4:].sigmoid() if self.sigmoid else t[..., 4:]
                rows.append(torch.cat([t[..., :4], scores], 2))
                continue
            xy = (grid + t[..., :2].sigmoid() * 2 - 0.5) * stride
            wh = torch.exp(t[..., 2:4].clamp(-4, 4)) * stride * 2
            scores = t[..., 4:].sigmoid() if self.sigmoid else t[..., 4:]
            rows.append(torch.cat([xy, wh, scores], 2))
        out = torch.cat(rows, 1)  # [N, A, 4 (+1) + C]
        return out.permute(0, 2, 1) if self.convention == "yolov8" else out


def detector(convention: str = "yolov8", sigmoid: bool = True, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(3)
    return randomize_bn(TinyYolo(num_classes, convention, sigmoid))


def export_detector(model: nn.Module, size: int = 64, opset: int = 17) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, size, size),), f, dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["output0"],
                          dynamic_axes={"images": {0: "N"}, "output0": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


def anchor_grid(size: int) -> np.ndarray:
    """[A, 3]: cell column, row and stride per anchor, in the head's order."""
    out = []
    for s in STRIDES:
        ys, xs = np.meshgrid(np.arange(size // s), np.arange(size // s), indexing="ij")
        out.append(np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, s)], 1))
    return np.concatenate(out).astype(np.float64)


def decode(raw: np.ndarray, convention: str, logits: bool, size: int):
    """numpy decoding of a raw head output: boxes [N, A, 4] (x1, y1, x2, y2), classes [N, A, C],
    objectness [N, A]; written from the conventions' definitions, independently of onnx_tools."""
    raw = np.asarray(raw, np.float64)
    sig = (lambda v: 1 / (1 + np.exp(-v))) if logits else (lambda v: v)
    if convention == "yolov8":
        rows = raw.transpose(0, 2, 1)
        box, classes, obj = rows[..., :4], sig(rows[..., 4:]), np.ones(rows.shape[:2])
    else:
        box, obj, classes = raw[..., :4], sig(raw[..., 4]), sig(raw[..., 5:])
        if convention == "yolox":
            g = anchor_grid(size)
            box = np.concatenate([(box[..., :2] + g[:, :2]) * g[:, 2:], np.exp(box[..., 2:4]) * g[:, 2:]], -1)
    cx, cy, w, h = (box[..., k] for k in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    return boxes, classes, obj


def torch_detection_gradients(model: nn.Module, x: np.ndarray, target: np.ndarray) -> tuple[list, list]:
    """Reference: activations at TAPS and spatial means of d(sum target * objectness * classes)/d(act),
    ``target`` [N, A, C], with the canonical scores computed in torch from the model's raw output."""
    modules = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}
    hooks = [modules[t].register_forward_hook(lambda m, i, o, t=t: acts.__setitem__(t, o)) for t in TAPS]
    try:
        raw = model(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    sig = torch.sigmoid if not model.sigmoid else (lambda v: v)
    if model.convention == "yolov8":
        scores = sig(raw.permute(0, 2, 1)[..., 4:])
    else:
        scores = sig(raw[..., 4:5]) * sig(raw[..., 5:])
    loss = (torch.from_numpy(target) * scores).sum()
    grads = torch.autograd.grad(loss, [acts[t] for t in TAPS])
    return [acts[t].detach().numpy() for t in TAPS], [g.mean((2, 3)).detach().numpy() for g in grads]


def torch_canonical(model: nn.Module, size: int):
    """The canonical head in torch for ``model``'s raw output: boxes (x1, y1, x2, y2), classes, objectness."""
    grid = torch.from_numpy(anchor_grid(size)).float()

    def canonical(raw):
        sig = torch.sigmoid if not model.sigmoid else (lambda v: v)
        if model.convention == "yolov8":
            rows = raw.permute(0, 2, 1)
            box, classes, obj = rows[..., :4], sig(rows[..., 4:]), torch.ones(rows.shape[:2])
        else:
            box, obj, classes = raw[..., :4], sig(raw[..., 4]), sig(raw[..., 5:])
            if model.convention == "yolox":
                box = torch.cat([(box[..., :2] + grid[:, :2]) * grid[:, 2:],
                                 torch.exp(box[..., 2:4]) * grid[:, 2:]], -1)
        cx, cy, w, h = box.unbind(-1)
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1), classes, obj
    return canonical
