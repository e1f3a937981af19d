"""Train the bundled example defect detector (dev extra: torch): a small anchor-free YOLO-style network on
synthetic scenes with several defects each (inspector.quality.synthetic.scene: exact masks and boxes),
exported with the YOLOv8 output convention, run through the export step, and written with its
samples (exact masks in masks/, boxes and classes in truth.json) and training record into
inspector/example/detector/ (its config.yaml is kept in git, not written here).

    python scripts/train_detector.py [--epochs 30] [--train 6000] [--heldout 500] [--seed 2]

Held-out scenes come from seed ``--seed + 1000`` (never trained on). Prints mAP@0.5 over the defect
classes (VOC all-point AP per class) and refuses to write a model below MAP_BAR.

The network: a residual backbone (strides 2, 4, 8, 16, 32), a top-down neck joining strides 8, 16 and
32, a head per stride predicting per cell the distances to the box's four sides and the class scores
(FCOS-style assignment: the cells near a box's centre at the stride its size calls for; focal loss on
classes, GIoU on boxes). Its output is [N, 4 + C, A]: centre x, centre y, width, height in pixels and
sigmoid class scores, as YOLOv8 exports write it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_example import Block  # the bundled classifier's residual block, the backbone's too

from inspector.engine.method.nms import detect, iou
from inspector.quality.synthetic import CLASSES, scene, write_scenes
from onnx_tools import export_model

SIZE = 128
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
DEFECTS = CLASSES[1:]  # the detector's classes: no "ok" (a part without detections is good)
STRIDES = (8, 16, 32)
LIMITS = (40, 80, 10**6)  # a box's longer side up to this goes to the stride at the same position
MAP_BAR = 0.60
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "inspector", "example", "detector")


def conv_bn(cin, cout, k=3, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DefectYolo(nn.Module):
    """Backbone 64/32/16/8/4 pixels (128 input), top-down neck, one head per stride 8, 16, 32."""

    def __init__(self, classes: int = len(DEFECTS), width: int = 64):
        super().__init__()
        self.stem = conv_bn(3, 24, 3, 2)
        self.stage1 = Block(24, 32, 2)
        self.stage2 = Block(32, 48, 2)
        self.stage3 = Block(48, 64, 2)
        self.stage4 = Block(64, 96, 2)
        self.lat5, self.lat4, self.lat3 = conv_bn(96, width, 1), conv_bn(64, width, 1), conv_bn(48, width, 1)
        self.smooth4, self.smooth3 = conv_bn(width, width), conv_bn(width, width)
        self.heads = nn.ModuleList(nn.Sequential(conv_bn(width, width), nn.Conv2d(width, 4 + classes, 1))
                                   for _ in STRIDES)
        self.classes = classes
        for head in self.heads:  # a prior of 1 % for every class: stable focal-loss training
            nn.init.constant_(head[1].bias[4:], -4.6)

    def levels(self, x):
        p3 = self.stage2(self.stage1(self.stem(x)))
        p4 = self.stage3(p3)
        p5 = self.stage4(p4)
        n5 = self.lat5(p5)
        n4 = self.smooth4(self.lat4(p4) + nn.functional.interpolate(n5, scale_factor=2.0))
        n3 = self.smooth3(self.lat3(p3) + nn.functional.interpolate(n4, scale_factor=2.0))
        return [head(n) for head, n in zip(self.heads, (n3, n4, n5))]

    def raw(self, x):
        """Per anchor [N, A, 4 + C]: side distances (pixels, >= 0) and class logits; anchor centres [A, 2]."""
        rows, centres = [], []
        for t, stride in zip(self.levels(x), STRIDES):
            h, w = t.shape[2:]
            t = t.flatten(2).permute(0, 2, 1)
            ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                                    torch.arange(w, dtype=torch.float32), indexing="ij")
            centres.append((torch.stack([xs.flatten(), ys.flatten()], 1) + 0.5) * stride)
            sides = nn.functional.softplus(t[..., :4]) * stride
            rows.append(torch.cat([sides, t[..., 4:]], 2))
        return torch.cat(rows, 1), torch.cat(centres, 0)

    def forward(self, x):
        """YOLOv8's export convention: [N, 4 + C, A], centre x, centre y, width, height, class scores."""
        raw, centres = self.raw(x)
        left_top, right_bottom = centres - raw[..., :2], centres + raw[..., 2:4]
        box = torch.cat([(left_top + right_bottom) / 2, right_bottom - left_top], 2)
        return torch.cat([box, raw[..., 4:].sigmoid()], 2).permute(0, 2, 1)


