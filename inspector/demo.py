"""`inspector demo`: explain the bundled defect samples with the bundled example classifier, and the
bundled scenes with the bundled example detector (each detection), and write overlays, per-layer strips,
JSON sidecars and a one-page HTML summary."""

from __future__ import annotations

import json
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
from .engine.method.nms import iou
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


def _detector_rows(store: Store, out: str) -> list[dict]:
    """The bundled detector on its scenes: per scene every detection, matched to the true defect its box
    overlaps most, with the share of its evidence on that defect's exact mask."""
    folder = os.path.join(example_dir(), "detector")
    insp = Inspector(load_config(os.path.join(folder, "config.yaml")))
    with open(os.path.join(folder, "truth.json"), encoding="utf-8") as f:
        truth = json.load(f)["scenes"]  # inspector.quality.synthetic.write_scenes
    job = start_job(insp, store, kind="demo", out_dir=out)
    rows = []
    for i, scene in enumerate(truth, 1):
        name = os.path.splitext(os.path.basename(scene["image"]))[0]
        outcome = explain_and_record(job, os.path.join(folder, scene["image"]))
        if outcome.state not in ("explained", "done"):
            raise InspectorError(f"the bundled scene {scene['image']} could not be explained: "
                                 f"{outcome.error}")
        result = store.result(outcome.result_id)
        with np.load(result["artifacts"]["npz"]) as maps:
            saliency = maps["saliency_full"]
        true_boxes = np.array([d["box"] for d in scene["defects"]], np.float64).reshape(-1, 4)
        found = []
        for d, s in zip(result["detections"], saliency):
            box = np.array([d["x1"], d["y1"], d["x2"], d["y2"]])
            overlaps = iou(box, true_boxes) if len(true_boxes) else np.zeros(0)
            line = f"{d['position']}: {d['class_name']} {d['score']:.2f}"
            if len(overlaps) and overlaps.max() >= 0.5:
                defect = scene["defects"][int(np.argmax(overlaps))]
                mask = cv2.imread(os.path.join(folder, defect["mask"]), cv2.IMREAD_GRAYSCALE) > 127
                on = float(s[mask].sum() / max(s.sum(), 1e-12))
                line += (f" on the true {defect['label']} (IoU {overlaps.max():.2f}): {100 * on:.0f}% of its "
                         f"evidence on the defect ({100 * mask.mean():.1f}% of the image)")
            else:
                line += " matches no true defect (IoU < 0.5)"
            found.append(line)
        link = {k: quote(os.path.relpath(p, out).replace(os.sep, "/"))
                for k, p in result["artifacts"].items()}
        rows.append({"name": name, "truth": ", ".join(d["label"] for d in scene["defects"]) or "none",
                     "found": found, "masks": result["masks"], "seconds": result["seconds"],
                     "overlay": link["overlay"],
                     "each": [link[f"overlay.{d['position']}"] for d in result["detections"]]})
        classes = ", ".join(d["class_name"] for d in result["detections"]) or "none"
        print(f"[detector {i}/{len(truth)}] {name}: {len(found)} detection(s) "
              f"({classes}; truth: {rows[-1]['truth']}), "
              f"{result['masks']} masks, {result['seconds']:.2f} s", flush=True)
    store.end_run(job.run_id, "finished")
    return rows


def run_demo(out: str) -> tuple[str, float]:
    """Explain every bundled sample and scene (recorded in ``<out>/results.db``; a second run finds them
    there); returns (path of index.html, seconds)."""
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
        detector_rows = _detector_rows(store, out)
    seconds = time.perf_counter() - start
    page = documents.render("demo.html", title="SISE Inspector demo", version=__version__, rows=rows,
                            detector_rows=detector_rows, preset=insp.method.preset,
                            provider=insp.sessions.provider, seconds=seconds)
    index = os.path.join(out, "index.html")
    write_atomic(index, page)
    return index, seconds
