"""A stop request from SIGTERM or SIGINT: long runs check it between images and finish the current one."""

from __future__ import annotations

import signal


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
        self.requested = True
        self.signal_name = signal.Signals(signum).name
