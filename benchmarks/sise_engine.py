"""SISE engine figures on one machine, in one run: per image the number of masks, the engine's seconds,
the floor (masks x the model's own onnxruntime forward time per image at the same batch size) and the
ratio to it, the time of the PyTorch reference implementation (tests/sise_reference.py, eager, same
model and image) and the ratio to it; then the presets' speed and agreement with `quality`.

    python benchmarks/sise_engine.py                       # ResNet-50 (torchvision-style), 224x224, CPU
    python benchmarks/sise_engine.py --size 112 --no-reference --presets
    python benchmarks/sise_engine.py --provider cuda --fp16 --chunk 128   # the GPU bar (not run yet)
Needs the dev extra (torch) to build the model and run the reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from inspector import Inspector
from onnx_tools import export_model


def build(size: int):
    import torch

    from tests.models import RESNET_TAPS, Bottleneck, ResNet, export_onnx, randomize_bn
    torch.manual_seed(0)
    model = randomize_bn(ResNet(Bottleneck, [3, 4, 6, 3], width=64, num_classes=1000))
    return model, RESNET_TAPS, export_onnx(model, (1, 3, size, size))


def forward_seconds_per_image(plain: onnx.ModelProto, size: int, batch: int, threads: int, providers: list,
                              fp16: bool, repeats: int = 3) -> float:
    """The model's own forward time per image at ``batch`` (in float16 too when the engine uses it)."""
    if fp16:
        from onnxconverter_common import float16

        plain = float16.convert_float_to_float16(plain, keep_io_types=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(plain.SerializeToString(), opts, providers=providers)
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    sess.run(None, {"image": x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"image": x})
        times.append(time.perf_counter() - t)
    return statistics.median(times) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--presets", action="store_true", help="also time the balanced and fast presets")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--fp16", action="store_true", help="runtime.fp16 (per-mask forward passes in float16)")
    args = parser.parse_args()

    import torch

    from tests.sise_reference import sise_reference

    torch.set_num_threads(args.threads)
    model, taps, plain = build(args.size)
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "resnet50.sise.onnx")
    onnx.save(export_model(plain).model, path)
    providers = ["CUDAExecutionProvider"] if args.provider == "cuda" else ["CPUExecutionProvider"]
    common = {"model": path,
              "preprocess": {"resize": "stretch", "scale": 1.0, "mean": [0.0], "std": [1.0], "input_dtype": "float"},
              "runtime": {"providers": providers, "intra_op_threads": args.threads, "fp16": args.fp16}}
    floor_per_image = forward_seconds_per_image(plain, args.size, args.chunk, args.threads, providers, args.fp16)
    print(f"ResNet-50 (torchvision-style, random weights), {args.size}x{args.size}, onnxruntime {ort.__version__} "
          f"{providers[0]}{' fp16' if args.fp16 else ''}, {args.threads} threads, chunk {args.chunk}")
    print(f"model forward at batch {args.chunk}: {floor_per_image * 1e3:.2f} ms/image")
    print("image | preset | masks | engine s | floor s | engine/floor | torch ref s | engine/torch | r(fused)")
    presets = ["quality"] + (["balanced", "fast"] if args.presets else [])
    engines = {p: Inspector.from_options(**common, method={"preset": p, "chunk_size": args.chunk}) for p in presets}
    rng = np.random.default_rng(0)
    for i in range(args.images):
        yy, xx = np.mgrid[0:args.size, 0:args.size] / args.size
        image = np.stack([np.sin(9 * xx + i), np.cos(7 * yy), np.sin(5 * (xx + yy))], -1)
        image = (image + 0.2 * rng.standard_normal(image.shape)).astype(np.float32)
        quality = None
        for preset in presets:
            t = time.perf_counter()
            exp = engines[preset].explain(image, target=1)
            engine_s = time.perf_counter() - t
            floor_s = exp.total_masks * floor_per_image
            ref_s, ratio_ref, r = float("nan"), float("nan"), float("nan")
            if preset == "quality":
                quality = exp
                if not args.no_reference:
                    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
                    t = time.perf_counter()
                    _, ref_fused, _ = sise_reference(model, taps, x, 1, batch=args.chunk)
                    ref_s = time.perf_counter() - t
                    ratio_ref = engine_s / ref_s
                    r = float(np.corrcoef(exp.saliency.ravel(), ref_fused.ravel())[0, 1])
            else:
                r = float(np.corrcoef(exp.saliency.ravel(), quality.saliency.ravel())[0, 1])
            print(f"{i:>5} | {preset:<8} | {exp.total_masks:>5} | {engine_s:8.2f} | {floor_s:7.2f} | "
                  f"{engine_s / floor_s:12.3f} | {ref_s:11.2f} | {ratio_ref:12.3f} | {r:.4f}", flush=True)
    print("r(fused): Pearson r of the fused map with the PyTorch reference (quality) or with quality (presets)")


if __name__ == "__main__":
    main()
