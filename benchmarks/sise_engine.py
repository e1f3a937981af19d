"""SISE engine figures on one machine, in one run: per image the number of masks, the engine's seconds,
the floor (masks x the model's own onnxruntime forward time per image at the same batch size) and the
ratio to it, the time of the PyTorch reference implementation (tests/sise_reference.py, eager, same
model and image) and the ratio to it; then the presets' speed and agreement with `quality`.

    python benchmarks/sise_engine.py                       # ResNet-50 (torchvision-style), 224x224, CPU
    python benchmarks/sise_engine.py --size 112 --no-reference --presets
    python benchmarks/sise_engine.py --provider cuda --fp16 --chunk 128 --images 5 --cuda-option prefer_nhwc=1
Needs the dev extra (torch) to build the model and run the reference. Each engine explains --warmup
images first (CUDA: cuDNN's algorithm search and lazy initialisation), then --images timed ones; on CUDA
the model's forward (the floor) runs with its input and output bound on the device, and the PyTorch
reference runs on the GPU too (after one warm-up), in float16 autocast with --fp16.
"""

from __future__ import annotations

import argparse
import importlib
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
from inspector.engine.runtime.session import FP32_CUDA_DEFAULTS
from onnx_tools import export_model


def build(size: int):
    import torch

    from tests.models import RESNET_TAPS, Bottleneck, ResNet, export_onnx, randomize_bn
    torch.manual_seed(0)
    model = randomize_bn(ResNet(Bottleneck, [3, 4, 6, 3], width=64, num_classes=1000))
    return model, RESNET_TAPS, export_onnx(model, (1, 3, size, size))


def forward_seconds_per_image(plain: onnx.ModelProto, size: int, batch: int, threads: int, providers: list,
                              fp16: bool, repeats: int = 3) -> float:
    """The model's own forward time per image at ``batch`` (in float16 too when the engine uses it),
    input and output bound on the session's device (no host copies on CUDA)."""
    if fp16:
        from onnxconverter_common import float16

        plain = float16.convert_float_to_float16(plain, keep_io_types=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(plain.SerializeToString(), opts, providers=providers)
    device = "cuda" if sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("image", ort.OrtValue.ortvalue_from_numpy(x, device, 0))
    binding.bind_output(sess.get_outputs()[0].name, device)
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        t = time.perf_counter()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:]) / batch


def parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--cuda-option {pair!r}: expected KEY=VALUE")
        options[key] = value
    return options


def reference_seconds(model, taps, image: np.ndarray, chunk: int, cuda: bool, autocast: bool):
    """(seconds, fused map) of the PyTorch reference on one image, on the GPU when ``cuda``."""
    import torch

    from tests.sise_reference import sise_reference

    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
    t = time.perf_counter()
    _, fused, _ = sise_reference(model, taps, x, 1, batch=chunk, autocast=autocast)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t, fused