def anchors() -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres [A, 2] and strides [A] in the network's order."""
    centres, strides = [], []
    for stride in STRIDES:
        n = SIZE // stride
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        centres.append((np.stack([xs.ravel(), ys.ravel()], 1) + 0.5) * stride)
        strides.append(np.full(n * n, stride))
    return np.concatenate(centres).astype(np.float32), np.concatenate(strides).astype(np.float32)


def assign(boxes: np.ndarray, labels: np.ndarray, centres: np.ndarray, strides: np.ndarray):
    """Per anchor: the class (-1 background) and box it learns. A box goes to the stride its longer side
    calls for; its anchors are those whose centre lies inside it within 2.5 strides of its centre (the
    nearest one at least); an anchor claimed twice takes the smaller box."""
    cls = np.full(len(centres), -1, np.int64)
    target = np.zeros((len(centres), 4), np.float32)
    area = np.full(len(centres), np.inf)
    for box, label in zip(boxes, labels):
        side = max(box[2] - box[0], box[3] - box[1])
        stride = STRIDES[next(k for k, limit in enumerate(LIMITS) if side <= limit)]
        level = strides == stride
        centre = (box[:2] + box[2:]) / 2
        inside = ((centres >= box[:2]) & (centres <= box[2:])).all(1)
        near = (np.abs(centres - centre) <= 2.5 * stride).all(1)
        chosen = np.flatnonzero(level & inside & near)
        if not len(chosen):
            candidates = np.flatnonzero(level)
            chosen = candidates[[np.argmin(((centres[candidates] - centre) ** 2).sum(1))]]
        own = (box[2] - box[0]) * (box[3] - box[1])
        better = chosen[own < area[chosen]]
        cls[better], target[better], area[better] = label, box, own
    return cls, target


def dataset(seed: int, count: int):
    xs = np.zeros((count, 3, SIZE, SIZE), np.float32)
    truth = []
    for i in range(count):
        s = scene(seed, i, SIZE)
        xs[i] = ((s.image.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)
        truth.append((np.array([d.box for d in s.defects], np.float32).reshape(-1, 4),
                      np.array([DEFECTS.index(d.label) for d in s.defects], np.int64)))
    return xs, truth


def flipped(x: np.ndarray, boxes: np.ndarray, horizontal: bool, vertical: bool):
    if horizontal:
        x = x[:, :, ::-1]
        boxes = np.stack([SIZE - boxes[:, 2], boxes[:, 1], SIZE - boxes[:, 0], boxes[:, 3]], 1)
    if vertical:
        x = x[:, ::-1, :]
        boxes = np.stack([boxes[:, 0], SIZE - boxes[:, 3], boxes[:, 2], SIZE - boxes[:, 1]], 1)
    return np.ascontiguousarray(x), boxes


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    low, high = torch.maximum(pred[:, :2], target[:, :2]), torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (high - low).clamp(min=0).prod(1)
    area = (lambda b: (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1))
    union = area(pred) + area(target) - inter
    hull = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).prod(1)
    return 1 - inter / union.clamp(min=1e-6) + (hull - union) / hull.clamp(min=1e-6)


def loss_of(model, x, assigned, centres):
    raw, _ = model.raw(x)
    cls = torch.from_numpy(np.stack([a[0] for a in assigned]))
    boxes = torch.from_numpy(np.stack([a[1] for a in assigned]))
    positive = cls >= 0
    onehot = torch.zeros_like(raw[..., 4:])
    onehot[positive] = nn.functional.one_hot(cls[positive], model.classes).float()
    logits = raw[..., 4:]
    p = logits.sigmoid()
    ce = nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    focal = ce * ((1 - p) * onehot + p * (1 - onehot)) ** 2 * (0.25 * onehot + 0.75 * (1 - onehot))
    n = max(int(positive.sum()), 1)
    sides = raw[..., :4][positive]
    centre = centres.expand(len(x), -1, -1)[positive]
    pred = torch.cat([centre - sides[:, :2], centre + sides[:, 2:]], 1)
    return focal.sum() / n + 2.0 * giou_loss(pred, boxes[positive]).sum() / n


