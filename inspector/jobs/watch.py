"""`inspector watch`: a long-running service explaining each new image in a folder once.

A file is picked up only when its size and modification time have not changed for ``settle`` seconds
(a copy in progress is left alone), explained and recorded in the store (artifacts under ``<out>/images``),
then moved to the done folder, or to the failed folder with a ``<name>.error.txt`` beside it. A moved file
never replaces another: a name already taken gets a numbered suffix (``part.1.png``). A restart continues
with what is still in the input folder; an image caught between its result and its move is found
finished in the store and just moved. If outputs cannot be written (disk full), the file stays where it is
and is tried again after a pause. SIGTERM and SIGINT finish the image in progress and exit with status 0.
One log line per image on stdout.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import time

from ..common.atomic import write_atomic
from ..common.folders import check_output_folder, is_inside
from ..common.identity import sidecar_path
from ..common.stop import Stop
from ..engine.inspector import Inspector
from ..engine.runtime.preprocess import IMAGE_EXTENSIONS
from ..errors import InspectorError, OutputError
from ..integrations.publisher import start_publisher
from ..store import Store, StoreError, default_url, display_path, display_url
from .record import Outcome, explain_and_record_many, result_settings, settings_hash, start_job

RETRY_PAUSE = 10.0  # seconds to wait after an output error before trying again


def _candidates(folder: str) -> list[str]:
    return sorted((f for f in os.listdir(folder)
                   if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
                   and os.path.isfile(os.path.join(folder, f))), key=os.fsencode)


def move_unique(src: str, folder: str) -> str:
    """Move ``src`` into ``folder`` without ever replacing a file there; returns the new path."""
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(src))
    for k in range(100000):
        dst = os.path.join(folder, f"{stem}{ext}" if k == 0 else f"{stem}.{k}{ext}")
        try:
            os.link(src, dst)  # fails when dst exists: an atomic "create if absent"
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
                raise
            try:  # another file system, or one without hard links: exclusive create, then copy
                with open(src, "rb") as a, open(dst, "xb") as b:
                    shutil.copyfileobj(a, b)
            except FileExistsError:
                continue
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(dst)  # a half copy never stays in the done folder
                raise
        os.unlink(src)
        return dst
    raise OSError(errno.EEXIST, "no free name", os.path.join(folder, stem + ext))


def check_folders(in_dir: str, out_dir: str, done_dir: str, failed_dir: str) -> None:
    for option, folder in (("--out", out_dir), ("--done", done_dir), ("--failed", failed_dir)):
        check_output_folder(option, folder)
        if is_inside(folder, in_dir):
            raise InspectorError(f"{option} {folder} lies inside --in {in_dir}; choose a folder outside it")


def watch(insp: Inspector, in_dir: str, out_dir: str, done_dir: str | None = None,
          failed_dir: str | None = None, *, store_url: str | None = None, poll: float = 1.0,
          settle: float = 2.0, stop: Stop | None = None, log=print, engine_lock=None, observe=None,
          warm_up: bool = True, batch_images: int | None = None, output_state=None,
          publish: bool = True) -> int:
    """Run until ``stop.requested``; returns the number of images handled. Done/failed folders default to
    ``<out>/done`` and ``<out>/failed``. Images that settled in the same scan are explained up to
    ``batch_images`` at a time (``Inspector.batch_images``). A service that shares ``insp`` with other
    threads (the review station) passes the lock they all hold while explaining,
    ``observe(outcome, seconds)`` to count, and ``output_state(message)`` to learn of output errors
    (the message; None once images are recorded again). With ``integrations`` in the config, the
    results also go to the line's systems from here (``publish``; the station publishes itself)."""
    if not os.path.isdir(in_dir):
        raise InspectorError(f"--in {in_dir}: no such folder; create it or check the path (the camera or "
                             "line PC writes images there)")
    in_dir, out_dir = os.path.abspath(in_dir), os.path.abspath(out_dir)
    done_dir = os.path.abspath(done_dir or os.path.join(out_dir, "done"))
    failed_dir = os.path.abspath(failed_dir or os.path.join(out_dir, "failed"))
    check_folders(in_dir, out_dir, done_dir, failed_dir)
    stop = stop or Stop()
    for folder in (out_dir, done_dir, failed_dir):
        os.makedirs(folder, exist_ok=True)
    store = Store(store_url or default_url(out_dir))
    scope = "watch:" + hashlib.sha256(
        f"{settings_hash(result_settings(insp))}|{display_path(os.path.abspath(in_dir))}".encode()).hexdigest()[:32]
    job = start_job(insp, store, kind="watch", out_dir=out_dir, scope=scope, source=display_path(in_dir))
    seen: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, first time seen unchanged)
    handled = 0
    publisher = start_publisher(insp.config.integrations, store, good_classes=insp.config.good_classes,
                                folder=out_dir) if publish else None
    try:
        if warm_up:  # a service that shares a warm engine (the station) skips it
            log(f"warmed up in {insp.warm_up():.2f} s ({insp.sessions.provider})")
        log(f"watching {display_path(in_dir)} -> {display_path(out_dir)} (done: {display_path(done_dir)}, "
            f"failed: {display_path(failed_dir)}, store: {display_url(store.url)})")
        with job.keep_alive():
            while not stop.requested:
                now = _scan(job, in_dir, done_dir, failed_dir, seen, settle, stop, log,
                            engine_lock or contextlib.nullcontext(), observe,
                            insp.batch_images(batch_images), output_state or (lambda _message: None))
                handled += now
                if now and publisher is not None:
                    publisher.poke()
                if not stop.requested:
                    time.sleep(poll)
    finally:
        if publisher is not None:
            publisher.stop()
        with contextlib.suppress(StoreError):  # the run's end is noted if the store can take it
            store.end_run(job.run_id, "finished" if stop.requested else "stopped", f"{handled} image(s)")
        store.close()
    log(f"stopping after {handled} image(s)")
    return handled