def sample_image(i: int, size: int, rng) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.stack([np.sin(9 * xx + i), np.cos(7 * yy), np.sin(5 * (xx + yy))], -1)
    return (image + 0.2 * rng.standard_normal(image.shape)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--images", type=int, default=1, help="timed images (after --warmup)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed images first (default: 1 on CUDA, 0 on CPU)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--presets", action="store_true", help="also time the balanced and fast presets")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--fp16", action="store_true",
                        help="runtime.fp16 (per-mask forward passes in float16)")
    parser.add_argument("--cuda-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a CUDA provider option, e.g. prefer_nhwc=1 or cudnn_conv_algo_search=HEURISTIC")
    parser.add_argument("--no-pad", action="store_true",
                        help="do not pad the last chunk on CUDA (for comparison)")
    args = parser.parse_args()
    cuda = args.provider == "cuda"
    warmup = args.warmup if args.warmup is not None else int(cuda)

    import torch

    if args.no_pad:
        importlib.import_module("inspector.engine.methods.sise").PAD_DEVICES = ()
    torch.set_num_threads(args.threads)
    model, taps, plain = build(args.size)
    if cuda and not args.no_reference:
        model = model.to("cuda")
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "resnet50.sise.onnx")
    onnx.save(export_model(plain).model, path)
    provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    user_options = parse_options(args.cuda_option)
    sampler_options = {**({} if args.fp16 else FP32_CUDA_DEFAULTS), **user_options}  # as the engine's sampler
    common = {"model": path,
              "preprocess": {"resize": "stretch", "scale": 1.0, "mean": [0.0], "std": [1.0],
                             "input_dtype": "float"},
              "runtime": {"providers": [provider], "cuda_options": user_options,
                          "intra_op_threads": args.threads, "fp16": args.fp16}}
    floor_providers = [(provider, sampler_options)] if cuda else [provider]
    floor_per_image = forward_seconds_per_image(plain, args.size, args.chunk, args.threads, floor_providers,
                                                args.fp16)
    options = "".join(f" {k}={v}" for k, v in sampler_options.items()) if cuda else ""
    print(f"ResNet-50 (torchvision-style, random weights), {args.size}x{args.size}, "
          f"onnxruntime {ort.__version__} {provider}{options}{' fp16' if args.fp16 else ''}, "
          f"{args.threads} threads, chunk {args.chunk}{', no padding' if args.no_pad else ''}"
          + (f", {torch.cuda.get_device_name()}" if cuda else ""))
    print(f"model forward at batch {args.chunk}: {floor_per_image * 1e3:.3f} ms/image")
    presets = ["quality"] + (["balanced", "fast"] if args.presets else [])
    engines = {p: Inspector.from_options(**common, method={"preset": p, "chunk_size": args.chunk})
               for p in presets}
    print(f"engine provider: {engines['quality'].sessions.provider}")
    rng = np.random.default_rng(0)
    for i in range(warmup):
        image = sample_image(100 + i, args.size, rng)
        for preset in presets:
            t = time.perf_counter()
            engines[preset].explain(image, target=1)
            print(f"warm-up image {i} {preset}: {time.perf_counter() - t:.3f} s", flush=True)
        if cuda and not args.no_reference:
            print(f"warm-up PyTorch reference: "
                  f"{reference_seconds(model, taps, image, args.chunk, cuda, args.fp16)[0]:.3f} s",
                  flush=True)
    print("image | preset | masks | engine s | floor s | engine/floor | torch ref s | engine/torch "
          "| r(fused)")
    engine_times: dict[str, list] = {p: [] for p in presets}
    ref_times = []
    for i in range(args.images):
        image = sample_image(i, args.size, rng)
        quality = None
        for preset in presets:
            t = time.perf_counter()
            exp = engines[preset].explain(image, target=1)
            engine_s = time.perf_counter() - t
            engine_times[preset].append(engine_s)
            floor_s = exp.total_masks * floor_per_image
            ref_s, ratio_ref, r = float("nan"), float("nan"), float("nan")
            if preset == "quality":
                quality = exp
                if not args.no_reference:
                    ref_s, ref_fused = reference_seconds(model, taps, image, args.chunk, cuda, args.fp16)
                    ref_times.append(ref_s)
                    ratio_ref = engine_s / ref_s
                    r = float(np.corrcoef(exp.saliency.ravel(), ref_fused.ravel())[0, 1])
            else:
                r = float(np.corrcoef(exp.saliency.ravel(), quality.saliency.ravel())[0, 1])
            print(f"{i:>5} | {preset:<8} | {exp.total_masks:>5} | {engine_s:8.3f} | {floor_s:7.3f} | "
                  f"{engine_s / floor_s:12.3f} | {ref_s:11.3f} | {ratio_ref:12.3f} | {r:.4f}", flush=True)
    for preset, times in engine_times.items():
        line = f"median over {len(times)} image(s), {preset}: engine {statistics.median(times):.3f} s"
        if preset == "quality" and ref_times:
            line += (f", PyTorch reference {statistics.median(ref_times):.3f} s, "
                     f"ratio {statistics.median(times) / statistics.median(ref_times):.3f}")
        print(line)
    print("r(fused): Pearson r of the fused map with the PyTorch reference (quality) "
          "or with quality (presets)")


if __name__ == "__main__":
    main()
