"""A throwaway PostgreSQL server for the store tests: ``initdb`` + ``pg_ctl`` in a temporary folder on a
free local port, as an unprivileged user when the tests run as root; stopped and removed afterwards.

``SISE_TEST_POSTGRES_URL`` (a server URL whose user may create databases) replaces it. Without the
server programs the PostgreSQL tests are skipped, except under CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest


def _binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user(user: str | None, args: list[str]) -> list[str]:
    if user is None:
        return args
    return ["runuser", "-u", user, "--", *args]


class Server:
    """A running throwaway server that a test may stop and start again (an outage): ``url`` (without a
    database name), :meth:`stop`, :meth:`start`."""

    def __init__(self, bindir: str, user: str | None, folder: str, port: int):
        self.bindir, self.user, self.folder, self.port = bindir, user, folder, port
        self.data, self.log = os.path.join(folder, "data"), os.path.join(folder, "log")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}"

    def _pg_ctl(self, *args: str, check: bool) -> None:
        subprocess.run(_as_user(self.user, [f"{self.bindir}/pg_ctl", "-D", self.data, *args]),
                       check=check, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-l", self.log, "-w", "-o", options, "start", check=True)

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "stop", check=False)


@contextlib.contextmanager
def own_server():
    """A server of the test's own (never the session's, which other tests use): yields a :class:`Server`."""
    bindir = _binaries()
    if bindir is None:
        message = "PostgreSQL server programs (initdb, pg_ctl) not found; apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    user = None
    folder = tempfile.mkdtemp(prefix="sise-pg-")
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = "postgres"
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    server = Server(bindir, user, folder, _free_port())
    try:
        subprocess.run(_as_user(user, [f"{bindir}/initdb", "-D", server.data, "-A", "trust", "-U", "postgres",
                                       "--no-sync"]), check=True, capture_output=True, timeout=120)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def postgres_server():
    """Yields a server URL (``postgresql+psycopg://postgres@127.0.0.1:PORT``) without a database name."""
    if os.environ.get("SISE_TEST_POSTGRES_URL"):
        yield os.environ["SISE_TEST_POSTGRES_URL"].rstrip("/")
        return
    with own_server() as server:
        yield server.url


def new_database(server: str) -> str:
    """Create an empty database on ``server``; returns its URL."""
    import psycopg

    name = "sise_" + uuid.uuid4().hex[:12]
    plain = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"
