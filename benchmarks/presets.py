"""Speed and map agreement of the method presets (and Ada-SISE) against full SISE (`quality`), on
EfficientNet-Lite0 with its real ImageNet weights and natural images bundled with scikit-image.

    python benchmarks/presets.py [--fusion otsu|soft]
Agreement: Pearson r of the fused maps, and IoU of their top-15 % regions (the region Drop% keeps).
Needs the dev extra (torch for the export, scikit-image for the images).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
import skimage.data

from inspector import Inspector
from inspector.fusion import FUSIONS

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VARIANTS = {
    "quality": {"preset": "quality"},
    "balanced": {"preset": "balanced"},
    "fast": {"preset": "fast"},
    "mu=0.3": {"preset": "quality", "mu": 0.3},
    "mu=.5+cap32": {"preset": "quality", "mu": 0.5, "max_masks_per_layer": 32},
}
IMAGES = ["coffee", "chelsea", "astronaut", "rocket"]


def top_region(saliency: np.ndarray, fraction: float = 0.15) -> np.ndarray:
    return saliency >= np.quantile(saliency, 1.0 - fraction)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fusion", default="otsu", choices=FUSIONS,
                        help="method.fusion of every variant (default otsu, the paper's)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    model = os.path.join(folder, "efficientnet_lite0.onnx")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_efficientnet_lite0.py"),
                    "-o", model], check=True, capture_output=True)
    threads = os.cpu_count() or 1
    common = {"model": model,
              "preprocess": {"size": [224, 224], "resize": "shorter_side_center_crop",
                             "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
              "runtime": {"providers": ["CPUExecutionProvider"], "intra_op_threads": threads}}
    engines = {name: Inspector.from_options(**common, method={**m, "chunk_size": 64, "fusion": args.fusion})
               for name, m in VARIANTS.items()}
    warm = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    for engine in engines.values():  # first runs allocate; keep them out of the timings
        engine.explain(warm)
    print(f"EfficientNet-Lite0 (ImageNet weights), 224x224, onnxruntime {ort.__version__} CPU, "
          f"{threads} threads")
    print("image | variant | class | masks | seconds | speed-up | r vs quality | top-15% IoU")
    summary = {name: [] for name in VARIANTS}
    for image_name in IMAGES:
        image = getattr(skimage.data, image_name)()
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        ref = None
        for name, engine in engines.items():
            t = time.perf_counter()
            exp = engine.explain(image)
            seconds = time.perf_counter() - t
            if ref is None:
                ref, ref_seconds = exp, seconds
            r = float(np.corrcoef(exp.saliency.ravel(), ref.saliency.ravel())[0, 1])
            a, b = top_region(exp.saliency), top_region(ref.saliency)
            iou = float((a & b).sum() / (a | b).sum())
            summary[name].append((seconds, ref_seconds / seconds, r, iou, exp.total_masks))
            print(f"{image_name:>9} | {name:<11} | {exp.predicted:>5} | {exp.total_masks:>5} | "
                  f"{seconds:7.2f} | {ref_seconds / seconds:8.2f} | {r:12.3f} | {iou:.3f}", flush=True)
    print("mean over images:")
    for name, rows in summary.items():
        m = np.mean(rows, axis=0)
        print(f"  {name:<11} masks {m[4]:7.0f}  seconds {m[0]:6.2f}  speed-up {m[1]:5.2f}  "
              f"r {m[2]:.3f}  IoU {m[3]:.3f}")


if __name__ == "__main__":
    main()
