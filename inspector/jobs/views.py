"""Views of the results store: ``results.csv``, ``results.jsonl`` and ``report.html`` (`inspector report`,
and the end of every audit). One row per input file; the files are regenerated, never edited."""

from __future__ import annotations

import html
import json
import os
from urllib.parse import quote

import sqlalchemy as sa

from ..common import spreadsheet
from ..common.atomic import write_group
from ..store import Store
from ..store.schema import artifacts, inputs, results, runs

CSV_FIELDS = ("path", "image_sha256", "status", "prediction", "confidence", "target", "regions",
              "evidence_peak", "evidence_mean", "roi_inside", "flagged", "masks", "seconds", "error",
              "retryable", "shard", "result_id")
VIEW_FILES = ("results.csv", "results.jsonl", "report.html")


def report_rows(store: Store, scopes: list[str] | None = None) -> list[dict]:
    """One dict per input of ``scopes`` (all inputs when None), sorted by path, with its result, status
    (done | failed | pending) and artifacts (kind -> absolute path)."""
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
    for row in rows:
        if row["input_error"]:
            row.update(status="failed", error=row["input_error"], retryable=True)
        elif row["status"] in (None, "running"):
            row["status"] = "pending"
        row["shard"] = f"{row['shard_index']}/{row['shard_count']}"
        row["artifacts"] = files.get(row["result_id"], {}) if row["status"] == "done" else {}
    return rows


def report_runs(store: Store, scopes: list[str] | None = None) -> list[dict]:
    """The runs that recorded these scopes' inputs, oldest first: who, where, when, with which model."""
    query = sa.select(runs).order_by(runs.c.id)
    if scopes is not None:
        query = query.where(runs.c.scope.in_(scopes))
    with store.begin() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def _runs_table(run_rows: list[dict]) -> str:
    if not run_rows:
        return ""
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r["id"], r["kind"], f"{r['shard_index']}/{r['shard_count']}", r["host"],
            _when(r["started_at"]), _when(r["ended_at"]), r["status"], r["model_sha256"][:16],
            r["settings_hash"][:16], r["tool_version"])) + "</tr>" for r in run_rows)
    head = "".join(f"<th>{h}</th>" for h in ("run", "kind", "shard", "host", "started (UTC)", "ended (UTC)",
                                              "status", "model SHA-256", "settings", "version"))
    return f"<h2>Runs ({len(run_rows)})</h2><table class=runs><tr>{head}</tr>{cells}</table>"


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
         _cell(r["retryable"]), r["shard"], _cell(r["result_id"])] for r in rows))


def jsonl_text(rows: list[dict], out_dir: str) -> str:
    keep = ("path", "image_sha256", "status", "confidence", "region_count", "evidence_peak", "evidence_mean",
            "roi_inside", "flagged", "masks", "seconds", "error", "retryable", "shard", "result_id", "scores",
            "regions", "timings", "versions")
    lines = []
    for r in rows:
        item = {k: r[k] for k in keep}
        item.update(prediction=r["prediction_name"], target=r["target_name"])  # the CSV's names
        item["artifacts"] = {k: os.path.relpath(p, out_dir) for k, p in sorted(r["artifacts"].items())}
        lines.append(json.dumps(item, sort_keys=True) + "\n")
    return "".join(lines)


def _link(path: str, out_dir: str) -> str:
    return html.escape(quote(os.path.relpath(path, out_dir).replace(os.sep, "/")), quote=True)


def _thumbs(rows: list[dict], out_dir: str) -> str:
    cells = []
    for r in rows:
        overlay = r["artifacts"].get("overlay")
        picture = (f"<a href='{_link(overlay, out_dir)}'>"
                   f"<img src='{_link(overlay, out_dir)}' width=160 alt=''></a>"
                   if overlay else "")
        cells.append(f"<figure>{picture}<figcaption>{html.escape(r['path'])}<br>"
                     f"{html.escape(r['prediction_name'] or '')} {r['confidence'] or 0:.3f}"
                     "</figcaption></figure>")
    return "".join(cells)


def failure_line(row: dict) -> str:
    """``path: error``, naming the path once (most errors start with it already)."""
    error = row["error"] or ""
    return error if error.startswith(row["path"]) else f"{row['path']}: {error}"


def _listing(lines: list[str], limit: int = 200) -> str:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines[:limit])
    more = f"<li>and {len(lines) - limit} more: see results.csv</li>" if len(lines) > limit else ""
    return items + more


def html_text(rows: list[dict], out_dir: str, title: str, *, notes: list[str] = (), lowest: int = 12,
              run_rows: list[dict] = ()) -> str:
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    pending = [r for r in rows if r["status"] == "pending"]
    counts: dict[str, int] = {}
    for r in done:
        counts[r["prediction_name"]] = counts.get(r["prediction_name"], 0) + 1
    seconds = sum(r["seconds"] or 0.0 for r in done)
    warn = [(f"INCOMPLETE: {len(pending)} of {len(rows)} images have no result yet; run the same command "
             "again to continue.")] if pending else []
    banner = "".join(f"<p class=warn>{html.escape(n)}</p>" for n in [*warn, *notes])
    with_roi = any(r["roi_inside"] is not None for r in done)
    flagged = [r for r in done if r["flagged"]]
    least = sorted(done, key=lambda r: r["confidence"])[:lowest]
    errors = _listing([failure_line(r) for r in failed])
    missing = _listing([r["path"] for r in pending])
    return ("<!doctype html><meta charset=utf-8><title>SISE audit</title><style>body{font-family:sans-serif}"
            "figure{display:inline-block;margin:4px;font-size:11px;max-width:170px;overflow-wrap:anywhere}"
            ".warn{background:#fde2e1;border:1px solid #c0392b;padding:6px}"
            ".runs td,.runs th{border-bottom:1px solid #ddd;padding:2px 6px;font-size:12px;"
            "text-align:left}</style>"
            f"<h1>{html.escape(title)}</h1>{banner}<p>{len(rows)} images: {len(done)} explained, "
            f"{len(failed)} failed, {len(pending)} not finished; {seconds:.1f} s of explanation time "
            f"({seconds / max(len(done), 1):.2f} s per image).</p><h2>Predicted classes</h2><table>"
            + "".join(f"<tr><td>{html.escape(str(k))}</td><td>{v}</td></tr>"
                      for k, v in sorted(counts.items()))
            + "</table>"
            + (f"<h2>Flagged: evidence mostly outside the ROI ({len(flagged)})</h2>"
               f"{_thumbs(flagged, out_dir)}"
               if with_roi else "")
            + f"<h2>Least confident ({len(least)})</h2>{_thumbs(least, out_dir)}"
            f"<h2>Failed ({len(failed)})</h2><ul>{errors}</ul>"
            + (f"<h2>Not finished ({len(pending)})</h2><ul>{missing}</ul>" if pending else "")
            + _runs_table(list(run_rows)))


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
