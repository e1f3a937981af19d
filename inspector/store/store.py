"""The results store: what every way in (explain, audit, watch, demo) records, and what reports read.

A result is unique per image content (SHA-256 of the file's bytes), settings hash and target: the
database's unique constraint, not a check in Python, keeps two processes from writing it twice. A process
*claims* a result before explaining (a row with status ``running``), then *finishes* it (``done`` or
``failed``, with its artifacts) in one transaction. A claim whose process died (same host and the process
is gone, its run has ended, or its run stopped sending heartbeats) is taken over by the next run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from ..common.atomic import process_alive
from ..common.identity import NO_IDENTITY, Identity
from ..errors import VerdictConflict
from .db import (
    StoreError,
    as_utc,
    describe,
    display_path,
    display_url,
    open_engine,
    path_bytes,
    sqlite_path,
    utcnow,
)
from .outbox import add_result_message, add_verdict_message
from .schema import (
    FAILED_ACTIONS,
    LABEL_VERDICTS,
    artifacts,
    detections,
    images,
    inputs,
    outbox,
    outbox_cursors,
    parts,
    results,
    reviews,
    runs,
    standing_reviews,
)

HEARTBEAT_SECONDS = 30.0
UPKEEP_SECONDS = 2.0  # how often a run tries again to give back claims the store could not take back
STALE_AFTER = timedelta(seconds=180)  # a run that sent no heartbeat for this long is presumed dead
REPEAT_SECONDS = 60.0  # the same reviewer's same verdict on a part again within this: not recorded twice
UNDO_SECONDS = 600.0  # a reviewer may undo their own verdict for this long after giving it


def _refusal(last: dict | None, seen: int | None, given: tuple, now: datetime) -> str | None:
    """Why a verdict ``given`` = (reviewer, verdict, label) on a part whose newest verdict is ``last`` is
    not recorded (see :meth:`Store.add_review`), or None."""
    if seen is not None and (last["id"] if last else 0) != seen:
        if last is None:
            return "the verdict you saw is no longer there; nothing was recorded: look again"
        return (f"{last['reviewer']} gave a verdict ({last['verdict']} -> {last['label'] or 'inconclusive'}) "
                "after the one you saw; nothing was recorded: look again and give yours")
    if last is not None and (last["reviewer"], last["verdict"], last["label"]) == given:
        ago = (now - as_utc(last["created_at"])).total_seconds()
        if ago < REPEAT_SECONDS:
            return (f"you gave this verdict ({given[1]} -> {given[2] or 'inconclusive'}) {ago:.0f} s ago; it "
                    "was not recorded twice")
    return None


def _machine() -> str:
    """This process's machine as other runs see it: the host name, plus the boot and the PID namespace
    (two containers with one host name do not share process ids; a reboot reuses them)."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip()[:8])
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return " ".join(parts)


HOST = _machine()  # runs on the same HOST are judged by their process id, others by their heartbeat


@dataclass(frozen=True)
class ResultKey:
    image_sha256: str
    settings_hash: str
    target_key: str


class ClaimLost(StoreError):
    """Another run took this run's claim over (it presumed this one dead); its result stands."""


@dataclass(frozen=True)
class Claim:
    """What :meth:`Store.claim` found: ``new`` / ``retry`` / ``takeover`` / ``redo`` (this run now holds
    the result),
    ``done`` / ``failed`` (finished before), or ``busy`` (a live run is explaining it)."""

    state: str
    result_id: int
    previous: dict | None = None  # the row as it was, to restore when a retry is released

    @property
    def held(self) -> bool:
        return self.state in ("new", "retry", "takeover", "redo")


