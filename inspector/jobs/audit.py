"""`inspector audit`: a resumable, shardable batch run over a folder or manifest, recorded in the store.

Output folder layout:
    results.db       the results store (unless --store names another database)
    images/          per result: npz, overlay, layer strip, JSON sidecar (content-addressed names)
    results.csv, results.jsonl, report.html
                     views of this audit's inputs in the store, rewritten at the end of every run,
                     including one stopped by SIGTERM/SIGINT or by an output error

Resume: an image whose content already has a finished result with these settings is skipped, whatever
its folder or name; failed results are tried again unless ``retry=False``. Killing the process at any
moment loses at most the image in flight.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import time
from dataclasses import dataclass, field

from ..common.folders import check_output_folder, is_inside, skipped
from ..common.progress import Progress
from ..common.reading import MANIFEST_LIMIT, read_regular
from ..common.stop import Stop
from ..engine.inspector import Inspector
from ..engine.runtime.preprocess import IMAGE_EXTENSIONS
from ..errors import InspectorError, OutputError
from ..store import Store, StoreError, default_url, display_path
from .record import Job, explain_and_record_many, result_settings, settings_hash, start_job
from .views import write_views


def list_inputs(source: str) -> list[tuple[str, str]]:
    """(key, absolute path) pairs sorted by the key's bytes: a folder's image files (recursively, through
    symbolic links to folders, each folder once, skipping folders marked with ``.sise-skip``; key =
    relative path) or the ``image`` column of a manifest CSV (key = the column's value, relative to the
    manifest; a repeated row counts once). Only regular files are taken: a FIFO or device named like an
    image would block the run."""
    source = os.path.abspath(source)
    if os.path.isdir(source):
        out, seen = [], set()
        for root, dirs, files in os.walk(source, followlinks=True):
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in seen:  # a symbolic-link loop, or a folder linked twice
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            if skipped(root):  # masks, references: marked as not parts
                dirs[:] = []
                continue
            dirs.sort()
            for f in files:
                path = os.path.join(root, f)
                dangling = os.path.islink(path) and not os.path.exists(path)  # recorded as unreadable
                if f.lower().endswith(IMAGE_EXTENSIONS) and (os.path.isfile(path) or dangling):
                    out.append((os.path.relpath(path, source).replace(os.sep, "/"), path))
        return sorted(out, key=lambda kp: os.fsencode(kp[0]))
    if os.path.exists(source) and source.endswith(".csv"):  # read_regular refuses a FIFO or device
        try:
            text = read_regular(source, MANIFEST_LIMIT, what="manifest").decode("utf-8")
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except OSError as e:
            raise InspectorError(f"{source}: cannot read the manifest ({e.strerror})") from e
        except UnicodeDecodeError as e:
            raise InspectorError(f"{source}: the manifest is not UTF-8 text "
                                 f"({e.reason} at byte {e.start})") from e
        if rows and "image" not in rows[0]:
            raise InspectorError(f"{source}: a manifest needs an 'image' column")
        base = os.path.dirname(source)
        pairs = {r["image"]: os.path.join(base, r["image"]) for r in rows}
        return sorted(pairs.items(), key=lambda kp: os.fsencode(kp[0]))
    raise InspectorError(f"{source}: not a folder of images nor a manifest .csv")


MAX_SHARDS = 100_000


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError as e:
        raise InspectorError(f"--shard {text!r}: expected I/N, e.g. 0/4") from e
    if not 1 <= count <= MAX_SHARDS or not 0 <= index < count:
        raise InspectorError(f"--shard {text!r}: need 0 <= I < N <= {MAX_SHARDS}")
    return index, count


def in_shard(key: str, index: int, count: int) -> bool:
    """Deterministic, order-independent split by a hash of the key's bytes (any file name works)."""
    return int(hashlib.sha1(os.fsencode(key)).hexdigest(), 16) % count == index


def check_folders(source: str, out: str) -> None:
    """Refuse an output folder that the input would list, and an input inside the output folder."""
    check_output_folder("--out", out)
    tree = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    if os.path.isdir(source) and is_inside(out, tree):
        raise InspectorError(f"--out {out} lies inside the input folder {source}; the next audit would "
                             "explain its own outputs. Choose an --out outside it")
    if is_inside(tree, out):
        raise InspectorError(f"the input {source} lies inside --out {out}; choose an --out outside it")


