"""Views of the results store: ``results.csv``, ``results.jsonl`` and ``report.html`` (`inspector report`,
and the end of every audit). One row per input file; the files are regenerated, never edited."""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import sqlalchemy as sa

from ..common import documents, spreadsheet
from ..common.atomic import write_group
from ..common.identity import FIELDS as IDENTITY_FIELDS
from ..common.version import __version__
from ..store import Store
from ..store.schema import artifacts, detections, inputs, parts, results, runs

CSV_FIELDS = ("path", "image_sha256", "status", "prediction", "confidence", "target", "regions",
              "evidence_peak", "evidence_mean", "roi_inside", "flagged", "masks", "seconds", "error",
              "retryable", "shard", "result_id", "detections", "serial", "line", "camera", "product", "tags")
VIEW_FILES = ("results.csv", "results.jsonl", "report.html")


def report_rows(store: Store, scopes: list[str] | None = None) -> list[dict]:
    """One dict per input of ``scopes`` (all inputs when None), sorted by path, with its result, status
    (done | failed | pending), artifacts (kind -> absolute path), a detector's detections (highest
    score first; [] for a classifier's) and the part's identity (the part that arrived from this path,
    else the result's newest)."""
    r = results.c
    query = (sa.select(inputs.c.path, inputs.c.path_bytes, inputs.c.image_sha256,
                       inputs.c.error.label("input_error"),
                       inputs.c.scope, runs.c.shard_index, runs.c.shard_count, r.id.label("result_id"),
                       r.status, r.prediction_name, r.confidence, r.target_name, r.region_count,
                       r.evidence_peak, r.evidence_mean, r.roi_inside, r.flagged, r.masks, r.seconds, r.error,
                       r.retryable, r.scores, r.regions, r.timings, r.versions, r.finished_at)
             .select_from(inputs.join(runs, runs.c.id == inputs.c.run_id)
                          .outerjoin(results, results.c.id == inputs.c.result_id))
             .order_by(inputs.c.path_bytes, inputs.c.scope))
    if scopes is not None:
        query = query.where(inputs.c.scope.in_(scopes))
    arts = (sa.select(artifacts.c.result_id, artifacts.c.kind, artifacts.c.path, runs.c.out_dir)
            .select_from(artifacts.join(results, results.c.id == artifacts.c.result_id)
                         .join(runs, runs.c.id == results.c.run_id)))
    with store.begin() as conn:
        rows = [dict(row) for row in conn.execute(query).mappings()]
        files: dict[int, dict[str, str]] = {}
        for a in conn.execute(arts).mappings():
            files.setdefault(a["result_id"], {})[a["kind"]] = store.locate(a["out_dir"], a["path"])
        found: dict[int, list[dict]] = {}
        for d in conn.execute(sa.select(detections).order_by(detections.c.result_id, detections.c.position)
                              ).mappings():
            found.setdefault(d["result_id"], []).append(
                {"position": d["position"], "class": d["class_name"], "score": d["score"],
                 "box": [d["x1"], d["y1"], d["x2"], d["y2"]], "evidence_in_box": d["evidence_in_box"]})
        arrivals: dict[int, list[dict]] = {}
        for p in conn.execute(sa.select(parts).order_by(parts.c.id)).mappings():
            arrivals.setdefault(p["result_id"], []).append(dict(p))
    for row in rows:
        mine = arrivals.get(row["result_id"], [])
        here = [p for p in mine if bytes(p["source_path_bytes"]) == bytes(row["path_bytes"])]
        part = (here or mine or [{}])[-1]
        row.update({f: part.get(f) for f in IDENTITY_FIELDS}, tags=part.get("tags") or [])
        if row["input_error"]:
            row.update(status="failed", error=row["input_error"], retryable=True)
        elif row["status"] in (None, "running"):
            row["status"] = "pending"
        row["shard"] = f"{row['shard_index']}/{row['shard_count']}"
        row["artifacts"] = files.get(row["result_id"], {}) if row["status"] == "done" else {}
        row["detections"] = found.get(row["result_id"], []) if row["status"] == "done" else []
    return rows


def report_runs(store: Store, scopes: list[str] | None = None) -> list[dict]:
    """The runs that recorded these scopes' inputs, oldest first: who, where, when, with which model."""
    query = sa.select(runs).order_by(runs.c.id)
    if scopes is not None:
        query = query.where(runs.c.scope.in_(scopes))
    with store.begin() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _cell(value, digits: int | None = None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}f}"
    return str(value)


def csv_text(rows: list[dict]) -> str:
    return spreadsheet.csv_text(CSV_FIELDS, (
        [r["path"], _cell(r["image_sha256"]), r["status"], _cell(r["prediction_name"]),
         _cell(r["confidence"], 4), _cell(r["target_name"]), _cell(r["region_count"]),
         _cell(r["evidence_peak"], 4), _cell(r["evidence_mean"], 4), _cell(r["roi_inside"], 4),
         _cell(r["flagged"]), _cell(r["masks"]), _cell(r["seconds"], 3), _cell(r["error"]),
         _cell(r["retryable"]), r["shard"], _cell(r["result_id"]), detection_cell(r.get("detections", [])),
         *(_cell(r.get(f)) for f in IDENTITY_FIELDS), ";".join(r.get("tags") or [])]
        for r in rows))


