"""`inspector demo`: explain the bundled defect samples with the bundled example model and write
overlays, per-layer strips, JSON sidecars and a one-page HTML summary."""

from __future__ import annotations

import html
import os
import time
from importlib import resources

import cv2
import numpy as np

from .common.atomic import write_atomic
from .config import load_config
from .engine.inspector import Inspector
from .errors import InspectorError
from .jobs.record import explain_and_record, start_job
from .store import Store, default_url


def example_dir() -> str:
    return str(resources.files("inspector") / "example")


def _row(name: str, result: dict, saliency: np.ndarray, mask: np.ndarray | None, out: str) -> str:
    inside = ""
    if mask is not None and mask.any():
        energy = float(saliency[mask].sum() / max(saliency.sum(), 1e-12))
        inside = (f"{100 * energy:.0f}% of the evidence lies on the defect "
                  f"({100 * mask.mean():.1f}% of the image)")
    link = {k: html.escape(os.path.relpath(p, out), quote=True) for k, p in result["artifacts"].items()}
    return (f"<tr><td><b>{html.escape(name)}</b><br>"
            f"predicted <b>{html.escape(result['prediction_name'])}</b> "
            f"({result['confidence']:.3f})<br>{result['masks']} masks, {result['seconds']:.2f} s"
            f"<br>{inside}</td>"
            f"<td><img src='{link['overlay']}' width=192></td>"
            f"<td><img src='{link['layers']}' height=128></td></tr>")


def run_demo(out: str) -> tuple[str, float]:
    """Explain every bundled sample (recorded in ``<out>/results.db``; a second run finds them there);
    returns (path of index.html, seconds)."""
    start = time.perf_counter()
    folder = example_dir()
    cfg = load_config(os.path.join(folder, "config.yaml"))
    insp = Inspector(cfg)
    os.makedirs(out, exist_ok=True)
    samples = sorted(f for f in os.listdir(os.path.join(folder, "samples"))
                     if f.endswith(".png") and not f.endswith("_mask.png"))
    rows = []
    with Store(default_url(out)) as store:
        job = start_job(insp, store, kind="demo", out_dir=out)
        for i, file in enumerate(samples, 1):
            name = os.path.splitext(file)[0]
            outcome = explain_and_record(job, os.path.join(folder, "samples", file))
            if outcome.state not in ("explained", "done"):
                raise InspectorError(f"the bundled sample {file} could not be explained: {outcome.error}")
            result = store.result(outcome.result_id)
            with np.load(result["artifacts"]["npz"]) as maps:
                saliency = maps["saliency_full"]
            mask_path = os.path.join(folder, "samples", f"{name}_mask.png")
            mask = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE) > 127 if os.path.isfile(mask_path) else None
            rows.append(_row(name, result, saliency, mask, out))
            print(f"[{i}/{len(samples)}] {name}: predicted {result['prediction_name']} "
                  f"({result['confidence']:.3f}), {result['masks']} masks, {result['seconds']:.2f} s",
                  flush=True)
        store.end_run(job.run_id, "finished")
    seconds = time.perf_counter() - start
    page = ("<!doctype html><meta charset=utf-8><title>SISE Inspector demo</title>"
            "<style>body{font-family:sans-serif}td{padding:6px;vertical-align:top}</style>"
            "<h1>SISE Inspector demo</h1><p>Bundled example classifier (inspector/example), SISE with the "
            f"<i>{insp.method.preset}</i> preset on {insp.sessions.provider}; {len(samples)} images in "
            f"{seconds:.1f} s. Overlays: red = strong evidence for the predicted class. Layer strips: each "
            "block's map, shallow to deep, then the fused map.</p><table>" + "".join(rows) + "</table>")
    index = os.path.join(out, "index.html")
    write_atomic(index, page)
    return index, seconds
