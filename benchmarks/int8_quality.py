"""How far the int8 sampler (`runtime.sampler_precision: int8`) moves the explanations, in one run:

1. Pearson r of the fused maps, int8 sampler against float32 sampler (same image, same class, same
   selected maps), on the bundled defect model's 30 held-out images (synthetic seed 11) and on
   EfficientNet-Lite0 (real ImageNet weights) on 8 scikit-image photos.
2. EBPG and Bbox of SISE on 300 held-out defects with exact masks (`inspector evaluate`, synthetic seed
   777 as in docs/benchmarks.md), float32 against int8, overall and per defect-size bin.

    python benchmarks/int8_quality.py [--defects 30] [--evaluate 360] [--sets defects photos evaluate]
                                      [--runtime auto|onnxruntime|openvino]

Calibration images are never the evaluated ones: the defect model's are 12 synthetic images of seed 5,
Lite0's 12 other scikit-image pictures. Needs the dev extra (torch, for Lite0's export; scikit-image).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from inspector import Inspector
from inspector.quality.synthetic import sample

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry",
          "camera"]  # as benchmarks/stability.py
CALIBRATION_PHOTOS = ["cat", "brick", "coins", "colorwheel", "grass", "gravel", "moon", "page", "text",
                      "clock", "horse", "logo"]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return float(np.array_equal(a, b))
    return float(np.corrcoef(a, b)[0, 1])


def rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[..., :3]
    return image if image.dtype == np.uint8 else (255 * (image > 0)).astype(np.uint8)


def write_images(folder: str, images: list[tuple[str, np.ndarray]]) -> str:
    os.makedirs(folder, exist_ok=True)
    for name, image in images:
        cv2.imwrite(os.path.join(folder, f"{name}.png"), cv2.cvtColor(rgb(image), cv2.COLOR_RGB2BGR))
    return folder


def defect_options(work: str) -> dict:
    config = os.path.join(ROOT, "inspector", "example", "config.yaml")
    with open(config) as f:
        options = yaml.safe_load(f)
    options["model"] = os.path.join(work, "defect_resnet.sise.onnx")  # a copy: its cache is written beside it
    with open(os.path.join(os.path.dirname(config), "defect_resnet.sise.onnx"), "rb") as src, \
            open(options["model"], "wb") as dst:
        dst.write(src.read())
    calibration = [(f"cal_{i:02d}", sample(5, i).image) for i in range(12)]
    options["runtime"] = {**options.get("runtime", {}),
                          "calibration_images": write_images(os.path.join(work, "defect_cal"), calibration)}
    return options


def photo_options(work: str) -> dict:
    import skimage.data

    model = os.path.join(work, "efficientnet_lite0.onnx")
    script = os.path.join(ROOT, "scripts", "export_efficientnet_lite0.py")
    subprocess.run([sys.executable, script, "-o", model], check=True, capture_output=True)
    calibration = []
    for name in CALIBRATION_PHOTOS:
        try:
            calibration.append((name, getattr(skimage.data, name)()))
        except Exception as e:  # noqa: BLE001 - a picture scikit-image would download is left out
            print(f"  calibration photo {name} left out ({type(e).__name__})")
    return {"model": model,
            "preprocess": {"size": [224, 224], "resize": "shorter_side_center_crop",
                           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            "method": {"preset": "quality", "fusion": "soft"},
            "runtime": {"providers": ["CPUExecutionProvider"],
                        "calibration_images": write_images(os.path.join(work, "photo_cal"), calibration)}}


RUNTIME = "auto"  # runtime.sampler_runtime of the int8 engines (--runtime)


def engines(options: dict) -> tuple[Inspector, Inspector, float]:
    float32 = Inspector.from_options(**options)
    t = time.perf_counter()
    runtime = {**options["runtime"], "sampler_precision": "int8", "sampler_runtime": RUNTIME}
    int8 = Inspector.from_options(**{**options, "runtime": runtime})
    if int8.sampler_precision != "int8":
        raise SystemExit("the int8 sampler was refused (see the log); nothing to compare")
    return float32, int8, time.perf_counter() - t


def map_agreement(title: str, options: dict, images: list[tuple[str, np.ndarray]]) -> None:
    float32, int8, build = engines(options)
    print(f"\n{title}: {len(images)} images; int8 sampler on {int8.sessions.sampler_runtime}, built in "
          f"{build:.1f} s (calibration and check, once per model and calibration set)")
    print("  image                  | masks | r(fused) | r(layer maps, min) | float32 s | int8 s")
    rs = []
    for name, image in images:
        t = time.perf_counter()
        a = float32.explain(image)
        ta = time.perf_counter() - t
        t = time.perf_counter()
        b = int8.explain(image, target=a.target)
        tb = time.perf_counter() - t
        r = pearson(a.saliency, b.saliency)
        layers = [pearson(x, y) for x, y in zip(a.layer_maps, b.layer_maps)
                  if x is not None and y is not None]
        rs.append(r)
        print(f"  {name:<22} | {a.total_masks:5d} | {r:8.4f} | {min(layers):18.4f} | {ta:9.2f} | {tb:6.2f}",
              flush=True)
    print(f"  {title}: r(fused) mean {np.mean(rs):.4f}, min {np.min(rs):.4f}")


def evaluate(work: str, options: dict, count: int) -> None:
    data = os.path.join(work, "heldout")
    subprocess.run([sys.executable, "-m", "inspector.synthetic", "--out", data, "--count", str(count),
                    "--seed", "777"], check=True, capture_output=True, cwd=ROOT)
    tables = {}
    for precision in ("float32", "int8"):
        config = os.path.join(work, f"{precision}.yaml")
        with open(config, "w") as f:
            runtime = {**options["runtime"], "sampler_precision": precision}
            if precision == "int8":
                runtime["sampler_runtime"] = RUNTIME
            yaml.safe_dump({**options, "runtime": runtime}, f)
        out = os.path.join(work, f"eval_{precision}")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "inspector", "evaluate", "-c", config, "--data", data,
                        "--methods", "sise", "--out", out], check=True, capture_output=True, cwd=ROOT)
        print(f"  evaluate, {precision} sampler: {time.perf_counter() - t:.0f} s", flush=True)
        with open(os.path.join(out, "summary.csv"), newline="") as f:
            tables[precision] = {row["bin"]: row for row in csv.DictReader(f)}
    print(f"\nEBPG and Bbox of SISE on the held-out defects ({count} images of seed 777, ok ones skipped), "
          "points:")
    print("  size bin | images | EBPG float32 | EBPG int8 | diff | Bbox float32 | Bbox int8 | diff")
    for bin_name, row in tables["float32"].items():
        other = tables["int8"][bin_name]
        e32, e8 = float(row["ebpg"]), float(other["ebpg"])
        b32, b8 = float(row["bbox"]), float(other["bbox"])
        print(f"  {bin_name:<8} | {row['images']:>6} | {e32:12.2f} | {e8:9.2f} | {e8 - e32:+.2f} | "
              f"{b32:12.2f} | {b8:9.2f} | {b8 - b32:+.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["defects", "photos", "evaluate"],
                        choices=["defects", "photos", "evaluate"])
    parser.add_argument("--defects", type=int, default=30)
    parser.add_argument("--evaluate", type=int, default=360, help="images of the evaluation set (1 in 6 ok)")
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "openvino"],
                        help="runtime.sampler_runtime of the int8 sampler (auto: OpenVINO when installed)")
    args = parser.parse_args()
    global RUNTIME
    RUNTIME = args.runtime
    work = tempfile.mkdtemp(prefix="sise-int8-quality-")
    options = defect_options(work)
    if "defects" in args.sets:
        map_agreement("bundled defect model", options,
                      [(f"defect_{i:02d}", sample(11, i).image) for i in range(args.defects)])
    if "photos" in args.sets:
        import skimage.data

        map_agreement("EfficientNet-Lite0", photo_options(work),
                      [(name, rgb(getattr(skimage.data, name)())) for name in PHOTOS])
    if "evaluate" in args.sets:
        evaluate(work, options, args.evaluate)


if __name__ == "__main__":
    main()