def detection_cell(found: list[dict]) -> str:
    """A detector's detections in one cell: ``class score @x1,y1,x2,y2`` each, ``; `` between them."""
    return "; ".join(f"{d['class']} {d['score']:.3f} @{','.join(f'{v:.0f}' for v in d['box'])}"
                     for d in found)


def jsonl_text(rows: list[dict], out_dir: str) -> str:
    keep = ("path", "image_sha256", "status", "confidence", "region_count", "evidence_peak", "evidence_mean",
            "roi_inside", "flagged", "masks", "seconds", "error", "retryable", "shard", "result_id", "scores",
            "regions", "timings", "versions", *IDENTITY_FIELDS, "tags")
    lines = []
    for r in rows:
        item = {k: r[k] for k in keep}
        item["detections"] = r.get("detections", [])  # a detector's
        item.update(prediction=r["prediction_name"], target=r["target_name"])  # the CSV's names
        item["artifacts"] = {k: os.path.relpath(p, out_dir) for k, p in sorted(r["artifacts"].items())}
        lines.append(json.dumps(item, sort_keys=True) + "\n")
    return "".join(lines)


def _link(path: str, out_dir: str) -> str:
    """A relative link to a file under ``out_dir``, percent-encoded (the template escapes it for HTML)."""
    return quote(os.path.relpath(path, out_dir).replace(os.sep, "/"))


def _thumb(row: dict, out_dir: str) -> dict:
    overlay = row["artifacts"].get("overlay")
    return {"link": _link(overlay, out_dir) if overlay else None, "path": row["path"],
            "prediction": row["prediction_name"] or "", "confidence": row["confidence"]}


def failure_line(row: dict) -> str:
    """``path: error``, naming the path once (most errors start with it already)."""
    error = row["error"] or ""
    return error if error.startswith(row["path"]) else f"{row['path']}: {error}"


def html_text(rows: list[dict], out_dir: str, title: str, *, notes: list[str] = (), lowest: int = 12,
              run_rows: list[dict] = (), listed: int = 200) -> str:
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    pending = [r for r in rows if r["status"] == "pending"]
    counts: dict[str, int] = {}
    detected: dict[str, int] = {}
    for r in done:
        counts[r["prediction_name"]] = counts.get(r["prediction_name"], 0) + 1
        for d in r.get("detections", []):
            detected[d["class"]] = detected.get(d["class"], 0) + 1
    seconds = sum(r["seconds"] or 0.0 for r in done)
    warn = [(f"INCOMPLETE: {len(pending)} of {len(rows)} images have no result yet; run the same command "
             "again to continue.")] if pending else []
    errors = [failure_line(r) for r in failed]
    runs = [(r["id"], r["kind"], f"{r['shard_index']}/{r['shard_count']}", r["host"], _when(r["started_at"]),
             _when(r["ended_at"]), r["status"], r["model_sha256"][:16], r["settings_hash"][:16],
             r["tool_version"]) for r in run_rows]
    return documents.render(
        "report.html", title=title, version=__version__, notes=[*warn, *notes], total=len(rows),
        done=len(done), failed=len(failed), pending=len(pending), seconds=seconds,
        seconds_per_image=seconds / max(len(done), 1),
        classes=sorted(counts.items(), key=lambda kv: str(kv[0])),
        with_roi=any(r["roi_inside"] is not None for r in done),
        flagged=[_thumb(r, out_dir) for r in done if r["flagged"]],
        detected=sorted(detected.items()),
        least=[_thumb(r, out_dir) for r in sorted((r for r in done if r["confidence"] is not None),
                                                  key=lambda r: r["confidence"])[:lowest]],
        errors=errors[:listed], errors_more=max(0, len(errors) - listed),
        missing=[r["path"] for r in pending][:listed], missing_more=max(0, len(pending) - listed), runs=runs)


def write_views(store: Store, out_dir: str, *, scopes: list[str] | None = None, title: str = "SISE results",
                notes: list[str] = ()) -> list[dict]:
    """Write results.csv, results.jsonl and report.html for ``scopes`` into ``out_dir``; returns the rows."""
    rows = report_rows(store, scopes)
    os.makedirs(out_dir, exist_ok=True)
    write_group({os.path.join(out_dir, "results.csv"): csv_text(rows),
                 os.path.join(out_dir, "results.jsonl"): jsonl_text(rows, out_dir),
                 os.path.join(out_dir, "report.html"): html_text(rows, out_dir, title, notes=list(notes),
                                                                 run_rows=report_runs(store, scopes))})
    return rows
