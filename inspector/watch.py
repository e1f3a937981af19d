"""`inspector watch`: a long-running service explaining each new image in a folder once.

A file is picked up only when its size and modification time have not changed for ``settle`` seconds
(a copy in progress is left alone), explained into the output folder (files renamed into place when
complete), then moved to the done folder, or to the failed folder with a ``<name>.error.txt`` beside it.
A restart continues with what is still in the input folder; an image caught between its outputs and its
move is explained again with identical results (outputs are overwritten atomically). SIGTERM and SIGINT
finish the image in progress and exit with status 0. One log line per image on stdout.
"""

from __future__ import annotations

import os
import signal
import time

from .engine import Inspector
from .errors import InspectorError
from .jobs import explain_file
from .preprocess import IMAGE_EXTENSIONS


class Stop:
    """Set by SIGTERM/SIGINT; the loop checks it between images."""

    def __init__(self):
        self.requested = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True


def _candidates(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
                  and os.path.isfile(os.path.join(folder, f)))


def _move(src: str, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, os.path.basename(src))
    os.replace(src, dst)
    return dst


def watch(insp: Inspector, in_dir: str, out_dir: str, done_dir: str, failed_dir: str, *, poll: float = 1.0,
          settle: float = 2.0, stop: Stop | None = None, log=print) -> int:
    """Run until ``stop.requested``; returns the number of images handled."""
    stop = stop or Stop()
    for folder in (in_dir, out_dir, done_dir, failed_dir):
        os.makedirs(folder, exist_ok=True)
    seen: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, first time seen unchanged)
    handled = 0
    log(f"warmed up in {insp.warm_up():.2f} s ({insp.sessions.provider})")
    log(f"watching {in_dir} -> {out_dir} (done: {done_dir}, failed: {failed_dir})")
    while not stop.requested:
        now = time.monotonic()
        names = _candidates(in_dir)
        for name in list(seen):
            if name not in names:
                del seen[name]
        for name in names:
            if stop.requested:
                break
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
            start = time.perf_counter()
            try:
                exp, rv = explain_file(insp, path, out_dir)
                _move(path, done_dir)
                classes = insp.config.classes
                pred = classes[exp.predicted] if classes else str(exp.predicted)
                log(f"OK {name}: {pred} {exp.scores[exp.predicted]:.3f}, {len(rv.regions)} region(s), "
                    f"{time.perf_counter() - start:.2f} s" + (" FLAGGED" if rv.flagged else ""))
            except (InspectorError, OSError) as e:
                moved = _move(path, failed_dir) if os.path.exists(path) else path
                with open(moved + ".error.txt", "w", encoding="utf-8") as f:
                    f.write(str(e) + "\n")
                log(f"FAILED {name}: {e}")
            handled += 1
        if not stop.requested:
            time.sleep(poll)
    log(f"stopping after {handled} image(s)")
    return handled
