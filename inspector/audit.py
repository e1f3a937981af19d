"""`inspector audit`: a resumable, shardable batch run over a folder or manifest.

Output folder layout:
    audit.json       the run's identity (settings hash, shard); a re-run must match it
    results.jsonl    one JSON line per finished image, appended and fsynced; the source of truth
    results.csv      the same rows as a table (rewritten atomically after every run)
    report.html      summary counts per class, timing, flagged and least confident images
    images/          per image: npz, overlay, layer strip, JSON sidecar (each written atomically)

Killing the process at any moment loses at most the image in flight: finished rows are on disk, a
half-written last line is dropped on resume, and per-image files appear only when complete.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import os
import sys
import time

from .engine import Inspector
from .errors import InspectorError
from .jobs import explain_file
from .preprocess import IMAGE_EXTENSIONS

CSV_FIELDS = ("key", "image", "prediction", "confidence", "target", "regions", "evidence_peak",
              "evidence_mean", "roi_inside", "flagged", "masks", "seconds", "error", "shard")


def list_inputs(source: str) -> list[tuple[str, str]]:
    """(key, path) pairs, sorted by key: a folder's image files (recursively, key = relative path) or the
    ``image`` column of a manifest CSV (key = the column's value, relative to the manifest)."""
    if os.path.isdir(source):
        out = []
        for root, _, files in os.walk(source):
            for f in files:
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    path = os.path.join(root, f)
                    out.append((os.path.relpath(path, source).replace(os.sep, "/"), path))
        return sorted(out)
    if os.path.isfile(source) and source.endswith(".csv"):
        with open(source, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and "image" not in rows[0]:
            raise InspectorError(f"{source}: a manifest needs an 'image' column")
        base = os.path.dirname(os.path.abspath(source))
        return sorted((r["image"], os.path.join(base, r["image"])) for r in rows)
    raise InspectorError(f"{source}: not a folder of images nor a manifest .csv")


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError as e:
        raise InspectorError(f"--shard {text!r}: expected I/N, e.g. 0/4") from e
    if count < 1 or not 0 <= index < count:
        raise InspectorError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def in_shard(key: str, index: int, count: int) -> bool:
    """Deterministic, order-independent split: by a hash of the image key."""
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % count == index


def settings_hash(insp: Inspector) -> str:
    s = insp.settings()
    keep = {k: s[k] for k in ("method", "preset", "mu", "adaptive", "max_masks_per_layer", "score",
                              "model_sha256")}
    keep["regions"] = vars(insp.config.regions)
    keep["roi"] = vars(insp.config.roi) if insp.config.roi else None
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_results(out: str) -> list[dict]:
    """Finished rows; a half-written last line (killed mid-write) is cut off the file."""
    path = os.path.join(out, "results.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    good = data[: data.rfind(b"\n") + 1]
    if len(good) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(good))
    return [json.loads(line) for line in good.decode().splitlines() if line.strip()]


def _append(handle, row: dict) -> None:
    handle.write(json.dumps(row, sort_keys=True) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def _write_atomic(path: str, text: str) -> None:
    with open(path + ".part", "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(path + ".part", path)


def write_table(out: str, rows: list[dict]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["key"]))
    _write_atomic(os.path.join(out, "results.csv"), buf.getvalue())


def write_report(out: str, rows: list[dict], title: str, lowest: int = 12) -> str:
    ok = [r for r in rows if not r["error"]]
    counts: dict[str, int] = {}
    for r in ok:
        counts[r["prediction"]] = counts.get(r["prediction"], 0) + 1
    seconds = sum(r["seconds"] for r in ok)

    def thumbs(selected):
        return "".join(f"<figure><img src='images/{html.escape(r['stem'])}_overlay.png' width=160>"
                       f"<figcaption>{html.escape(r['key'])}<br>{html.escape(r['prediction'])} "
                       f"{r['confidence']:.3f}</figcaption></figure>" for r in selected)
    flagged = [r for r in ok if r["flagged"]]
    least = sorted(ok, key=lambda r: r["confidence"])[:lowest]
    errors = "".join(f"<li>{html.escape(r['key'])}: {html.escape(r['error'])}</li>" for r in rows if r["error"])
    page = ("<!doctype html><meta charset=utf-8><title>SISE audit</title><style>body{font-family:sans-serif}"
            "figure{display:inline-block;margin:4px;font-size:11px}</style>"
            f"<h1>{html.escape(title)}</h1><p>{len(rows)} images: {len(ok)} explained, "
            f"{len(rows) - len(ok)} failed; {seconds:.1f} s of explanation time "
            f"({seconds / max(len(ok), 1):.2f} s per image).</p><h2>Predicted classes</h2><table>"
            + "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in sorted(counts.items()))
            + f"</table><h2>Flagged: evidence mostly outside the ROI ({len(flagged)})</h2>{thumbs(flagged)}"
            f"<h2>Least confident ({len(least)})</h2>{thumbs(least)}"
            f"<h2>Failed ({len(rows) - len(ok)})</h2><ul>{errors}</ul>")
    path = os.path.join(out, "report.html")
    _write_atomic(path, page)
    return path


def _stem(key: str) -> str:
    return os.path.splitext(key)[0].replace("/", "__")


def run_audit(insp: Inspector, source: str, out: str, *, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Explain every image of ``source`` in this shard that ``out`` has not finished yet."""
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    for folder in (out, os.path.join(out, "images")):  # temporary files of a killed run
        for name in os.listdir(folder):
            if name.endswith(".part"):
                os.unlink(os.path.join(folder, name))
    identity = {"settings": settings_hash(insp), "shard": list(shard), "source": os.path.abspath(source)}
    id_path = os.path.join(out, "audit.json")
    if os.path.isfile(id_path):
        with open(id_path) as f:
            previous = json.load(f)
        if previous["settings"] != identity["settings"] or previous["shard"] != identity["shard"]:
            raise InspectorError(f"{out} holds an audit with other settings or another shard; use another --out")
    else:
        _write_atomic(id_path, json.dumps(identity, indent=2))
    done = {r["key"] for r in read_results(out)}
    todo = [(k, p) for k, p in list_inputs(source) if in_shard(k, *shard) and k not in done]
    classes = insp.config.classes
    start = time.perf_counter()
    with open(os.path.join(out, "results.jsonl"), "a", encoding="utf-8") as results:
        for i, (key, path) in enumerate(todo, 1):
            t0 = time.perf_counter()
            row = {"key": key, "image": os.path.abspath(path), "stem": _stem(key), "shard": f"{shard[0]}/{shard[1]}",
                   "error": ""}
            try:
                exp, rv = explain_file(insp, path, os.path.join(out, "images"), stem=row["stem"])
                name = (lambda k: classes[k] if classes else str(k))
                row.update(prediction=name(exp.predicted), confidence=float(exp.scores[exp.predicted]),
                           target=name(exp.target), regions=len(rv.regions),
                           evidence_peak=max((r.peak for r in rv.regions), default=0.0),
                           evidence_mean=float(exp.saliency_full.mean()), roi_inside=rv.roi_inside,
                           flagged=rv.flagged, masks=exp.total_masks)
            except (InspectorError, OSError) as e:
                row.update(prediction="", confidence=0.0, target="", regions=0, evidence_peak=0.0,
                           evidence_mean=0.0, roi_inside=None, flagged=False, masks=0, error=str(e))
            row["seconds"] = time.perf_counter() - t0
            _append(results, row)
            elapsed = time.perf_counter() - start
            rate = i / elapsed
            print(f"\r[{i}/{len(todo)}] {rate:.2f} img/s, eta {(len(todo) - i) / rate:.0f} s ", end="",
                  file=sys.stderr, flush=True)
    if todo:
        print(file=sys.stderr)
    rows = read_results(out)
    write_table(out, rows)
    write_report(out, rows, f"SISE audit of {source} (shard {shard[0]}/{shard[1]})")
    return rows


def merge_audits(parts: list[str], out: str) -> list[dict]:
    """Join shard outputs (same settings) into one results table and report in ``out``."""
    settings, rows, seen = None, [], set()
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    for part in parts:
        id_path = os.path.join(part, "audit.json")
        if not os.path.isfile(id_path):
            raise InspectorError(f"{part}: not an audit folder (no audit.json)")
        with open(id_path) as f:
            identity = json.load(f)
        if settings not in (None, identity["settings"]):
            raise InspectorError(f"{part}: audited with other settings than {parts[0]}; cannot merge")
        settings = identity["settings"]
        for row in read_results(part):
            if row["key"] in seen:
                continue
            seen.add(row["key"])
            rows.append(row)
            for suffix in ("_overlay.png", "_layers.png", ".json", ".npz"):
                src = os.path.join(part, "images", row["stem"] + suffix)
                if os.path.isfile(src) and os.path.abspath(part) != os.path.abspath(out):
                    dst = os.path.join(out, "images", row["stem"] + suffix)
                    with open(src, "rb") as a, open(dst + ".part", "wb") as b:
                        b.write(a.read())
                    os.replace(dst + ".part", dst)
    rows.sort(key=lambda r: r["key"])
    _write_atomic(os.path.join(out, "results.jsonl"), "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    _write_atomic(os.path.join(out, "audit.json"), json.dumps({"settings": settings, "merged_from": parts},
                                                              indent=2))
    write_table(out, rows)
    write_report(out, rows, f"SISE audit, merged from {len(parts)} shard(s)")
    return rows
