"""Images per second of `inspector audit` on the bundled example model: the per-image loop
(`--batch-images 1`), batches of images (`--batch-images 8`) and Ray Data with 2 workers (`--engine ray`),
on the same synthetic images, in one run (each a fresh process, store and output folder, as a user runs it).

    python benchmarks/audit_throughput.py [--images 200] [--config inspector/example/config.yaml]
        [--batch 8] [--workers 2] [--repeats 1]

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

from inspector.synthetic import sample

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--config", default=os.path.join(ROOT, "inspector", "example", "config.yaml"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each line; the best is printed")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="sise-audit-bench-")
    try:
        images, pair = os.path.join(work, "images"), os.path.join(work, "two")
        write_images(images, args.images)
        write_images(pair, 2, seed=99)
        lines = {"per-image loop (--batch-images 1)": ["--batch-images", "1"],
                 f"--batch-images {args.batch}": ["--batch-images", str(args.batch)],
                 f"--engine ray, {args.workers} workers, --batch-images {args.batch}":
                     ["--engine", "ray", "--workers", str(args.workers), "--batch-images", str(args.batch)]}
        print(f"{args.images} images, {os.path.relpath(args.config)}, {os.cpu_count()} CPUs")
        best = {}
        for _ in range(args.repeats):  # interleaved, so that a busy spell of the machine hits every line
            for name, extra in lines.items():
                seconds = timed_audit(args.config, images, os.path.join(work, "out"), *extra)
                best[name] = min(best.get(name, seconds), seconds)
        startup_loop = timed_audit(args.config, pair, os.path.join(work, "out2"), "--batch-images", "1")
        startup_ray = timed_audit(args.config, pair, os.path.join(work, "out2"), "--engine", "ray",
                                  "--workers", str(args.workers))
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
