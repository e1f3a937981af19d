"""Progress of a long job on standard error: on a terminal one line rewritten in place; anywhere else (a
log file, cron, journald) plain lines, one every ``every`` items (default: each 5 % of the total), so a
log never holds one endless line of carriage returns. The rate and the time left are measured from the
first report on: the first batch carries the start-up (model load, the first run's allocations), which
made the first estimate of a batched run several times too long."""

from __future__ import annotations

import sys
import time


class Progress:
    """``update(done, note)`` as items finish, ``finish()`` at the end (it prints the summary line)."""

    def __init__(self, total: int, *, unit: str = "img", every: int | None = None, stream=None,
                 clock=time.monotonic):
        self.total, self.unit, self.clock = total, unit, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every or max(1, total // 20)
        self.start = clock()
        self.first: tuple[float, int] | None = None  # (time, done) of the first report
        self.done, self.last_printed, self.open_line = 0, 0, False

    def rate(self, now: float) -> float | None:
        """Items per second since the first report (None until a second one)."""
        if self.first is None or self.done <= self.first[1] or now <= self.first[0]:
            return None
        return (self.done - self.first[1]) / (now - self.first[0])

    def update(self, done: int, note: str = "") -> None:
        now = self.clock()
        self.done = done
        if self.first is None:
            self.first = (now, done)
        rate = self.rate(now)
        eta = f"eta {(self.total - done) / rate:.0f} s" if rate else "eta --"
        speed = rate if rate else done / max(now - self.start, 1e-9)
        line = f"[{done}/{self.total}] {speed:.2f} {self.unit}/s, {eta}"
        if self.tty:
            print(f"\r{line} {note[:60]:<60}", end="", file=self.stream, flush=True)
            self.open_line = True
        elif done == self.total or done - self.last_printed >= self.every:
            print(f"{line}{f' {note}' if note else ''}", file=self.stream, flush=True)
            self.last_printed = done

    def finish(self, what: str = "done") -> None:
        """End the line in place (terminal) and print one summary line: items, time, rate."""
        seconds = self.clock() - self.start
        if self.open_line:
            print(file=self.stream)
            self.open_line = False
        if self.total:
            print(f"{what}: {self.done} of {self.total} in {seconds:.1f} s "
                  f"({self.done / max(seconds, 1e-9):.2f} {self.unit}/s)", file=self.stream, flush=True)
