"""Stops the processes of the local Ray an audit's driver started, once the driver is gone, however it
ended (SIGKILL included): Ray's agents outlive a killed driver and ignore SIGTERM.

The driver starts ``python -I ray_reaper.py DRIVER_PID`` before it starts Ray. The reaper notes
every process under the driver four times a second (Ray starts its agents and workers at any time), and
waits for the line ``end`` on its standard input or for the input's end (the driver died). Then it sends
SIGTERM to the noted processes that still run (the same processes: their start times are compared, so a
reused process id is never hit), and SIGKILL to those still there after a grace period. It reads /proc
(Ray's local mode runs on Linux) and imports nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time

GRACE_SECONDS = 5.0
LOOK_EVERY = 0.25  # seconds between two looks at the driver's processes


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of a process, from /proc (Linux, as Ray's local
    mode); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2:].split()  # after the command name, which may hold spaces
    return fields[0].decode(), int(fields[1]), int(fields[19])


def note_descendants(driver: int, known: dict[int, int]) -> None:
    """Add the processes under ``driver`` (but this one) to ``known``: pid -> start time."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _stat(int(name))) is not None:
            stats[int(name)] = stat
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    todo = list(children.get(driver, []))
    while todo:
        pid = todo.pop()
        if pid != os.getpid() and pid not in known:
            known[pid] = stats[pid][2]
        todo.extend(children.get(pid, []))


def _running(known: dict[int, int]) -> list[int]:
    """The noted processes still running as themselves (same start time: a reused pid is not theirs)."""
    alive = []
    for pid, started in known.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == started and stat[0] not in ("Z", "X"):
            alive.append(pid)
    return alive


def reap(known: dict[int, int], grace: float = GRACE_SECONDS) -> int:
    """Stop the noted processes that still run: SIGTERM, then SIGKILL after ``grace`` seconds; returns
    how many needed stopping."""
    first = _running(known)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _running(known):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while _running(known) and time.monotonic() < deadline:
            time.sleep(0.1)
    return len(first)


def main(argv: list[str]) -> int:
    driver = int(argv[0])
    known: dict[int, int] = {}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C at the terminal is the driver's to handle

    def stop_now(*_):  # the service manager stops everything: so does the reaper, before it goes
        reap(known)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop_now)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], LOOK_EVERY)
        if ready:
            line = sys.stdin.readline()
            if not line or line.strip() == "end":  # the driver died, or shut its Ray down
                break
        note_descendants(driver, known)
    reap(known)
    return 0


class Reaper:
    """The driver's side: start the reaper before Ray, end it after ``ray.shutdown()``."""

    def __init__(self):
        # run as a plain script, isolated (-I): the package's imports (onnxruntime, OpenCV) are not needed
        self.process = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), str(os.getpid())],
                                        stdin=subprocess.PIPE, text=True, start_new_session=True)

    def end(self, timeout: float = 3 * GRACE_SECONDS) -> None:
        """Ray was shut down: the reaper stops whatever of it is left, then exits."""
        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.write("end\n")
            self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
