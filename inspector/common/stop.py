"""A stop request from SIGTERM or SIGINT: long runs check it between images and finish the current one.
A second signal does not wait: it ends the process at once (exit status 3), whatever it is doing."""

from __future__ import annotations

import signal
import time

from ..errors import Interrupted


class Stop:
    """Set by SIGTERM/SIGINT once :meth:`install` ran; loops check ``requested`` between images."""

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None

    def install(self) -> Stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # asked twice: whatever the process is waiting for, it ends now
            raise Interrupted(f"stopped at once by a second {signal.Signals(signum).name}; run the same "
                              "command again to continue")
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, less when a stop is requested meanwhile; returns ``requested``."""
        deadline = time.monotonic() + seconds
        while not self.requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
        return self.requested
