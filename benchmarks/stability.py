"""How much SISE's maps move under an invisible change of the image: Pearson r of the fused map and of each
layer map between an image and copies with Gaussian noise (sigma = 1/255 and 2/255, several seeds),
explaining the clean image's top class in both, for fusion variants computed from the same layer maps.

    python benchmarks/stability.py [--sets photos defects] [--seeds 3] [--defects 30]
        [--widths 0.1 0.25 0.5] [--preset quality]

photos:  EfficientNet-Lite0 (real ImageNet weights, exported by scripts/export_efficientnet_lite0.py) on
         8 scikit-image photos; needs the dev extra (torch for the export).
defects: the bundled defect model on held-out synthetic images (seed 11, not the training seed).
Noise is added to the 8-bit image and rounded back to 8 bits (what a second photograph would differ by).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

from inspector import Inspector
from inspector.engine.method.fusion import fuse
from inspector.quality.synthetic import sample

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry",
          "camera"]
SIGMAS = (1, 2)  # in 8-bit gray levels


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return float(np.array_equal(a, b))
    return float(np.corrcoef(a, b)[0, 1])


def noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(image + rng.normal(0.0, sigma, image.shape)), 0, 255).astype(np.uint8)


def photo_engine(preset: str) -> tuple[Inspector, list[tuple[str, np.ndarray]]]:
    import skimage.data

    model = os.path.join(tempfile.mkdtemp(), "efficientnet_lite0.onnx")
    script = os.path.join(ROOT, "scripts", "export_efficientnet_lite0.py")
    subprocess.run([sys.executable, script, "-o", model], check=True, capture_output=True)
    engine = Inspector.from_options(
        model=model, preprocess={"size": [224, 224], "resize": "shorter_side_center_crop",
                                 "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        method={"preset": preset}, runtime={"providers": ["CPUExecutionProvider"]})
    images = []
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        images.append((name, rgb))
    return engine, images


def defect_engine(preset: str, count: int) -> tuple[Inspector, list[tuple[str, np.ndarray]]]:
    import yaml

    config = os.path.join(ROOT, "inspector", "example", "config.yaml")
    with open(config) as f:
        options = yaml.safe_load(f)
    options["model"] = os.path.join(os.path.dirname(config), options["model"])
    options["method"] = {"preset": preset}
    engine = Inspector.from_options(**options)
    return engine, [(f"defect_{i:02d}", sample(11, i).image) for i in range(count)]


def variants(widths: list[float]) -> dict[str, tuple[str, float]]:
    return {"otsu (paper)": ("otsu", 0.0), **{f"soft w={w:g}": ("soft", w) for w in widths}}


def fused_maps(exp, fusions: dict) -> dict[str, np.ndarray]:
    layers = [m if n else None for m, n in zip(exp.layer_maps, exp.masks_per_layer)]
    return {name: fuse(layers, exp.saliency.shape, kind, width) for name, (kind, width) in fusions.items()}


def run_set(title: str, engine: Inspector, images, seeds: int, fusions: dict) -> dict:
    """Per image and sigma: mean r over seeds of each fused variant and of each layer map."""
    print(f"\n{title}: {len(images)} images, sigma {', '.join(f'{s}/255' for s in SIGMAS)}, {seeds} seeds")
    print(f"{'image':>22} | sigma | " + " | ".join(f"{n:>12}" for n in fusions)
          + " | layer maps r (min..max)")
    means = {(name, s): [] for name in fusions for s in SIGMAS}
    for image_name, image in images:
        clean = engine.explain(image)
        reference = fused_maps(clean, fusions)
        for sigma in SIGMAS:
            rs = {name: [] for name in fusions}
            layer_rs = []
            for seed in range(seeds):
                exp = engine.explain(noisy(image, sigma, seed), target=clean.target)
                for name, fused in fused_maps(exp, fusions).items():
                    rs[name].append(pearson(reference[name], fused))
                layer_rs += [pearson(a, b) for a, b, n in
                             zip(clean.layer_maps, exp.layer_maps, clean.masks_per_layer) if n]
            for name in fusions:
                means[(name, sigma)].append(float(np.mean(rs[name])))
            cells = " | ".join(f"{np.mean(rs[n]):12.3f}" for n in fusions)
            print(f"{image_name:>22} | {sigma}/255 | {cells} | {min(layer_rs):.3f}..{max(layer_rs):.3f}",
                  flush=True)
    for sigma in SIGMAS:
        cells = " | ".join(f"{np.mean(means[(n, sigma)]):12.3f}" for n in fusions)
        print(f"{'mean':>22} | {sigma}/255 | {cells}")
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["photos", "defects"], choices=["photos", "defects"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--defects", type=int, default=30)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--preset", default="quality")
    args = parser.parse_args()
    fusions = variants(args.widths)
    if "defects" in args.sets:
        run_set("bundled defect model", *defect_engine(args.preset, args.defects), args.seeds, fusions)
    if "photos" in args.sets:
        run_set("EfficientNet-Lite0 (ImageNet weights)", *photo_engine(args.preset), args.seeds, fusions)


if __name__ == "__main__":
    main()