def db_now(conn: sa.Connection) -> datetime:
    """The database's clock in UTC: every run's heartbeats are written and judged on one clock."""
    if conn.dialect.name == "sqlite":
        text = conn.execute(sa.text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
    return as_utc(conn.execute(sa.select(sa.func.now())).scalar_one())


def dialect_insert(conn: sa.Connection, table: sa.Table):
    """INSERT that can say ON CONFLICT DO NOTHING on both SQLite and PostgreSQL."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


class Store:
    """One results database. ``Store(url)`` creates or upgrades it; ``readonly=True`` never writes."""

    def __init__(self, url: str, *, readonly: bool = False):
        self.url = url
        self.readonly = readonly
        # write a message to the outbox with each part and verdict (set by processes with integrations)
        self.outbox = False
        self.engine = open_engine(url, readonly=readonly)
        # an SQLite store's folder: where its artifacts are when the folder was moved or copied elsewhere
        self.home = os.path.dirname(os.path.abspath(sqlite_path(url))) \
            if self.engine.dialect.name == "sqlite" else None
        self._path, self._identity = None, None
        if self.home is not None:
            self._path = os.fsencode(os.path.abspath(sqlite_path(url)))
            with contextlib.suppress(OSError):
                st = os.stat(self._path)
                self._identity = (st.st_dev, st.st_ino)

    def locate(self, out_dir: str, relative: str) -> str:
        """Absolute path of an artifact written under ``out_dir``; when that folder is gone (an audit
        folder copied to another machine or renamed), the same relative path in the store's own folder."""
        path = os.path.join(out_dir, relative)
        if self.home is not None and not os.path.exists(path):
            moved = os.path.join(self.home, relative)
            if os.path.exists(moved):
                return moved
        return path

    def __repr__(self) -> str:
        return f"Store({display_url(self.url)})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:  # noqa: PYI034 - a Store is never subclassed
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def begin(self):
        """A transaction; database errors become one-line :class:`StoreError`."""
        self.check_file()
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"{display_url(self.url)}: {describe(e)}") from e

    @contextlib.contextmanager
    def read(self):
        """A transaction that only reads: on SQLite it takes no write lock, so pages and health checks
        never wait for a writer."""
        self.check_file()
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(read_only=True)
                with conn.begin():
                    yield conn
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"{display_url(self.url)}: {describe(e)}") from e

    def writable_places(self) -> list[bytes]:
        """What must stay writable for an SQLite store: its file and its folder (WAL and journal files)."""
        if self._path is None:
            return []
        return [self._path, os.path.dirname(self._path)]

    def check_file(self) -> None:
        """An SQLite store's file must still be the one opened: a deleted or replaced file would take
        writes that nobody can read back (open connections keep writing to the old, unlinked file)."""
        if self._identity is None:
            return
        try:
            st = os.stat(self._path)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._identity:
            raise StoreError(f"{display_url(self.url)}: the store file was deleted or replaced since it was "
                             "opened; nothing more is written to it: restart the program")

    # ----- runs -----------------------------------------------------------------------------------
    def start_run(self, *, kind: str, scope: str, settings_hash: str, model_sha256: str, config: dict,
                  out_dir: str, source: str | None = None, shard: tuple[int, int] = (0, 1),
                  tool_version: str = "", plan: list[str] | None = None) -> int:
        """Register a run; with ``plan``, also its complete list of inputs, in the same transaction (so a
        run in the store always has its plan): the scope's inputs become exactly these paths."""
        with self.begin() as conn:
            now = db_now(conn)
            self._note_interrupted(conn, now)
            run_id = conn.execute(sa.insert(runs).values(
                kind=kind, scope=scope, settings_hash=settings_hash, model_sha256=model_sha256, config=config,
                source=source, shard_index=shard[0], shard_count=shard[1],
                out_dir=display_path(os.path.abspath(out_dir)),
                host=HOST, pid=os.getpid(), tool_version=tool_version, started_at=now, heartbeat_at=now,
                status="running").returning(runs.c.id)).scalar_one()
            if plan is not None:
                self._plan(conn, scope, run_id, plan, now)
        return run_id

    @staticmethod
    def _note_interrupted(conn: sa.Connection, now: datetime) -> None:
        """Runs that ended without noting it (killed, or the store was away when they stopped) are marked
        ``interrupted``: their process on this machine is gone, or, elsewhere, their heartbeats stopped."""
        rows = conn.execute(sa.select(runs.c.id, runs.c.host, runs.c.pid, runs.c.heartbeat_at)
                            .where(runs.c.ended_at.is_(None))).all()
        dead = [row.id for row in rows
                if (not process_alive(row.pid) if row.host == HOST
                    else as_utc(now) - as_utc(row.heartbeat_at) > STALE_AFTER)]
        if dead:
            conn.execute(sa.update(runs).where(runs.c.id.in_(dead), runs.c.ended_at.is_(None)).values(
                status="interrupted", ended_at=now,
                message="ended without noting it (killed, or the store was unreachable when it stopped)"))

    def end_run(self, run_id: int, status: str, message: str | None = None) -> None:
        with self.begin() as conn:
            conn.execute(sa.update(runs).where(runs.c.id == run_id).values(
                status=status, message=message, ended_at=utcnow(), heartbeat_at=db_now(conn)))

    def end_dead_runs(self, scope: str, after: int, status: str, grace: float = 0.0) -> int:
        """End the unfinished runs of ``scope`` started after run ``after`` whose process on this machine is
        gone (the workers of a Ray audit, which end without a word when their pool shuts down); returns how
        many. A process still alive is waited for up to ``grace`` seconds (a pool's workers exit a moment
        after its shutdown returns). Runs on other machines are left to their heartbeats."""
        deadline = time.monotonic() + grace
        ended = 0
        while True:
            with self.begin() as conn:
                rows = conn.execute(sa.select(runs.c.id, runs.c.pid).where(
                    runs.c.scope == scope, runs.c.id > after, runs.c.ended_at.is_(None),
                    runs.c.host == HOST)).all()
            alive = 0
            for run_id, pid in rows:
                if process_alive(pid):
                    alive += 1
                else:
                    self.end_run(run_id, status)
                    ended += 1
            if not alive or time.monotonic() >= deadline:
                return ended
            time.sleep(0.2)

    def heartbeat(self, run_id: int) -> None:
        with self.begin() as conn:
            conn.execute(sa.update(runs).where(runs.c.id == run_id).values(heartbeat_at=db_now(conn)))

    @contextlib.contextmanager
    def heartbeats(self, run_id: int, every: float = HEARTBEAT_SECONDS, *, upkeep=None,
                   upkeep_every: float = UPKEEP_SECONDS):
        """Send heartbeats from a background thread while the block runs (an image may take minutes), and
        call ``upkeep()`` every ``upkeep_every`` seconds there (a store error in either is tried again at
        the next turn)."""
        stop = threading.Event()
        tick = min(every, upkeep_every) if upkeep is not None else every

        def beat():
            last = time.monotonic()
            while not stop.wait(tick):
                if upkeep is not None:
                    with contextlib.suppress(StoreError):
                        upkeep()
                if time.monotonic() - last >= every:
                    last = time.monotonic()
                    with contextlib.suppress(StoreError):
                        self.heartbeat(run_id)
        thread = threading.Thread(target=beat, name="store-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def run(self, run_id: int) -> dict:
        with self.begin() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
        if row is None:
            raise StoreError(f"{display_url(self.url)}: no run {run_id}")
        return dict(row)

    # ----- images and inputs ----------------------------------------------------------------------
    def add_image(self, sha256: str, size: int, path: str) -> None:
        with self.begin() as conn:
            conn.execute(dialect_insert(conn, images).values(
                sha256=sha256, size=size, first_path=display_path(path), first_path_bytes=path_bytes(path),
                first_seen_at=utcnow()).on_conflict_do_nothing(index_elements=["sha256"]))

    @staticmethod
    def _plan(conn: sa.Connection, scope: str, run_id: int, paths: list[str], now, batch: int = 2000) -> None:
        """Make the scope's inputs exactly ``paths``: new ones added (no result yet), known ones kept with
        their results, and those no longer in the input (deleted or renamed files) dropped."""
        wanted = list(dict.fromkeys(path_bytes(p) for p in paths))  # a manifest may list a file twice
        for k in range(0, len(wanted), batch):
            rows = [{"scope": scope, "path": display_path(b), "path_bytes": b, "run_id": run_id,
                     "seen_at": now}
                    for b in wanted[k:k + batch]]
            stmt = dialect_insert(conn, inputs).values(rows)
            conn.execute(stmt.on_conflict_do_update(index_elements=["scope", "path_bytes"],
                                                    set_={"run_id": run_id, "seen_at": now}))
        keep = set(wanted)
        known = conn.execute(sa.select(inputs.c.id, inputs.c.path_bytes).where(inputs.c.scope == scope)).all()
        gone = [row.id for row in known if bytes(row.path_bytes) not in keep]
        for k in range(0, len(gone), batch):
            conn.execute(sa.delete(inputs).where(inputs.c.id.in_(gone[k:k + batch])))

    def record_input(self, scope: str, run_id: int, path: str, *, image_sha256: str | None = None,
                     result_id: int | None = None, error: str | None = None) -> None:
        with self.begin() as conn:
            self._upsert_input(conn, scope, run_id, path, image_sha256=image_sha256, result_id=result_id,
                               error=error)

    def rename_input(self, scope: str, old: str, new: str) -> None:
        """The input file moved (watch's done/failed folders): its row follows it."""
        with self.begin() as conn:
            conn.execute(sa.delete(inputs).where(inputs.c.scope == scope,
                                                 inputs.c.path_bytes == path_bytes(new)))
            conn.execute(sa.update(inputs).where(inputs.c.scope == scope,
                                                 inputs.c.path_bytes == path_bytes(old))
                         .values(path=display_path(new), path_bytes=path_bytes(new)))

    @staticmethod
    def _upsert_input(conn, scope: str, run_id: int, path: str, **values) -> None:
        values = {"run_id": run_id, "seen_at": utcnow(), **values}
        stmt = dialect_insert(conn, inputs).values(scope=scope, path=display_path(path),
                                            path_bytes=path_bytes(path), **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["scope", "path_bytes"], set_=values))

    # ----- results --------------------------------------------------------------------------------
    def claim(self, key: ResultKey, run_id: int, path: str, *, retry: bool = True,
              redo: bool = False) -> Claim:
        """Take the result ``key`` for this run, or say who has it. ``redo``: take a *done* result too
        (its files are gone and must be made again)."""
        now = utcnow()
        fresh = {"run_id": run_id, "source_path": display_path(path), "source_path_bytes": path_bytes(path),
                 "status": "running", "claimed_at": now}
        for _ in range(5):  # another process may change the row between our read and our update
            with self.begin() as conn:
                stmt = dialect_insert(conn, results).values(
                    image_sha256=key.image_sha256, settings_hash=key.settings_hash, target_key=key.target_key,
                    attempts=1, **fresh).on_conflict_do_nothing(
                        index_elements=["image_sha256", "settings_hash", "target_key"]
                    ).returning(results.c.id)
                new_id = conn.execute(stmt).scalar()
                if new_id is not None:
                    return Claim("new", new_id)
                row = conn.execute(
                    sa.select(results, runs.c.host, runs.c.pid, runs.c.heartbeat_at, runs.c.ended_at)
                    .join(runs, runs.c.id == results.c.run_id)
                    .where(results.c.image_sha256 == key.image_sha256,
                           results.c.settings_hash == key.settings_hash,
                           results.c.target_key == key.target_key)).mappings().first()
                if row is None:  # released by its owner between our insert and our read: try again
                    continue
                state = "redo" if redo and row["status"] == "done" else \
                    self._decide(row, run_id, retry, db_now(conn))
                if state in ("done", "failed", "busy"):
                    return Claim(state, row["id"])
                took = conn.execute(sa.update(results).where(
                    results.c.id == row["id"], results.c.status == row["status"],
                    results.c.run_id == row["run_id"]).values(attempts=results.c.attempts + 1, **fresh))
                if took.rowcount == 1:
                    return Claim(state, row["id"], previous=dict(row))
        raise StoreError(f"{display_url(self.url)}: could not claim image {key.image_sha256[:16]} (too much "
                         "contention); run again")

    @staticmethod
    def _decide(row, run_id: int, retry: bool, now) -> str:
        """What to do with a result another run holds. On this machine the owner's process id decides
        (a live process is never presumed dead, however slow); elsewhere its heartbeats, on the
        database's clock (machines' clocks may disagree)."""
        if row["status"] == "done":
            return "done"
        if row["status"] == "failed":
            return "retry" if retry else "failed"
        if row["run_id"] == run_id:
            return "busy"
        if row["ended_at"] is not None:
            dead = True
        elif row["host"] == HOST:
            dead = not process_alive(row["pid"])
        else:
            dead = as_utc(now) - as_utc(row["heartbeat_at"]) > STALE_AFTER
        return "takeover" if dead else "busy"

    def finish(self, claim: Claim, run_id: int, fields: dict, artifact_rows: list[dict] = (), *,
               scope: str, path: str, image_sha256: str, identity: Identity = NO_IDENTITY,
               identity_note: str | None = None) -> None:
        """Record the outcome of a held claim (``fields``: ``status`` done/failed and the result's columns,
        and for a detector ``detections``: their rows), its artifacts, the input it came from and the part
        it is (``identity``), in one transaction."""
        fields = dict(fields)
        found = fields.pop("detections", None) or []
        with self.begin() as conn:
            updated = conn.execute(sa.update(results).where(
                results.c.id == claim.result_id, results.c.run_id == run_id, results.c.status == "running")
                .values(finished_at=utcnow(), **fields))
            if updated.rowcount != 1:
                raise ClaimLost(f"result {claim.result_id} was taken over by another run while this one "
                                "explained it (no heartbeat?); its result stands")
            conn.execute(sa.delete(artifacts).where(artifacts.c.result_id == claim.result_id))
            conn.execute(sa.delete(detections).where(detections.c.result_id == claim.result_id))
            if found:
                conn.execute(sa.insert(detections), [{"result_id": claim.result_id, **d} for d in found])
            if artifact_rows:
                conn.execute(sa.insert(artifacts),
                             [{"result_id": claim.result_id, **a} for a in artifact_rows])
            self._upsert_input(conn, scope, run_id, path, image_sha256=image_sha256,
                               result_id=claim.result_id, error=None)
            part_id, _ = self._insert_part(conn, claim.result_id, run_id, path, identity, identity_note)
            if self.outbox:  # an explanation's outcome (also a failed part explained again)
                add_result_message(conn, part_id, utcnow(), reused=False)

    def add_part(self, result_id: int, run_id: int, path: str, identity: Identity = NO_IDENTITY,
                 note: str | None = None) -> int:
        """Note that the image of ``result_id`` arrived (again) as the part ``identity``; the same
        identity again is the same part. Returns the part's id."""
        with self.begin() as conn:
            part_id, new = self._insert_part(conn, result_id, run_id, path, identity, note)
            if new and self.outbox:
                add_result_message(conn, part_id, utcnow(), reused=True)
            return part_id

    @staticmethod
    def _insert_part(conn: sa.Connection, result_id: int, run_id: int, path: str, identity: Identity,
                     note: str | None) -> tuple[int, bool]:
        """(the part's id, whether it is new)."""
        key = identity.key()
        row = {"result_id": result_id, "identity_key": key, **identity.values(),
               "tags": list(identity.tags) or None, "source_path": display_path(path),
               "source_path_bytes": path_bytes(path), "run_id": run_id, "arrived_at": utcnow(), "note": note}
        added = conn.execute(dialect_insert(conn, parts).values(row).on_conflict_do_nothing(
            index_elements=["result_id", "identity_key"])).rowcount
        part_id = conn.execute(sa.select(parts.c.id).where(parts.c.result_id == result_id,
                                                           parts.c.identity_key == key)).scalar_one()
        return part_id, added == 1

    def release(self, claim: Claim, run_id: int) -> None:
        """Give a held claim back unfinished (the outputs could not be written): a new result disappears,
        a retried or taken-over one returns to how it was."""
        with self.begin() as conn:
            mine = sa.and_(results.c.id == claim.result_id, results.c.run_id == run_id,
                           results.c.status == "running")
            if claim.previous is None:
                conn.execute(sa.delete(results).where(mine))
            else:
                keep = ("run_id", "source_path", "source_path_bytes", "status", "attempts", "claimed_at")
                conn.execute(sa.update(results).where(mine).values({k: claim.previous[k] for k in keep}))

    def result(self, result_id: int) -> dict:
        with self.begin() as conn:
            row = conn.execute(sa.select(results).where(results.c.id == result_id)).mappings().one()
            arts = conn.execute(sa.select(artifacts.c.kind, artifacts.c.path, artifacts.c.sha256)
                                .where(artifacts.c.result_id == result_id)).mappings().all()
            out_dir = conn.execute(sa.select(runs.c.out_dir).where(runs.c.id == row["run_id"])).scalar_one()
            found = self.detection_rows(conn, result_id)
        files = {a["kind"]: self.locate(out_dir, a["path"]) for a in arts}
        return {**row, "out_dir": out_dir, "artifacts": files, "detections": found}

    @staticmethod
    def detection_rows(conn: sa.Connection, result_id: int) -> list[dict]:
        """A detector's result's detections, first (highest score) first; [] for a classifier's."""
        rows = conn.execute(sa.select(detections).where(detections.c.result_id == result_id)
                            .order_by(detections.c.position)).mappings().all()
        return [{k: v for k, v in r.items() if k not in ("id", "result_id")} for r in rows]


    # ----- reviews --------------------------------------------------------------------------------
    def add_review(self, result_id: int, *, verdict: str, reviewer: str, label: str | None = None,
                   note: str | None = None, seen: int | None = None) -> dict:
        """Append a verdict (never an update): the row notes the label in force before it (the standing
        verdict's, or the model's prediction when none stands). Everything is read and decided under a
        lock on the result, in the transaction that inserts, so of two verdicts given at once on one part
        the second sees the first:

        - ``verdict``: one of LABEL_VERDICTS on an explained part; on a part that failed to explain, one
          of FAILED_ACTIONS (``explain_again`` also once it is explained: the request stays in history).
        - ``seen``: the id of the newest row the reviewer was shown (0: none). When another has been
          given since, nothing is recorded (:class:`VerdictConflict` names it). None: no such check.
        - the same reviewer giving the same verdict and label again within ``REPEAT_SECONDS`` (a reloaded
          page, a second key press) records nothing either.
        """
        with self.begin() as conn:
            found = conn.execute(sa.select(results.c.prediction_name, results.c.status)
                                 .where(results.c.id == result_id).with_for_update()).first()
            allowed = {"done": LABEL_VERDICTS + ("explain_again",), "failed": FAILED_ACTIONS}
            if found is None or verdict not in allowed.get(found.status, ()):
                state = "no such result" if found is None else f"its status is {found.status}"
                raise StoreError(f"result {result_id}: {verdict!r} cannot be recorded ({state})")
            last = conn.execute(sa.select(reviews).where(reviews.c.result_id == result_id)
                                .order_by(reviews.c.id.desc()).limit(1)).mappings().first()
            now = utcnow()
            refused = _refusal(dict(last) if last else None, seen, (reviewer, verdict, label), now)
            if refused:
                raise VerdictConflict(refused, dict(last) if last else None)
            if verdict in LABEL_VERDICTS:
                before = self._standing(conn, result_id)
                previous = found.prediction_name if before is None else before["label"]
            else:
                previous = None
            row = {"result_id": result_id, "verdict": verdict, "label": label, "reviewer": reviewer,
                   "note": note, "created_at": now, "previous_label": previous}
            row["id"] = conn.execute(sa.insert(reviews).values(row).returning(reviews.c.id)).scalar_one()
            if self.outbox:
                add_verdict_message(conn, row)
        return row

    @staticmethod
    def _standing(conn: sa.Connection, result_id: int, before_id: int | None = None) -> dict | None:
        """The result's newest standing verdict (older than review ``before_id`` when given), or None."""
        query = standing_reviews().where(reviews.c.result_id == result_id)
        if before_id is not None:
            query = query.where(reviews.c.id < before_id)
        found = conn.execute(query.order_by(reviews.c.id.desc()).limit(1)).mappings().first()
        return dict(found) if found else None

    def undo_review(self, reviewer: str, *, within: float = UNDO_SECONDS) -> dict:
        """Take back ``reviewer``'s newest standing verdict, given less than ``within`` seconds ago, by
        appending an ``undo`` row (nothing is deleted), returned with ``undone`` and ``restored`` (the
        verdict in force again, or None): ``label`` is the label in force again (None with
        no verdict left standing, the part is then unreviewed), ``previous_label`` the undone verdict's,
        ``undoes`` its id. Refused (:class:`VerdictConflict`) when there is none, it is too old, or
        someone gave a verdict on that part after it. Pressed again, it undoes the verdict before."""
        with self.begin() as conn:
            mine = standing_reviews().where(reviews.c.reviewer == reviewer).order_by(reviews.c.id.desc())
            target = conn.execute(mine.limit(1)).mappings().first()
            if target is None:
                raise VerdictConflict("you have no verdict to undo")
            conn.execute(sa.select(results.c.id).where(results.c.id == target["result_id"]).with_for_update())
            target = conn.execute(mine.where(reviews.c.id == target["id"])).mappings().first()
            if target is None:  # undone by this reviewer's other tab between the two reads
                raise VerdictConflict("that verdict was undone meanwhile; press u again for the one before")
            now = utcnow()
            part = target["result_id"]
            ago = (now - as_utc(target["created_at"])).total_seconds()
            if ago > within:
                raise VerdictConflict(
                    f"your last verdict (part #{part}, {target['verdict']}) was given {ago / 60:.0f} min "
                    "ago, "
                    f"longer than the {within / 60:.0f}-minute undo window; give a new verdict on the part "
                    "instead", dict(target))
            newest = self._standing(conn, part)
            if newest["id"] != target["id"]:
                raise VerdictConflict(
                    f"{newest['reviewer']} gave a verdict on part #{part} after yours "
                    f"({newest['verdict']} -> "
                    f"{newest['label'] or 'inconclusive'}); nothing was undone: give a new verdict there",
                    newest)
            restored = self._standing(conn, part, before_id=target["id"])
            row = {"result_id": part, "verdict": "undo", "label": restored["label"] if restored else None,
                   "reviewer": reviewer, "note": f"undoes verdict {target['id']} ({target['verdict']})",
                   "created_at": now, "previous_label": target["label"], "undoes": target["id"]}
            row["id"] = conn.execute(sa.insert(reviews).values(row).returning(reviews.c.id)).scalar_one()
            if self.outbox:
                add_verdict_message(conn, row)
        return {**row, "undone": dict(target), "restored": restored}

    # ----- the outbox (see store.outbox) ----------------------------------------------------------------
    def outbox_after(self, last_id: int, limit: int = 100) -> list[dict]:
        """Messages after ``last_id``, oldest first: id, kind, payload (with ``message_id``)."""
        with self.read() as conn:
            rows = conn.execute(sa.select(outbox.c.id, outbox.c.kind, outbox.c.payload)
                                .where(outbox.c.id > last_id).order_by(outbox.c.id).limit(limit)).mappings()
            return [{"id": r["id"], "kind": r["kind"], "payload": {**r["payload"], "message_id": r["id"]}}
                    for r in rows]

    def outbox_end(self) -> int:
        """The newest message's id (0 for none)."""
        with self.read() as conn:
            return conn.execute(sa.select(sa.func.max(outbox.c.id))).scalar() or 0

    def hold_sink(self, sink: str, holder: str, seconds: float) -> int | None:
        """Take or renew the lease to publish to ``sink`` for ``seconds``; the last message delivered to
        it, or None while another process holds it. A new sink starts before the first message."""
        with self.begin() as conn:
            now = db_now(conn)
            conn.execute(dialect_insert(conn, outbox_cursors).values(
                sink=sink, last_id=0, holder=None, lease_until=None, updated_at=now
            ).on_conflict_do_nothing(index_elements=["sink"]))
            cursor = conn.execute(sa.select(outbox_cursors).where(outbox_cursors.c.sink == sink)
                                  .with_for_update()).mappings().one()
            free = (cursor["holder"] in (None, holder) or cursor["lease_until"] is None
                    or as_utc(cursor["lease_until"]) < as_utc(now))
            if not free:
                return None
            conn.execute(sa.update(outbox_cursors).where(outbox_cursors.c.sink == sink).values(
                holder=holder, lease_until=now + timedelta(seconds=seconds), updated_at=now))
            return cursor["last_id"]

    def advance_sink(self, sink: str, holder: str, last_id: int) -> None:
        """Note that ``sink`` has every message up to ``last_id``; StoreError when ``holder`` lost the
        lease meanwhile (the other holder goes on from its own place)."""
        with self.begin() as conn:
            moved = conn.execute(sa.update(outbox_cursors).where(
                outbox_cursors.c.sink == sink, outbox_cursors.c.holder == holder,
                outbox_cursors.c.last_id < last_id).values(last_id=last_id, updated_at=db_now(conn))).rowcount
        if moved != 1:
            raise StoreError(f"{sink}: another process publishes to it now")

    def outbox_backlog(self, sink: str) -> int:
        """Messages not yet delivered to ``sink``."""
        with self.read() as conn:
            last = conn.execute(sa.select(outbox_cursors.c.last_id).where(outbox_cursors.c.sink == sink)
                                ).scalar() or 0
            return conn.execute(sa.select(sa.func.count()).select_from(outbox).where(outbox.c.id > last)
                                ).scalar_one()
