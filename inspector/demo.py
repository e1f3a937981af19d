"""`inspector demo`: explain the bundled defect samples with the bundled example model and write
overlays, per-layer strips, JSON sidecars and a one-page HTML summary."""

from __future__ import annotations

import os
import time
from importlib import resources
from urllib.parse import quote

import cv2
import numpy as np

from .common import documents
from .common.atomic import write_atomic
from .common.version import __version__
from .config import load_config
from .engine.inspector import Inspector
from .errors import InspectorError
from .jobs.record import explain_and_record, start_job
from .store import Store, default_url


def example_dir() -> str:
    return str(resources.files("inspector") / "example")


def _row(name: str, result: dict, saliency: np.ndarray, mask: np.ndarray | None, out: str) -> dict:
    """One sample's line of the page (the template escapes every value)."""
    inside = ""
    if mask is not None and mask.any():
        energy = float(saliency[mask].sum() / max(saliency.sum(), 1e-12))
        inside = (f"{100 * energy:.0f}% of the evidence lies on the defect "
                  f"({100 * mask.mean():.1f}% of the image)")
    link = {k: quote(os.path.relpath(p, out).replace(os.sep, "/")) for k, p in result["artifacts"].items()}
    return {"name": name, "prediction": result["prediction_name"], "confidence": result["confidence"],
            "masks": result["masks"], "seconds": result["seconds"], "inside": inside,
            "overlay": link["overlay"], "layers": link["layers"]}


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
    page = documents.render("demo.html", title="SISE Inspector demo", version=__version__, rows=rows,
                            preset=insp.method.preset, provider=insp.sessions.provider, seconds=seconds)
    index = os.path.join(out, "index.html")
    write_atomic(index, page)
    return index, seconds
