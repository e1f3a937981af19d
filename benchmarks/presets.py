"""Cost and agreement of the method presets against full SISE (`quality`), judged against `quality`'s own
noise band: per image, Pearson r of a preset's fused map with quality's, beside quality's self-agreement
(r between quality's map of the image and of copies with Gaussian noise of sigma = 2/255, several seeds).
A preset is "in the band" on an image when it agrees with quality at least as well as quality agrees with
itself under that invisible noise.

    python benchmarks/presets.py [--sets photos defects] [--seeds 3] [--defects 30] [--fusion soft]
    python benchmarks/presets.py --fractions 0.5 0.8 0.95   # the frontier: quality against score_fraction F

--fractions replaces the presets with `score_fraction` F on top of `quality` for each F given: how many of
the maps must be scored before the sampled estimator stays inside quality's band on every image.

photos:  EfficientNet-Lite0 (real ImageNet weights) on 8 scikit-image photos, 224x224; needs the dev extra.
defects: the bundled defect model on held-out synthetic images (seed 11, not the training seed).
Forward passes are the masks scored (`masks_per_layer`); seconds are one explanation on this machine's CPU.
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
import yaml
from stability import PHOTOS, noisy, pearson

from inspector import Inspector
from inspector.engine.method.fusion import FUSIONS
from inspector.quality.synthetic import sample

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VARIANTS = {
    "quality": {"preset": "quality"},
    "balanced": {"preset": "balanced"},
    "fast": {"preset": "fast"},
    "Ada-SISE (old balanced)": {"preset": "quality", "adaptive": True},
    "Ada-SISE <=16 (old fast)": {"preset": "quality", "adaptive": True, "max_masks_per_layer": 16},
    # the sampled estimator at about the cost of the two above, for a comparison at equal cost
    "score_fraction 0.25": {"preset": "quality", "score_fraction": 0.25},
    "score_fraction 0.07": {"preset": "quality", "score_fraction": 0.07},
}
SIGMA = 2  # gray levels


def photo_set() -> tuple[dict, list]:
    import skimage.data

    model = os.path.join(tempfile.mkdtemp(), "efficientnet_lite0.onnx")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_efficientnet_lite0.py"),
                    "-o", model], check=True, capture_output=True)
    common = {"model": model,
              "preprocess": {"size": [224, 224], "resize": "shorter_side_center_crop",
                             "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
              "runtime": {"providers": ["CPUExecutionProvider"]}}
    images = []
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        images.append((name, np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[..., :3]))
    return common, images


def defect_set(count: int) -> tuple[dict, list]:
    config = os.path.join(ROOT, "inspector", "example", "config.yaml")
    with open(config) as f:
        options = yaml.safe_load(f)
    options["model"] = os.path.join(os.path.dirname(config), options["model"])
    options.pop("method", None)
    return options, [(f"defect_{i:02d}", sample(11, i).image) for i in range(count)]


def variants(fractions: list[float] | None) -> dict[str, dict]:
    if not fractions:
        return VARIANTS
    return {"quality": VARIANTS["quality"],
            **{f"score_fraction {f:g}": {"preset": "quality", "score_fraction": f} for f in fractions}}


def engines(common: dict, fusion: str, fractions: list[float] | None) -> dict[str, Inspector]:
    out = {}
    for name, method in variants(fractions).items():
        method = {**method, "fusion": fusion, "chunk_size": 64}
        out[name] = Inspector.from_options(**common, method=method)
    return out


def run_set(title: str, common: dict, images: list, seeds: int, fusion: str,
            fractions: list[float] | None) -> None:
    insp = engines(common, fusion, fractions)
    warm = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    for engine in insp.values():  # first runs allocate; keep them out of the timings
        engine.explain(warm)
    quality = insp["quality"]
    names = list(insp)
    print(f"\n{title}: {len(images)} images, fusion {fusion}, "
          f"quality's band: sigma {SIGMA}/255, {seeds} seeds")
    print(f"{'image':>22} | {'band':>5} | " + " | ".join(f"{n:>24}" for n in names[1:]))
    print(f"{'':>22} | {'':>5} | " + " | ".join(f"{'r  passes  s':>24}" for _ in names[1:]))
    rows = {n: [] for n in names}
    for image_name, image in images:
        t = time.perf_counter()
        ref = quality.explain(image)
        rows["quality"].append((1.0, 1.0, ref.total_masks, time.perf_counter() - t, True))
        band = float(np.mean([pearson(ref.saliency, quality.explain(noisy(image, SIGMA, s),
                                                                      target=ref.target).saliency)
                              for s in range(seeds)]))
        cells = []
        for name in names[1:]:
            t = time.perf_counter()
            exp = insp[name].explain(image, target=ref.target)
            seconds = time.perf_counter() - t
            r = pearson(exp.saliency, ref.saliency)
            rows[name].append((r, exp.total_masks / ref.total_masks, exp.total_masks, seconds, r >= band))
            cells.append(f"{r:.3f}{'*' if r >= band else ' '} {exp.total_masks:5d} {seconds:6.2f}")
        print(f"{image_name:>22} | {band:.3f} | " + " | ".join(f"{c:>24}" for c in cells), flush=True)
    print(f"{title}, means ('*' above: in quality's band on that image):")
    print("  variant                  | passes | of quality | seconds | r vs quality (min) | in band")
    for name, r in rows.items():
        a = np.array(r, dtype=float)
        print(f"  {name:<24} | {a[:, 2].mean():6.0f} | {a[:, 1].mean():10.3f} | {a[:, 3].mean():7.2f} | "
              f"{a[:, 0].mean():.3f} ({a[:, 0].min():.3f}) | {int(a[:, 4].sum())}/{len(a)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["defects", "photos"], choices=["photos", "defects"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--defects", type=int, default=30)
    parser.add_argument("--fusion", default="soft", choices=FUSIONS,
                        help="method.fusion of every variant (default soft, as the bundled configs)")
    parser.add_argument("--fractions", nargs="+", type=float, metavar="F",
                        help="compare quality with score_fraction F (0 < F < 1) instead of the presets")
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__} CPU, {os.cpu_count()} cores")
    if "defects" in args.sets:
        run_set("bundled defect model", *defect_set(args.defects), args.seeds, args.fusion, args.fractions)
    if "photos" in args.sets:
        run_set("EfficientNet-Lite0 (ImageNet weights)", *photo_set(), args.seeds, args.fusion,
                args.fractions)


if __name__ == "__main__":
    main()