def predictions(model, xs, conf: float = 0.05):
    """Per image: (box, class, score) after the engine's own NMS (inspector.engine.method.nms)."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(xs), 128):
            y = model(torch.from_numpy(xs[i:i + 128])).numpy().transpose(0, 2, 1)  # [n, A, 4 + C]
            for row in y:
                cx, cy, w, h = row[:, 0], row[:, 1], row[:, 2], row[:, 3]
                boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
                kept = detect(boxes, row[:, 4:], np.ones(len(row), np.float32), conf=conf, iou_limit=0.5,
                              limit=100)
                out.append([(boxes[a], k, s) for a, k, s in kept])
    return out


def mean_ap(found, truth) -> tuple[float, dict]:
    """VOC all-point average precision per class at IoU 0.5, and their mean."""
    per_class = {}
    for k, name in enumerate(DEFECTS):
        scored, total = [], 0
        for dets, (boxes, labels) in zip(found, truth):
            gt = boxes[labels == k]
            total += len(gt)
            used = np.zeros(len(gt), bool)
            for box, cls, score in sorted(dets, key=lambda d: -d[2]):
                if cls != k:
                    continue
                hit = False
                if len(gt):
                    overlaps = iou(box, gt)
                    best = int(np.argmax(overlaps))
                    if overlaps[best] >= 0.5 and not used[best]:
                        used[best], hit = True, True
                scored.append((score, hit))
        scored.sort(key=lambda s: -s[0])
        hits = np.cumsum([h for _, h in scored])
        recall = hits / max(total, 1)
        precision = hits / np.arange(1, len(scored) + 1)
        r = np.concatenate([[0], recall, [1]])
        p = np.concatenate([[0], precision, [0]])
        for i in range(len(p) - 2, -1, -1):
            p[i] = max(p[i], p[i + 1])
        changed = np.flatnonzero(r[1:] != r[:-1])
        per_class[name] = float(((r[changed + 1] - r[changed]) * p[changed + 1]).sum())
    return float(np.mean(list(per_class.values()))), per_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--heldout", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    xs, truth = dataset(args.seed, args.train)
    hx, htruth = dataset(args.seed + 1000, args.heldout)
    print(f"data: {len(xs)} train / {len(hx)} held-out scenes ({sum(len(t[1]) for t in truth)} and "
          f"{sum(len(t[1]) for t in htruth)} defects) in {time.perf_counter() - start:.1f} s", flush=True)
    model = DefectYolo()
    print(f"model: {sum(p.numel() for p in model.parameters())} parameters")
    centres_np, strides = anchors()
    centres = torch.from_numpy(centres_np)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * ((len(xs) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(xs))
        total = 0.0
        for i in range(0, len(xs), args.batch):
            batch, assigned = [], []
            for j in order[i:i + args.batch]:
                x, boxes = flipped(xs[j], truth[j][0], rng.random() < 0.5, rng.random() < 0.5)
                batch.append(x)
                assigned.append(assign(boxes, truth[j][1], centres_np, strides))
            loss = loss_of(model, torch.from_numpy(np.stack(batch)), assigned, centres)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            held, _ = mean_ap(predictions(model, hx), htruth)
            note = f", held-out mAP@0.5 {held:.3f}"
        else:
            note = ""
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(xs):.3f}{note} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    held, per_class = mean_ap(predictions(model, hx), htruth)
    print("held-out AP@0.5 per class: " + ", ".join(f"{c} {a:.3f}" for c, a in per_class.items()))
    print(f"held-out mAP@0.5: {held:.4f} on {len(hx)} scenes (seed {args.seed + 1000})")
    if held < MAP_BAR:
        raise SystemExit(f"below the mAP@0.5 bar of {MAP_BAR}: not writing the model")
    write_example(model, args, held, per_class)


def write_example(model, args, held, per_class) -> None:
    import onnx

    os.makedirs(args.out, exist_ok=True)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, SIZE, SIZE),), buf, dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["output0"],
                          dynamic_axes={"images": {0: "N"}, "output0": {0: "N"}})
    exported = export_model(onnx.load_from_string(buf.getvalue()), task="detect")
    assert exported.contract.head.convention == "yolov8", exported.contract.head
    onnx.save(exported.model, os.path.join(args.out, "defect_yolo.sise.onnx"))
    # six held-out scenes past the evaluated ones, with their exact masks and truth.json
    write_scenes(args.out, 6, args.seed + 1000, SIZE, first=args.heldout, images="samples")
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"script": "scripts/train_detector.py", "seed": args.seed, "epochs": args.epochs,
                   "train_scenes": args.train, "heldout_scenes": args.heldout,
                   "heldout_seed": args.seed + 1000,
                   "heldout_map50": held, "ap50_per_class": per_class, "map_bar": MAP_BAR,
                   "classes": list(DEFECTS), "input": [3, SIZE, SIZE], "mean": MEAN, "std": STD,
                   "convention": "yolov8", "torch": torch.__version__}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
