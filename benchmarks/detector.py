"""What explaining a detector's detections costs, on the bundled example detector, in one run: per image
and per detection, SISE with every detection of an image explained together (their masked images shared),
SISE with each detection explained alone, and D-RISE (5,000 masks, its paper's setting, every detection
scored from each masked image: its strongest setting). Counts the masked forward passes each one runs.

    python benchmarks/detector.py [--scenes 10] [--seed 7] [--config configs/defect_detector.yaml]
        [--provider cpu|cuda] [--drise-masks 5000]

Scenes come from ``inspector.quality.synthetic.scene`` with a seed the detector was not trained on
(training used 2, its held-out set 1002). Seconds are wall time after one warm-up image, medians over
scenes, per image and divided by the image's detections.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from inspector.config import load_config
from inspector.engine.inspector import Inspector
from inspector.quality.synthetic import scene


def timed(insp: Inspector, image, **kw):
    passes, start = insp.sessions.masked_images, time.perf_counter()
    out = insp.explain(image, **kw)
    return out, time.perf_counter() - start, insp.sessions.masked_images - passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "defect_detector.yaml"))
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--drise-masks", type=int, default=5000)
    args = parser.parse_args()
    cfg = load_config(args.config)
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if args.provider == "cuda" else \
        ("CPUExecutionProvider",)
    drise = dataclasses.replace(cfg.method.drise, masks=args.drise_masks)
    runtime = dataclasses.replace(cfg.runtime, providers=providers)
    cfg = dataclasses.replace(cfg, runtime=runtime, method=dataclasses.replace(cfg.method, drise=drise))
    insp = Inspector(cfg)
    images = [scene(args.seed, i, insp.size[0]).image for i in range(args.scenes + 1)]
    insp.explain(images[0])  # warm-up
    insp.explain(images[0], method="drise")
    rows = {"together": [], "alone": [], "drise": []}
    counts = []
    for i, image in enumerate(images[1:], 1):
        found, seconds, passes = timed(insp, image)
        k = len(found)
        if not k:
            print(f"scene {i}: no detection, skipped", flush=True)
            continue
        counts.append(k)
        rows["together"].append((seconds, passes, k))
        alone_s, alone_p = 0.0, 0
        for j in range(k):
            _, s, p = timed(insp, image, target=j)
            alone_s, alone_p = alone_s + s, alone_p + p
        rows["alone"].append((alone_s, alone_p, k))
        _, s, p = timed(insp, image, method="drise")
        rows["drise"].append((s, p, k))
        print(f"scene {i}: {k} detection(s); SISE together {seconds:.3f} s / {passes} passes, alone "
              f"{alone_s:.3f} s / {alone_p} passes; D-RISE {s:.3f} s / {p} passes", flush=True)
    if not counts:
        raise SystemExit("the detector found nothing in these scenes")
    machine = platform.processor() or platform.machine()
    print(f"\n{insp.sessions.provider}, {machine}, {os.cpu_count()} cores; "
          f"{len(counts)} scenes with {sum(counts)} detections ({statistics.mean(counts):.1f} per image)")
    print("| method | s / image | s / detection | forward passes / image | forward passes / detection |")
    print("|---|---|---|---|---|")
    names = {"together": "SISE, an image's detections together", "alone": "SISE, each detection alone",
             "drise": f"D-RISE ({args.drise_masks} masks, shared by an image's detections)"}
    medians = {}
    for key, values in rows.items():
        per_image = statistics.median(s for s, _, _ in values)
        per_det = statistics.median(s / k for s, _, k in values)
        passes = statistics.median(p for _, p, _ in values)
        passes_det = statistics.median(p / k for _, p, k in values)
        medians[key] = (per_image, passes)
        print(f"| {names[key]} | {per_image:.3f} | {per_det:.3f} | {passes:.0f} | {passes_det:.0f} |")
    together, alone, drise = medians["together"], medians["alone"], medians["drise"]
    print(f"\nSISE together vs alone: {alone[0] / together[0]:.2f}x faster, "
          f"{alone[1] / together[1]:.2f}x fewer passes; D-RISE vs SISE together: "
          f"{drise[0] / together[0]:.1f}x the time, "
          f"{drise[1] / together[1]:.1f}x the passes (medians per image)")


if __name__ == "__main__":
    main()
