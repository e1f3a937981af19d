"""Images per second of `inspector audit`: the per-image loop (`--batch-images 1`), batches of images
(`--batch-images 8`) and Ray Data with 2 workers (`--engine ray`), on the same synthetic images, in one run
(each a fresh process, store and output folder, as a user runs it).

    python benchmarks/audit_throughput.py [--images 200] [--config inspector/example/config.yaml]
        [--batch 8] [--workers 2] [--repeats 1]
    python benchmarks/audit_throughput.py --provider cuda                     # the bundled model on a GPU
    python benchmarks/audit_throughput.py --provider cuda --model resnet50 --images 100 [--fp16]

--model resnet50 audits a ResNet-50 (torchvision-style, random weights, exported here; needs the dev
extra for torch) at 224x224 instead of the config's model. --provider cuda puts CUDA first in the config's
runtime (onnxruntime-gpu), and the Ray workers share the GPUs: --gpus-per-worker defaults to 1/--workers.

Wall seconds include start-up (loading the model; for Ray, starting a local Ray and one model per worker).
Ray's start-up cost is measured the same way: a Ray audit of 2 images minus the loop's audit of 2 images.
Needs the ray extra for the Ray line (pip install '.[ray]').
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import cv2
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from inspector.quality.synthetic import sample


def gpu_name() -> str:
    r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                       text=True, check=False)
    return f", {r.stdout.strip().splitlines()[0]}" if r.returncode == 0 and r.stdout.strip() else ""


def write_images(folder: str, count: int, seed: int = 2024) -> None:
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        image = cv2.cvtColor(sample(seed, i).image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(os.path.join(folder, f"part_{i:04d}.png"), image)


def timed_audit(config: str, images: str, out: str, *extra: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    command = [sys.executable, "-m", "inspector", "audit", "-c", config, images, "--out", out, *extra]
    r = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"audit {' '.join(extra)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return seconds


def resnet50_config(folder: str, fp16: bool) -> str:
    """A config for a ResNet-50 at 224x224 with random weights, exported into ``folder``."""
    import onnx
    from sise_engine import build

    from onnx_tools import export_model

    model = os.path.join(folder, "resnet50.sise.onnx")
    onnx.save(export_model(build(224)[2]).model, model)
    config = os.path.join(folder, "resnet50.yaml")
    with open(config, "w") as f:
        yaml.safe_dump({"model": model, "preprocess": {"size": [224, 224], "resize": "stretch"},
                        "method": {"name": "sise", "preset": "quality"},
                        "runtime": {"fp16": fp16}}, f)
    return config


def with_provider(config: str, folder: str, provider: str, fp16: bool) -> str:
    """``config`` with the runtime's providers set for ``provider`` (and runtime.fp16), written into
    ``folder``; the model path made absolute so that the copy finds it."""
    with open(config) as f:
        settings = yaml.safe_load(f)
    model = settings["model"]
    settings["model"] = model if os.path.isabs(model) else os.path.join(os.path.dirname(
        os.path.abspath(config)), model)
    runtime = dict(settings.get("runtime") or {})
    runtime["providers"] = (["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda"
                            else ["CPUExecutionProvider"])
    runtime["fp16"] = fp16 or bool(runtime.get("fp16", False))
    settings["runtime"] = runtime
    path = os.path.join(folder, "bench.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(settings, f)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--config", default=os.path.join(ROOT, "inspector", "example", "config.yaml"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each line; the best is printed")
    parser.add_argument("--model", choices=["config", "resnet50"], default="config",
                        help="the config's model, or a ResNet-50 at 224x224 (random weights)")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--fp16", action="store_true", help="runtime.fp16")
    parser.add_argument("--gpus-per-worker", type=float, default=None,
                        help="for the Ray line (default: 1/--workers with --provider cuda, else 0)")
    args = parser.parse_args()
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (
        1 / args.workers if args.provider == "cuda" else 0.0)
    work = tempfile.mkdtemp(prefix="sise-audit-bench-")
    try:
        source = resnet50_config(work, args.fp16) if args.model == "resnet50" else args.config
        args.config = with_provider(source, work, args.provider, args.fp16)
        images, pair = os.path.join(work, "images"), os.path.join(work, "two")
        write_images(images, args.images)
        write_images(pair, 2, seed=99)
        lines = {"per-image loop (--batch-images 1)": ["--batch-images", "1"],
                 f"--batch-images {args.batch}": ["--batch-images", str(args.batch)],
                 f"--engine ray, {args.workers} workers, --batch-images {args.batch}":
                     ["--engine", "ray", "--workers", str(args.workers), "--batch-images", str(args.batch),
                      "--gpus-per-worker", f"{gpus:g}"]}
        model = "ResNet-50 224x224" if args.model == "resnet50" else os.path.relpath(source)
        print(f"{args.images} images, {model}, {args.provider}{' fp16' if args.fp16 else ''}, "
              f"{os.cpu_count()} CPUs{gpu_name() if args.provider == 'cuda' else ''}")
        best = {}
        for _ in range(args.repeats):  # interleaved, so that a busy spell of the machine hits every line
            for name, extra in lines.items():
                seconds = timed_audit(args.config, images, os.path.join(work, "out"), *extra)
                best[name] = min(best.get(name, seconds), seconds)
        startup_loop = timed_audit(args.config, pair, os.path.join(work, "out2"), "--batch-images", "1")
        startup_ray = timed_audit(args.config, pair, os.path.join(work, "out2"), "--engine", "ray",
                                  "--workers", str(args.workers), "--gpus-per-worker", f"{gpus:g}")
        loop = best["per-image loop (--batch-images 1)"]
        print(f"{'command':48s} {'wall s':>8s} {'img/s':>8s} {'vs loop':>8s}")
        for name, seconds in best.items():
            print(f"{name:48s} {seconds:8.1f} {args.images / seconds:8.2f} {loop / seconds:7.2f}x")
        print(f"Ray start-up cost (audit of 2 images, Ray minus loop): {startup_ray - startup_loop:.1f} s; "
              f"Ray minus loop on {args.images} images: "
              f"{best[list(lines)[2]] - loop:+.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
