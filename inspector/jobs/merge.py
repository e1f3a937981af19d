"""`inspector audit-merge`: join the stores of sharded audits into a new store, additively.

The parts are opened read-only and never changed. Their finished results, the inputs they planned and
their artifact files (checked against the SHA-256 the store recorded) are copied into the target; a
result already there is kept, except that a *done* result replaces a *failed* one of the same key.
The merge checks that the parts are shards 0..N-1 of one settings hash and names the missing shards and
unfinished images instead of calling a partial night complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from ..common.atomic import write_atomic
from ..common.folders import check_output_folder
from ..common.reading import ARTIFACT_LIMIT, read_regular
from ..common.stop import Stop
from ..common.version import __version__
from ..errors import InspectorError, Interrupted, OutputError
from ..store import Store, StoreError, default_url, display_path, display_url
from ..store.db import as_utc, sqlite_path
from ..store.schema import artifacts, detections, images, inputs, results, runs
from ..store.store import dialect_insert
from .views import write_views


def part_url(part: str) -> str:
    """A part is an audit output folder (its results.db) or a database URL."""
    if "://" in part:
        return part
    path = os.path.join(part, "results.db")
    if not os.path.isfile(path):
        raise InspectorError(f"{part}: not an audit folder (no results.db); "
                             "give audit --out folders or store URLs")
    return default_url(part)


@dataclass
class MergeSummary:
    shard_count: int = 1
    missing_shards: list[int] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    @property
    def pending(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "pending"]

    @property
    def failed(self) -> int:
        return sum(r["status"] == "failed" for r in self.rows)

    @property
    def exit_code(self) -> int:
        if self.missing_shards or self.pending:
            return 3
        return 1 if self.failed else 0


def _audit_runs(store: Store, part: str) -> list[dict]:
    with store.begin() as conn:
        found = [dict(r) for r in conn.execute(sa.select(runs).where(runs.c.kind == "audit")).mappings()]
    if not found:
        raise InspectorError(f"{part}: holds no audit runs")
    return found


def _check_parts(parts: list[str], audit_runs: list[list[dict]]) -> tuple[str, int, list[int]]:
    settings = {r["settings_hash"] for rs in audit_runs for r in rs}
    if len(settings) != 1:
        detail = "; ".join(f"{p}: {sorted({r['settings_hash'][:12] for r in rs})}"
                           for p, rs in zip(parts, audit_runs))
        raise InspectorError(f"the parts were audited with different settings ({detail}); "
                             "merge only shards of one audit")
    counts = {r["shard_count"] for rs in audit_runs for r in rs}
    if len(counts) != 1:
        raise InspectorError(f"the parts split the input differently (--shard .../{sorted(counts)}); "
                             "merge only shards of one audit")
    count = counts.pop()
    present = {r["shard_index"] for rs in audit_runs for r in rs}
    return settings.pop(), count, sorted(set(range(count)) - present)


def _utc(row: dict) -> dict:
    """A copied row with its timestamps in UTC (SQLite gives them back without a zone; written in UTC)."""
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row.items()}


def _copy_file(src: str, dst: str, sha256: str) -> None:
    try:
        data = read_regular(src, ARTIFACT_LIMIT, what="result file")
    except FileNotFoundError as e:
        raise InspectorError(f"{src}: recorded in its store but missing; run that shard's audit again (it "
                             "makes missing files again), then merge") from e
    if hashlib.sha256(data).hexdigest() != sha256:
        raise InspectorError(f"{src}: content differs from what its store recorded (changed or corrupt); "
                             "re-run that shard's audit")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    write_atomic(dst, data)


class _Copier:
    """Copies one part into the target store (one transaction per part)."""

    def __init__(self, src: Store, dst_conn: sa.Connection, out_dir: str):
        self.src, self.conn, self.out_dir = src, dst_conn, os.path.abspath(out_dir)
        self.run_ids: dict[int, int] = {}

    def copy(self) -> list[str]:
        with self.src.begin() as s:
            for run in s.execute(sa.select(runs)).mappings():
                self._run(dict(run))
            for image in s.execute(sa.select(images)).mappings():
                insert = dialect_insert(self.conn, images).values(**_utc(image))
                self.conn.execute(insert.on_conflict_do_nothing(index_elements=["sha256"]))
            result_ids = {}
            for row in s.execute(sa.select(results, runs.c.out_dir).join(runs, runs.c.id == results.c.run_id)
                                 .where(results.c.status.in_(("done", "failed")))).mappings():
                result_ids[row["id"]] = self._result(s, dict(row))
            scopes = set()
            for row in s.execute(sa.select(inputs)).mappings():
                scopes.add(row["scope"])
                values = _utc({k: v for k, v in row.items() if k != "id"})
                values.update(run_id=self.run_ids[row["run_id"]], result_id=result_ids.get(row["result_id"]))
                self.conn.execute(dialect_insert(self.conn, inputs).values(**values).on_conflict_do_update(
                    index_elements=["scope", "path_bytes"],
                    set_={k: values[k] for k in ("run_id", "result_id", "image_sha256", "error")}))
        return sorted(scopes)

    def _run(self, run: dict) -> None:
        same = sa.and_(runs.c.host == run["host"], runs.c.pid == run["pid"],
                       runs.c.started_at == as_utc(run["started_at"]), runs.c.kind == run["kind"])
        existing = self.conn.execute(sa.select(runs.c.id).where(same)).scalar()
        if existing is None:
            values = _utc({k: v for k, v in run.items() if k != "id"})
            # its artifacts are copied here, under the same relative paths
            values["out_dir"] = display_path(self.out_dir)
            existing = self.conn.execute(sa.insert(runs).values(**values).returning(runs.c.id)).scalar_one()
        self.run_ids[run["id"]] = existing

    def _result(self, s: sa.Connection, row: dict) -> int:
        key = sa.and_(results.c.image_sha256 == row["image_sha256"],
                      results.c.settings_hash == row["settings_hash"],
                      results.c.target_key == row["target_key"])
        values = _utc({k: v for k, v in row.items() if k not in ("id", "out_dir")})
        values["run_id"] = self.run_ids[row["run_id"]]
        current = self.conn.execute(sa.select(results.c.id, results.c.status).where(key)).mappings().first()
        if current is not None and not (current["status"] == "failed" and row["status"] == "done"):
            return current["id"]
        if current is None:
            new_id = self.conn.execute(sa.insert(results).values(**values)
                                       .returning(results.c.id)).scalar_one()
        else:
            new_id = current["id"]
            self.conn.execute(sa.update(results).where(results.c.id == new_id).values(**values))
            self.conn.execute(sa.delete(artifacts).where(artifacts.c.result_id == new_id))
            self.conn.execute(sa.delete(detections).where(detections.c.result_id == new_id))
        found = [{k: v for k, v in d.items() if k != "id"} | {"result_id": new_id} for d in
                 s.execute(sa.select(detections).where(detections.c.result_id == row["id"])).mappings()]
        if found:
            self.conn.execute(sa.insert(detections), found)
        for art in s.execute(sa.select(artifacts).where(artifacts.c.result_id == row["id"])).mappings():
            _copy_file(self.src.locate(row["out_dir"], art["path"]), os.path.join(self.out_dir, art["path"]),
                       art["sha256"])
            self.conn.execute(sa.insert(artifacts).values(
                result_id=new_id, kind=art["kind"], path=art["path"], sha256=art["sha256"], size=art["size"]))
        return new_id


def _check_target_folder(out: str, settings: str) -> None:
    """The default target, ``<out>/results.db``, must be new or an earlier merge of the same audit: merging
    into a shard's own folder would mix the merge into that shard's results."""
    if not os.path.isfile(os.path.join(out, "results.db")):
        return
    with Store(default_url(out), readonly=True) as existing, existing.begin() as conn:
        found = conn.execute(sa.select(runs.c.kind, runs.c.settings_hash).distinct()).all()
    if "merge" not in {kind for kind, _ in found}:
        raise InspectorError(f"--out {out} holds the store of an audit, not of a merge; "
                             "merge into a new folder (parts are never written)")
    if {h for kind, h in found if kind == "audit"} - {settings}:
        raise InspectorError(f"--out {out} holds a merge of an audit with other settings; "
                             "merge into a new folder")


def _same_store(a: str, b: str) -> bool:
    """Two URLs name one database (SQLite: the same file, however spelled)."""
    ua, ub = sa.make_url(a), sa.make_url(b)
    if ua.get_backend_name() == ub.get_backend_name() == "sqlite":
        return os.path.realpath(sqlite_path(a)) == os.path.realpath(sqlite_path(b))
    return display_url(a) == display_url(b)


def merge_audits(parts: list[str], out: str, *, store_url: str | None = None, stop: Stop | None = None
                 ) -> MergeSummary:
    """Copy the parts' stores into ``out`` (its results.db, or ``store_url``) and write the views there."""
    check_output_folder("--out", out)
    urls = [part_url(p) for p in parts]
    target_url = store_url or default_url(out)
    for part, url in zip(parts, urls):
        if (_same_store(url, target_url)
                or ("://" not in part and os.path.realpath(part) == os.path.realpath(out))):
            raise InspectorError(f"the target {display_url(target_url)} is the part {part}; "
                                 "merge into a new folder (parts are never written)")
    stop = stop or Stop()
    sources = [Store(url, readonly=True) for url in urls]
    try:
        settings, count, missing = _check_parts(parts, [_audit_runs(s, p) for s, p in zip(sources, parts)])
        if store_url is None:
            _check_target_folder(out, settings)
        os.makedirs(out, exist_ok=True)
        with Store(target_url) as target:
            merge_run = target.start_run(kind="merge", scope="merge", settings_hash=settings, model_sha256="",
                                         config={"parts": parts}, out_dir=out, tool_version=__version__)
            scopes: set[str] = set()
            try:
                for src in sources:
                    if stop.requested:
                        raise Interrupted(f"stopped by {stop.signal_name} before all parts were copied; "
                                          "run the same merge again")
                    with target.begin() as conn:
                        scopes.update(_Copier(src, conn, out).copy())
            except BaseException as e:  # the merge run is noted as stopped, whatever stopped it
                with contextlib.suppress(StoreError):
                    target.end_run(merge_run, "stopped", f"{type(e).__name__}: {e}")
                if isinstance(e, OSError):
                    raise OutputError(f"{out}: cannot copy artifacts ({e.strerror}: {e.filename}); "
                                      "fix it and run the merge again") from e
                raise
            summary = MergeSummary(shard_count=count, missing_shards=missing)
            notes = [(f"INCOMPLETE: shard(s) {', '.join(f'{i}/{count}' for i in missing)} "
                      "missing from this merge")] if missing else []
            summary.rows = write_views(target, out, scopes=sorted(scopes), notes=notes,
                                       title=f"SISE audit, merged from {len(parts)} of {count} shard(s)")
            target.end_run(merge_run, "finished" if summary.exit_code != 3 else "stopped",
                           "; ".join(notes) or None)
        return summary
    finally:
        for src in sources:
            src.close()
