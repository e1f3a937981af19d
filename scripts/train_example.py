"""Train the bundled example defect classifier (dev extra: torch), export it to ONNX, run the export
step, and write it with its config and sample images into inspector/example/.

    python scripts/train_example.py [--epochs 14] [--train 4000] [--heldout 900] [--seed 1]

Data: inspector.quality.synthetic, training seed ``--seed``, held-out seed ``--seed + 1000`` (never
trained on).
Prints the held-out accuracy per class; refuses to write a model below 95 % overall.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import warnings

import cv2
import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from inspector.quality.synthetic import CLASSES, sample
from onnx_tools import export_model

SIZE = 128
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "inspector", "example")


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.short(x))


class DefectNet(nn.Module):
    """Five blocks at 64, 32, 16, 8 and 4 pixels (128-pixel input); GAP; linear head."""

    def __init__(self, classes: int = 6):  # len(CLASSES)
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.stages = nn.Sequential(Block(24, 32, 2), Block(32, 48, 2), Block(48, 64, 2), Block(64, 96, 2))
        self.head = nn.Linear(96, classes)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


def dataset(seed: int, count: int):
    xs, ys = np.zeros((count, 3, SIZE, SIZE), np.float32), np.zeros(count, np.int64)
    for i in range(count):
        s = sample(seed, i, SIZE)
        xs[i] = ((s.image.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)
        ys[i] = CLASSES.index(s.label)
    return torch.from_numpy(xs), torch.from_numpy(ys)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if torch.rand(1, generator=gen) < 0.5:
        x = x.flip(3)
    if torch.rand(1, generator=gen) < 0.5:
        x = x.flip(2)
    return x


def evaluate(model, xs, ys):
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xs[i:i + 256]).argmax(1) for i in range(0, len(xs), 256)])
    per_class = {c: float((pred[ys == k] == k).float().mean()) for k, c in enumerate(CLASSES)}
    return float((pred == ys).float().mean()), per_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--heldout", type=int, default=900)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=EXAMPLE)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    xs, ys = dataset(args.seed, args.train)
    hx, hy = dataset(args.seed + 1000, args.heldout)
    print(f"data: {len(xs)} train / {len(hx)} held-out images in {time.perf_counter() - start:.1f} s")
    model = DefectNet()
    print(f"model: {sum(p.numel() for p in model.parameters())} parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = args.epochs * ((len(xs) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xs), generator=gen)
        total = 0.0
        for i in range(0, len(xs), 64):
            idx = order[i:i + 64]
            loss = nn.functional.cross_entropy(model(augment(xs[idx], gen)), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        acc, _ = evaluate(model, hx, hy)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(xs):.3f}, held-out acc {acc:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    acc, per_class = evaluate(model, hx, hy)
    print("held-out accuracy per class: " + ", ".join(f"{c} {a:.3f}" for c, a in per_class.items()))
    print(f"held-out accuracy: {acc:.4f} on {len(hx)} images (seed {args.seed + 1000})")
    if acc < 0.95:
        raise SystemExit("below the 95 % bar: not writing the model")
    write_example(model, args, acc, per_class)


def write_example(model, args, acc, per_class) -> None:
    os.makedirs(os.path.join(args.out, "samples"), exist_ok=True)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, SIZE, SIZE),), buf, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    import onnx

    exported = export_model(onnx.load_from_string(buf.getvalue()))
    onnx.save(exported.model, os.path.join(args.out, "defect_resnet.sise.onnx"))
    for k, label in enumerate(CLASSES):  # one held-out sample per class, past the evaluated ones
        s = sample(args.seed + 1000, args.heldout + k, SIZE)
        assert s.label == label
        cv2.imwrite(os.path.join(args.out, "samples", f"{label}.png"),
                    cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(os.path.join(args.out, "samples", f"{label}_mask.png"), s.mask.astype(np.uint8) * 255)
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"script": "scripts/train_example.py", "seed": args.seed, "epochs": args.epochs,
                   "train_images": args.train, "heldout_images": args.heldout,
                   "heldout_seed": args.seed + 1000, "heldout_accuracy": acc, "per_class": per_class,
                   "classes": list(CLASSES), "input": [3, SIZE, SIZE], "mean": MEAN, "std": STD,
                   "torch": torch.__version__}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
