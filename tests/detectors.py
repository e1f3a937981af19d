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
SPLIT_KINDS = ("gfl-nchw", "gfl-flat", "gfl-single", "centernet")  # the split heads' fixture layouts
BINS = {"gfl-nchw": 8, "gfl-flat": 8, "gfl-single": 16}


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


class TinySplit(TinyYolo):
    """The same backbone with a split head. ``kind``: gfl-nchw (mmdet's GFL: per stride class logits
    [N, C, h, w] and box bins [N, 4B, h, w], outputs reg_s, cls_s interleaved), gfl-flat (PicoDet: per
    stride [N, h*w, C] after a sigmoid and [N, h*w, 4B], all classes first), gfl-single (YOLOv8's raw head:
    per stride [N, 4 * 16 + C, h, w]), centernet (at stride 8: heatmap [N, C, h, w], sizes and offsets
    [N, 2, h, w], in cells)."""

    def __init__(self, num_classes: int = 3, kind: str = "gfl-nchw", sigmoid: bool = False, width: int = 8):
        super().__init__(num_classes, "yolov8", sigmoid, width)
        self.convention, self.kind = ("centernet" if kind == "centernet" else "gfl"), kind
        w = 4 * width
        if kind == "centernet":
            self.heads = nn.ModuleList([nn.Conv2d(w, num_classes, 1), nn.Conv2d(w, 2, 1), nn.Conv2d(w, 2, 1)])
        elif kind == "gfl-single":
            self.heads = nn.ModuleList(nn.Conv2d(w, 4 * BINS[kind] + num_classes, 1) for _ in STRIDES)
        else:
            self.heads = nn.ModuleList(nn.ModuleList([nn.Conv2d(w, num_classes, 1),
                                                      nn.Conv2d(w, 4 * BINS[kind], 1)]) for _ in STRIDES)

    def output_names(self) -> list[str]:
        if self.kind == "centernet":
            return ["hm", "wh", "reg"]
        if self.kind == "gfl-single":
            return [f"output{s}" for s in STRIDES]
        if self.kind == "gfl-flat":
            return [f"cls_{s}" for s in STRIDES] + [f"reg_{s}" for s in STRIDES]
        return [n for s in STRIDES for n in (f"reg_{s}", f"cls_{s}")]

    def forward(self, x):
        levels = self.features(x)
        sig = torch.sigmoid if self.sigmoid else (lambda v: v)
        if self.kind == "centernet":
            hm, wh, off = (head(levels[0]) for head in self.heads)
            return sig(hm), nn.functional.softplus(wh) * 2, torch.sigmoid(off)
        if self.kind == "gfl-single":
            outs = []
            for head, p in zip(self.heads, levels):
                t = head(p)
                outs.append(torch.cat([t[:, :4 * BINS[self.kind]], sig(t[:, 4 * BINS[self.kind]:])], 1))
            return tuple(outs)
        cls = [sig(h[0](p)) for h, p in zip(self.heads, levels)]
        reg = [h[1](p) for h, p in zip(self.heads, levels)]
        if self.kind == "gfl-flat":
            flat = (lambda t: t.flatten(2).permute(0, 2, 1))
            return tuple(flat(t) for t in cls) + tuple(flat(t) for t in reg)
        return tuple(t for pair in zip(reg, cls) for t in pair)


def detector(convention: str = "yolov8", sigmoid: bool = True, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(3)
    if convention in SPLIT_KINDS:
        return randomize_bn(TinySplit(num_classes, convention, sigmoid))
    return randomize_bn(TinyYolo(num_classes, convention, sigmoid))


def export_detector(model: nn.Module, size: int = 64, opset: int = 17) -> onnx.ModelProto:
    f = io.BytesIO()
    names = model.output_names() if isinstance(model, TinySplit) else ["output0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, size, size),), f, dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=names,
                          dynamic_axes={"images": {0: "N"}, **{n: {0: "N"} for n in names}})
    return onnx.load_from_string(f.getvalue())


def split_canonical(outputs: dict, kind: str, logits: bool, size: int, lib=np):
    """The canonical head of a split fixture's outputs (by name), written from the conventions'
    definitions: GFL's bins' softmax expectation times the stride from the cell centre, CenterNet's
    (cell + offset) * stride and size * stride. ``lib``: numpy (float64) or torch."""
    if lib is np:
        outputs = {k: np.asarray(v, np.float64) for k, v in outputs.items()}
        softmax = (lambda v: np.exp(v - v.max(-1, keepdims=True)) / np.exp(v - v.max(-1, keepdims=True))
                   .sum(-1, keepdims=True))
        cat, sig, ones = np.concatenate, (lambda v: 1 / (1 + np.exp(-v))), np.ones
        rows = (lambda t: t.reshape(t.shape[0], t.shape[1], -1).transpose(0, 2, 1))
    else:
        softmax, cat, sig, ones = (lambda v: torch.softmax(v, -1)), torch.cat, torch.sigmoid, torch.ones
        rows = (lambda t: t.flatten(2).permute(0, 2, 1))
    prob = sig if logits else (lambda v: v)
    if kind == "centernet":
        stride = 8
        n = size // stride
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
        cells = cells if lib is np else torch.from_numpy(cells).float()
        centre = (cells + rows(outputs["reg"])) * stride
        half = rows(outputs["wh"]) * stride / 2
        classes = prob(rows(outputs["hm"]))
        return cat([centre - half, centre + half], -1), classes, ones(classes.shape[:2])
    bins = BINS[kind]
    boxes, classes = [], []
    for s in STRIDES:
        n = size // s
        if kind == "gfl-single":
            t = rows(outputs[f"output{s}"])
            reg, cls = t[..., :4 * bins], t[..., 4 * bins:]
        elif kind == "gfl-flat":
            reg, cls = outputs[f"reg_{s}"], outputs[f"cls_{s}"]
        else:
            reg, cls = rows(outputs[f"reg_{s}"]), rows(outputs[f"cls_{s}"])
        p = softmax(reg.reshape(reg.shape[0], n * n, 4, bins))
        values = np.arange(bins, dtype=np.float64) if lib is np else torch.arange(bins, dtype=torch.float32)
        sides = (p * values).sum(-1) * s  # l, t, r, b
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        centre = (np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64) + 0.5) * s
        centre = centre if lib is np else torch.from_numpy(centre).float()
        boxes.append(cat([centre - sides[..., :2], centre + sides[..., 2:]], -1))
        classes.append(prob(cls))
    classes = cat(classes, 1)
    return cat(boxes, 1), classes, ones(classes.shape[:2])


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
    if isinstance(model, TinySplit):
        outputs = dict(zip(model.output_names(), raw))
        _, classes, objectness = split_canonical(outputs, model.kind, not model.sigmoid, x.shape[2], torch)
        scores = objectness[..., None] * classes
    elif model.convention == "yolov8":
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
        if isinstance(model, TinySplit):
            return split_canonical(dict(zip(model.output_names(), raw)), model.kind, not model.sigmoid, size,
                                   torch)
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
