"""A review station served by uvicorn on a free local port in a background thread, for the benchmarks."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request

import uvicorn

from inspector.station.app import create_app
from inspector.station.service import Station


@contextlib.contextmanager
def serving(station: Station):
    """Yields the base URL while the station answers on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(station), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        with contextlib.suppress(OSError), urllib.request.urlopen(base + "/healthz", timeout=1):
            break
        time.sleep(0.1)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join()