def _scan(job, in_dir, done_dir, failed_dir, seen, settle, stop, log, engine_lock, observe,
          batch: int, output_state) -> int:
    now = time.monotonic()
    names = _candidates(in_dir)
    for name in list(seen):
        if name not in names:
            del seen[name]
    ready = []
    for name in names:
        path = os.path.join(in_dir, name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        key = (st.st_size, st.st_mtime_ns)
        if name not in seen or seen[name][:2] != key:
            seen[name] = (*key, now)
            continue
        if now - seen[name][2] < settle:
            continue
        del seen[name]
        ready.append(path)
    handled = 0
    for first in range(0, len(ready), batch):
        if stop.requested:
            break
        group = ready[first:first + batch]
        start = time.perf_counter()
        try:
            with engine_lock:
                outcomes = explain_and_record_many(job, group)
        except OutputError as e:
            names = ", ".join(display_path(os.path.basename(p)) for p in group)
            log(f"ERROR {names}: {e}; trying again in {RETRY_PAUSE:.0f} s")
            output_state(str(e))
            for outcome in e.recorded:  # recorded before the error: filed away as usual
                handled += _handled(job, outcome, done_dir, failed_dir, log, observe, 0.0)
            stop.wait(RETRY_PAUSE)
            continue
        output_state(None)
        seconds = (time.perf_counter() - start) / len(group)
        for outcome in outcomes:
            handled += _handled(job, outcome, done_dir, failed_dir, log, observe, seconds)
    return handled


def _handled(job, outcome: Outcome, done_dir, failed_dir, log, observe, seconds: float) -> int:
    """File one image's outcome away; 0 for an image another process is explaining right now (left)."""
    if outcome.state == "busy":
        return 0
    if observe is not None:
        observe(outcome, seconds)
    name = os.path.basename(outcome.path)
    try:
        _file_away(job, outcome, done_dir, failed_dir, log, seconds)
    except OSError as e:
        log(f"ERROR {display_path(name)}: recorded in the store, but moving it or writing its error file "
            f"failed ({e.strerror}: {display_path(e.filename or '')})")
    except StoreError as e:  # the database went away for a moment: the file is handled, its row waits
        log(f"ERROR {display_path(name)}: moved, but the store could not note where ({e})")
    return 1


def _move_sidecar(image: str, moved_image: str) -> None:
    """The image's identity sidecar follows it, named after its new name (never replacing a file)."""
    side, target = sidecar_path(image), sidecar_path(moved_image)
    if not os.path.isfile(side):
        return
    try:
        os.link(side, target)
    except OSError:  # the name is taken (keep both) or another file system: move_unique copes
        move_unique(side, os.path.dirname(moved_image))
        return
    os.unlink(side)


def _moved(name: str, moved: str) -> str:
    """``part.png``, or ``part.png -> part.1.png`` when the name was taken in the done/failed folder."""
    new = os.path.basename(moved)
    return display_path(name) if new == name else f"{display_path(name)} -> {display_path(new)}"


def _file_away(job, outcome: Outcome, done_dir: str, failed_dir: str, log, seconds: float) -> None:
    name = os.path.basename(outcome.path)
    moved = move_unique(outcome.path, failed_dir if outcome.failed else done_dir)
    job.store.rename_input(job.scope, outcome.path, moved)
    if job.insp.config.identity.sidecar:
        _move_sidecar(outcome.path, moved)
    if outcome.identity_note:
        log(f"WARNING {display_path(name)}: identity: {outcome.identity_note}")
    if outcome.failed:
        error = outcome.error or "failed before (same content and settings)"
        write_atomic(error_file(moved), error + "\n")
        log(f"FAILED {_moved(name, moved)}: {error}")
    else:
        row = outcome.fields or job.store.result(outcome.result_id)
        note = "" if outcome.state == "explained" else " (already in the store)"
        log(f"OK {_moved(name, moved)}: {row['prediction_name']} {row['confidence']:.3f}, "
            f"{row['region_count']} region(s), {seconds:.2f} s{' FLAGGED' if row['flagged'] else ''}{note}")


def error_file(moved: str, limit: int = 200) -> str:
    """``<moved>.error.txt``; for a name too long for the file system, a shortened one with a hash."""
    folder, name = os.path.split(moved)
    raw = os.fsencode(name)
    if len(raw) + len(".error.txt") <= limit:
        return moved + ".error.txt"
    short = os.fsdecode(raw[:limit - 40]) + "-" + hashlib.sha256(raw).hexdigest()[:12]
    return os.path.join(folder, short + ".error.txt")