def audit_scope(settings: str, source: str, shard: tuple[int, int]) -> str:
    """The inputs of one audit (same settings, input, shard) across its resumptions."""
    text = f"audit|{settings}|{display_path(os.path.abspath(source))}|{shard[0]}/{shard[1]}"
    return "audit:" + hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class AuditSummary:
    total: int = 0          # inputs in this shard
    explained: int = 0      # explained successfully by this run
    reused: int = 0         # found done in the store
    failed: int = 0         # failed results (now or before) and unreadable files
    pending: int = 0        # no result at the end (interrupted, or still held by another run)
    stopped: str | None = None  # why the run stopped early
    rows: list[dict] = field(default_factory=list)

    def count(self, outcome) -> None:
        self.explained += outcome.state == "explained"
        self.reused += outcome.state == "done"

    @property
    def exit_code(self) -> int:
        """0 all done, 1 some images failed, 3 incomplete (stopped or images left): run again."""
        if self.stopped or self.pending:
            return 3
        return 1 if self.failed else 0


def wait_for_busy(job: Job, busy: list[str], wait_for_others: float, stop: Stop | None = None) -> list:
    """Try the images another run is explaining again until none is busy, ``wait_for_others`` seconds have
    passed or a stop is requested; the last outcome of each (still ``busy`` where time ran out)."""
    final: dict[str, object] = {}
    deadline = time.monotonic() + wait_for_others
    while busy and not (stop and stop.requested) and time.monotonic() < deadline:
        time.sleep(0.5)
        outcomes = explain_and_record_many(job, busy)
        final.update((o.path, o) for o in outcomes)
        busy = [o.path for o in outcomes if o.state == "busy"]
    return list(final.values())


def explain_here(job: Job, todo: list[str], stop: Stop, summary: AuditSummary, batch_images: int,
                 wait_for_others: float) -> None:
    """The audit's images explained by this process, ``batch_images`` at a time, in order; images another
    run is explaining are waited for up to ``wait_for_others`` seconds."""
    progress = Progress(len(todo))
    busy: list[str] = []
    try:
        for first in range(0, len(todo), batch_images):
            if stop.requested:
                return
            try:
                outcomes = explain_and_record_many(job, todo[first:first + batch_images])
            except OutputError as e:  # the images recorded before it count
                for o in e.recorded:
                    summary.count(o)
                raise
            busy += [o.path for o in outcomes if o.state == "busy"]
            for o in outcomes:
                summary.count(o)
            progress.update(first + len(outcomes), outcomes[-1].state)
        for o in wait_for_busy(job, busy, wait_for_others, stop):
            summary.count(o)
    finally:
        progress.finish("handled")


def run_audit(insp: Inspector, source: str, out: str, *, store_url: str | None = None,
              shard: tuple[int, int] = (0, 1), retry: bool = True, stop: Stop | None = None,
              wait_for_others: float = 3600.0, batch_images: int | None = None,
              explain=explain_here) -> AuditSummary:
    """Explain every image of ``source`` in this shard that the store has no finished result for,
    ``batch_images`` at a time (default and limits: ``Inspector.batch_images``). ``explain(job, todo, stop,
    summary, batch_images, wait_for_others)`` explains them: this process by default, Ray workers for
    ``inspector.ray_audit``."""
    check_folders(source, out)
    stop = stop or Stop()
    todo = [p for k, p in list_inputs(source) if in_shard(k, *shard)]
    os.makedirs(out, exist_ok=True)
    store = Store(store_url or default_url(out))
    try:
        settings = settings_hash(result_settings(insp))
        scope = audit_scope(settings, source, shard)
        job = start_job(insp, store, kind="audit", out_dir=out, scope=scope,
                        source=display_path(os.path.abspath(source)), shard=shard, retry=retry, plan=todo)
        summary = AuditSummary(total=len(todo))
        try:
            with job.keep_alive():
                explain(job, todo, stop, summary, insp.batch_images(batch_images), wait_for_others)
        except OutputError as e:
            summary.stopped = str(e)
        except BaseException as e:  # a bug or an interrupt: the run is noted as stopped, then it goes up
            with contextlib.suppress(StoreError):
                store.end_run(job.run_id, "stopped", f"{type(e).__name__}: {e}")
            raise
        if stop.requested and not summary.stopped:
            summary.stopped = f"stopped by {stop.signal_name or 'request'}"
        _finish(store, job, out, source, shard, summary)
        return summary
    finally:
        store.close()


def _finish(store: Store, job: Job, out: str, source: str, shard: tuple[int, int],
            summary: AuditSummary) -> None:
    status = "stopped" if summary.stopped else "finished"
    try:
        store.end_run(job.run_id, status, summary.stopped)
        rows = write_views(store, out, scopes=[job.scope],
                           title=f"SISE audit of {display_path(source)} (shard {shard[0]}/{shard[1]})",
                           notes=[summary.stopped] if summary.stopped else [])
    except (OSError, InspectorError) as e:
        if summary.stopped:  # the output error that stopped the run may also stop the report
            return
        raise OutputError(f"{out}: cannot write the report ({e}); run the same command again") from e
    summary.rows = rows
    summary.failed = sum(r["status"] == "failed" for r in rows)
    summary.pending = sum(r["status"] == "pending" for r in rows)
