"""`inspector demo`: explain the bundled defect samples with the bundled example model and write
overlays, per-layer strips, JSON sidecars and a one-page HTML summary."""

from __future__ import annotations

import html
import os
import time
from importlib import resources

import cv2
import numpy as np

from .config import load_config
from .engine import Inspector
from .jobs import explain_file


def example_dir() -> str:
    return str(resources.files("inspector") / "example")


def _row(name: str, exp, mask: np.ndarray | None, classes) -> str:
    pred = classes[exp.predicted]
    inside = ""
    if mask is not None and mask.any():
        energy = float(exp.saliency_full[mask].sum() / max(exp.saliency_full.sum(), 1e-12))
        inside = f"{100 * energy:.0f}% of the evidence lies on the defect ({100 * mask.mean():.1f}% of the image)"
    return (f"<tr><td><b>{html.escape(name)}</b><br>predicted <b>{html.escape(pred)}</b> "
            f"({exp.scores[exp.predicted]:.3f})<br>{exp.total_masks} masks, {exp.timings['total']:.2f} s"
            f"<br>{inside}</td>"
            f"<td><img src='{name}_overlay.png' width=192></td><td><img src='{name}_layers.png' height=128></td></tr>")


def run_demo(out: str) -> tuple[str, float]:
    """Explain every bundled sample; returns (path of index.html, seconds)."""
    start = time.perf_counter()
    folder = example_dir()
    cfg = load_config(os.path.join(folder, "config.yaml"))
    insp = Inspector(cfg)
    os.makedirs(out, exist_ok=True)
    samples = sorted(f for f in os.listdir(os.path.join(folder, "samples"))
                     if f.endswith(".png") and not f.endswith("_mask.png"))
    rows = []
    for i, file in enumerate(samples, 1):
        name = os.path.splitext(file)[0]
        exp, _ = explain_file(insp, os.path.join(folder, "samples", file), out)
        mask_path = os.path.join(folder, "samples", f"{name}_mask.png")
        mask = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE) > 127 if os.path.isfile(mask_path) else None
        rows.append(_row(name, exp, mask, cfg.classes))
        print(f"[{i}/{len(samples)}] {name}: predicted {cfg.classes[exp.predicted]} "
              f"({exp.scores[exp.predicted]:.3f}), {exp.total_masks} masks, {exp.timings['total']:.2f} s", flush=True)
    seconds = time.perf_counter() - start
    page = ("<!doctype html><meta charset=utf-8><title>SISE Inspector demo</title>"
            "<style>body{font-family:sans-serif}td{padding:6px;vertical-align:top}</style>"
            "<h1>SISE Inspector demo</h1><p>Bundled example classifier (inspector/example), SISE with the "
            f"<i>{insp.method.preset}</i> preset on {insp.sessions.provider}; {len(samples)} images in "
            f"{seconds:.1f} s. Overlays: red = strong evidence for the predicted class. Layer strips: each "
            "block's map, shallow to deep, then the fused map.</p><table>" + "".join(rows) + "</table>")
    index = os.path.join(out, "index.html")
    with open(index + ".part", "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(index + ".part", index)
    return index, seconds
