"""`inspector evaluate` on a detector: explanation quality of each true-positive detection against its
defect's exact mask, per method, overall and per defect-size bin.

The data is a folder with ``truth.json`` (``python -m inspector.synthetic --scenes``): per scene its image
and each defect's label, box and exact mask. Every method explains the same detections (those the model
keeps at ``detect``'s settings); a detection is a true positive when its class is the defect's and its box
overlaps the defect's box by IoU >= 0.5, matched highest score first, each defect once. Per true positive:
EBPG (share of the map's energy on the defect's mask), pointing game (the map's peak on the mask), Bbox,
deletion and insertion of the detection's own D-RISE similarity (the score its explanation explains),
seconds and masked forward passes per detection as the image's detections are explained together (the
image's, divided by its detections: their masked images are shared), and ``masks``: the forward passes
the detection's explanation uses (what it would cost alone).
"""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np

from ..common.atomic import write_group
from ..common.reading import MANIFEST_LIMIT, read_regular
from ..common.spreadsheet import csv_text
from ..engine.inspector import Inspector
from ..engine.method.nms import iou
from ..engine.runtime import preprocess as pre
from ..errors import InspectorError
from . import metrics as M
from .evaluate import mean_by_bin, size_bin

COLUMNS = ("ebpg", "pointing", "bbox", "deletion", "insertion", "seconds", "masks", "passes")
MATCH_IOU = 0.5


def read_truth(data: str) -> list[dict]:
    path = os.path.join(data, "truth.json")
    try:
        truth = json.loads(read_regular(path, MANIFEST_LIMIT, what="truth file"))
        return truth["scenes"]
    except OSError as e:
        raise InspectorError(f"{path}: cannot read the truth file ({e.strerror}); make a data set with "
                             "`python -m inspector.synthetic --scenes --out DIR`") from e
    except (ValueError, KeyError, TypeError) as e:
        raise InspectorError(f"{path}: not a truth file of scenes (see python -m inspector.synthetic "
                             f"--scenes): {e}") from e


def match(found: list, defects: list[dict], classes) -> list[tuple[int, int]]:
    """(detection index, defect index) of the true positives: greedy by score (the detections come
    highest first), same class, IoU >= MATCH_IOU, each defect at most once."""
    used, pairs = set(), []
    boxes = np.array([d["box"] for d in defects], np.float64).reshape(-1, 4)
    for k, det in enumerate(found):
        if not len(boxes):
            break
        overlaps = iou(np.asarray(det.box, np.float64), boxes)
        for j in np.argsort(-overlaps, kind="stable"):
            if overlaps[j] < MATCH_IOU:
                break
            if j not in used and defects[j]["label"] == classes[det.class_index]:
                used.add(int(j))
                pairs.append((k, int(j)))
                break
    return pairs


def pointing(saliency: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when the map's maximum (its first, in row-major order) lies on the mask."""
    return float(mask.ravel()[int(np.argmax(saliency))])


def evaluate_scene(insp: Inspector, data: str, entry: dict, methods: list[str]) -> list[dict]:
    image = pre.read_image(os.path.join(data, entry["image"]), max_pixels=insp.config.preprocess.max_pixels)
    tensor, _ = insp.prepare(image)
    h, w = insp.size
    classes = insp.config.classes or [str(i) for i in range(insp.contract.num_classes)]
    rows = []
    per_method = {}
    for method in methods:
        passes, t = insp.sessions.masked_images, time.perf_counter()
        found = insp.explain(image, method=method)
        per_method[method] = (found, time.perf_counter() - t, insp.sessions.masked_images - passes)
    detections = [e.detection for e in per_method[methods[0]][0]]
    for method, (found, *_) in per_method.items():
        if [e.detection for e in found] != detections:
            raise InspectorError(f"{entry['image']}: method {method} explained other detections than "
                                 f"{methods[0]} (the detector is not deterministic?)")
    for k, j in match(detections, entry["defects"], classes):
        defect = entry["defects"][j]
        mask = cv2.imread(os.path.join(data, defect["mask"]), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise InspectorError(f"{os.path.join(data, defect['mask'])}: unreadable mask")
        mask_in = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST) > 127
        d = detections[k]
        box = np.array(d.box_input, np.float32)

        def score(masks, d=d, box=box):
            return insp.score_masks(tensor, masks, d.class_index, box=box)
        for method, (found, seconds, passes) in per_method.items():
            s = found[k].saliency
            deletion, insertion = M.deletion_insertion(s, score)
            rows.append({"image": entry["image"], "detection": k + 1, "label": defect["label"],
                         "score": d.score, "area_fraction": float((mask > 127).mean()), "method": method,
                         "ebpg": M.ebpg(s, mask_in), "pointing": pointing(s, mask_in),
                         "bbox": M.bbox(s, mask_in),
                         "deletion": deletion, "insertion": insertion, "seconds": seconds / len(found),
                         "masks": found[k].total_masks, "passes": passes / len(found)})
    return rows


def summarise(rows: list[dict], methods: list[str]) -> list[dict]:
    return mean_by_bin(rows, methods, COLUMNS, ("ebpg", "pointing", "bbox"), "detections")


def markdown(table: list[dict]) -> str:
    head = ("| method | size bin | true-positive detections | EBPG % | pointing game % | Bbox % | "
            "Deletion AUC (lower) | Insertion AUC | s / detection | forward passes / detection | "
            "its explanation's passes |")
    lines = [head, "|" + "---|" * 11]
    for t in table:
        lines.append(f"| {t['method']} | {t['bin']} | {t['detections']} | {t['ebpg']:.2f} | "
                     f"{t['pointing']:.2f} | "
                     f"{t['bbox']:.2f} | {t['deletion']:.3f} | {t['insertion']:.3f} | {t['seconds']:.3f} | "
                     f"{t['passes']:.0f} | {t['masks']:.0f} |")
    return "\n".join(lines) + "\n"


def run_detector_evaluation(insp: Inspector, data: str, methods: list[str], out: str, *,
                            limit: int | None = None, progress=None) -> list[dict]:
    scenes = read_truth(data)[:limit]
    if not scenes:
        raise InspectorError(f"{os.path.join(data, 'truth.json')}: lists no scenes")
    rows = []
    for i, entry in enumerate(scenes, 1):
        for row in evaluate_scene(insp, data, entry, methods):
            rows.append({**row, "size_bin": size_bin(row["area_fraction"])})
        if progress:
            progress(i, len(scenes))
    if not rows:
        raise InspectorError(f"{data}: the detector found none of the defects (no true positive at IoU "
                             f"{MATCH_IOU}); nothing to evaluate")
    os.makedirs(out, exist_ok=True)
    table = summarise(rows, methods)
    write_group({os.path.join(out, "per_detection.csv"): csv_text(list(rows[0]), rows),
                 os.path.join(out, "summary.csv"): csv_text(list(table[0]), table),
                 os.path.join(out, "summary.md"): markdown(table)})
    return table
