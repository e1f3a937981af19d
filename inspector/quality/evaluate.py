"""`inspector evaluate`: explanation quality against exact defect masks, per method, overall and per
defect-size bin, written as per-image CSV and summary tables (CSV and Markdown).

The explained class is the ground-truth defect class; images labelled ``ok`` have no mask and are
skipped. Drop/Increase and deletion/insertion re-score the model through the same masking convention
as the explanations (the mask multiplies the pre-processed image).
"""

from __future__ import annotations

import csv
import io
import os
import time

import cv2
import numpy as np

from ..common.atomic import write_group
from ..common.reading import MANIFEST_LIMIT, image_limit, read_regular
from ..common.spreadsheet import csv_text
from ..engine.inspector import Inspector
from ..engine.runtime import preprocess as pre
from ..errors import InspectorError
from . import metrics as M

SIZE_BINS = (("small", 0.0, 0.01), ("medium", 0.01, 0.05), ("large", 0.05, 1.01))
COLUMNS = ("ebpg", "miou", "bbox", "drop", "increase", "deletion", "insertion", "seconds", "masks")


def size_bin(area: float) -> str:
    return next(name for name, lo, hi in SIZE_BINS if lo <= area < hi)


def read_mask(path: str, max_pixels: int) -> np.ndarray | None:
    """A ground-truth mask as a grey image, or None where it is not a readable image."""
    try:
        data = read_regular(path, image_limit(max_pixels), what="mask image")
    except OSError:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None


def read_manifest(data: str) -> list[dict]:
    path = os.path.join(data, "manifest.csv")
    try:
        text = read_regular(path, MANIFEST_LIMIT, what="manifest").decode("utf-8", "replace")
        return list(csv.DictReader(io.StringIO(text, newline="")))
    except OSError as e:
        raise InspectorError(f"{path}: cannot read the manifest ({e.strerror}); make a data set with "
                             "`python -m inspector.synthetic --out DIR`") from e


def evaluate_image(insp: Inspector, image_path: str, mask: np.ndarray, target: int,
                   methods: list[str]) -> dict:
    image = pre.read_image(image_path, max_pixels=insp.config.preprocess.max_pixels)  # decoded once
    tensor, _ = insp.prepare(image)
    h, w = insp.size
    mask_in = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    base = float(insp.score_masks(tensor, np.ones((1, h, w), np.float32), target)[0])

    def score(masks):
        return insp.score_masks(tensor, masks, target)
    out = {}
    for method in methods:
        t = time.perf_counter()
        exp = insp.explain(image, target=target, method=method)
        seconds = time.perf_counter() - t
        s = exp.saliency
        drop, increase = M.drop_increase(s, base, score)
        deletion, insertion = M.deletion_insertion(s, score)
        out[method] = {"ebpg": M.ebpg(s, mask_in), "miou": M.miou(s, mask_in), "bbox": M.bbox(s, mask_in),
                       "drop": drop, "increase": float(increase), "deletion": deletion,
                       "insertion": insertion, "seconds": seconds, "masks": exp.total_masks}
    return out


def summarise(rows: list[dict], methods: list[str]) -> list[dict]:
    return mean_by_bin(rows, methods, COLUMNS, ("ebpg", "miou", "bbox", "drop", "increase"), "images")


def mean_by_bin(rows: list[dict], methods: list[str], columns, percent, count: str) -> list[dict]:
    """Per method and size bin ("all" first, then SIZE_BINS): the row count (under ``count``) and the mean
    of each of ``columns``, those in ``percent`` times 100. Bins without rows are left out."""
    table = []
    for method in methods:
        for name in ("all",) + tuple(b[0] for b in SIZE_BINS):
            sel = [r for r in rows if r["method"] == method and (name == "all" or r["size_bin"] == name)]
            if not sel:
                continue
            entry = {"method": method, "bin": name, count: len(sel)}
            for col in columns:
                value = float(np.mean([r[col] for r in sel]))
                entry[col] = 100 * value if col in percent else value
            table.append(entry)
    return table


def markdown(table: list[dict]) -> str:
    head = ("| method | size bin | images | EBPG % | mIoU % | Bbox % | Drop % (lower) | Increase % | "
            "Deletion AUC (lower) | Insertion AUC | s / image | masks / image |")
    lines = [head, "|" + "---|" * 12]
    for t in table:
        lines.append(f"| {t['method']} | {t['bin']} | {t['images']} | {t['ebpg']:.2f} | {t['miou']:.2f} | "
                     f"{t['bbox']:.2f} | {t['drop']:.2f} | {t['increase']:.2f} | {t['deletion']:.3f} | "
                     f"{t['insertion']:.3f} | {t['seconds']:.3f} | {t['masks']:.0f} |")
    return "\n".join(lines) + "\n"


def _csv_text(rows: list[dict]) -> str:
    return csv_text(list(rows[0]), rows)


def run_evaluation(insp: Inspector, data: str, methods: list[str], out: str, *, limit: int | None = None,
                   progress=None) -> list[dict]:
    entries = [e for e in read_manifest(data) if e["label"] != "ok"][:limit]
    if not entries:
        raise InspectorError(f"{data}: the manifest lists no defect images")
    rows = []
    for i, e in enumerate(entries, 1):
        mask = read_mask(os.path.join(data, e["mask"]), insp.config.preprocess.max_pixels)
        if mask is None:
            raise InspectorError(f"{os.path.join(data, e['mask'])}: unreadable mask")
        target = insp.class_index(e["label"])
        per_method = evaluate_image(insp, os.path.join(data, e["image"]), mask > 127, target, methods)
        area = float(e["area_fraction"])
        for method, values in per_method.items():
            rows.append({"id": e["id"], "label": e["label"], "area_fraction": area,
                         "size_bin": size_bin(area), "method": method, **values})
        if progress:
            progress(i, len(entries))
    os.makedirs(out, exist_ok=True)
    table = summarise(rows, methods)
    write_group({os.path.join(out, "per_image.csv"): _csv_text(rows),
                 os.path.join(out, "summary.csv"): _csv_text(table),
                 os.path.join(out, "summary.md"): markdown(table)})
    return table
