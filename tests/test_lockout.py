"""The review station's lock-out after wrong passwords is kept in the results store: several stations on
one store share it, a restart keeps it, failures on any number of other names do not flush it, and one
client address guessing many names is locked out too. Checked through the HTTP API of real station apps
(FastAPI's TestClient) on one SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from inspector.demo import example_dir
from inspector.station import auth
from inspector.station.app import create_app
from inspector.station.service import Station, StationSettings
from inspector.store.schema import login_failures

CONFIG = os.path.join(example_dir(), "config.yaml")
RIGHT, WRONG = ("line9", "right-password"), ("line9", "wrong-password")


@pytest.fixture
def clock(monkeypatch):
    """The failures' clock (the database's otherwise), moved by the test."""
    now = [datetime(2031, 1, 1, tzinfo=timezone.utc)]
    monkeypatch.setattr(auth, "clock", lambda _conn: now[0])
    return now


def station_app(out) -> tuple[Station, TestClient]:
    station = Station(StationSettings(config=CONFIG, out_dir=str(out)))
    return station, TestClient(create_app(station), client=("10.1.2.3", 40000))


def status(client: TestClient, credentials) -> int:
    return client.get("/api/v1/results", auth=credentials).status_code


ANOTHER_PROCESS = """
import sys
from fastapi.testclient import TestClient
from inspector.station.app import create_app
from inspector.station.service import Station, StationSettings
station = Station(StationSettings(config=sys.argv[1], out_dir=sys.argv[2]))
print(TestClient(create_app(station)).get("/api/v1/results", auth=("line9", sys.argv[3])).status_code)
station.store.close()
"""


def status_elsewhere(out, password: str) -> int:
    """The status a station in another process (a second station on the store, or this one restarted)
    answers for line9 with ``password``."""
    r = subprocess.run([sys.executable, "-c", ANOTHER_PROCESS, CONFIG, str(out), password],
                       capture_output=True, text=True, timeout=120, check=True)
    return int(r.stdout.strip().splitlines()[-1])


def test_stations_on_one_store_share_the_lock_out_and_a_restart_keeps_it(tmp_path, monkeypatch):
    out = tmp_path / "st"
    first, client_a = station_app(out)
    auth.add_user(first.store, *RIGHT, "reviewer")
    _second, client_b = station_app(out)  # a second station on the same store (same folder)
    with client_a, client_b:
        for k in range(10):  # five wrong passwords at each station (the database's clock)
            assert status(client_a if k % 2 else client_b, WRONG) == 401
        assert status(client_a, RIGHT) == 429 and status(client_b, RIGHT) == 429
    assert status_elsewhere(out, RIGHT[1]) == 429  # another process: a restart does not lift it
    _restarted, client_c = station_app(out)
    later = auth.clock  # five minutes on
    monkeypatch.setattr(auth, "clock", lambda conn: later(conn) + timedelta(seconds=auth.LOCK_SECONDS + 1))
    with client_c:
        assert status(client_c, RIGHT) == 200


def test_failures_on_other_names_never_flush_a_lock_out(tmp_path, clock):
    station, client = station_app(tmp_path / "st")
    auth.add_user(station.store, *RIGHT, "reviewer")
    with client:
        for _ in range(10):
            assert status(client, WRONG) == 401
        with station.store.begin() as conn:  # as many other names as ever flushed the old in-memory table
            conn.execute(sa.insert(login_failures), [
                {"username": f"guess{k}", "address": "10.9.9.9", "failed_at": clock[0]}
                for k in range(12000)])
        assert status(client, RIGHT) == 429


def test_one_address_guessing_many_names_is_locked_out(tmp_path, clock):
    station, client = station_app(tmp_path / "st")
    auth.add_user(station.store, *RIGHT, "reviewer")
    other = TestClient(client.app, client=("10.7.7.7", 40000))  # the same app; its life is client's
    with client:
        for k in range(auth.ADDRESS_FAILURES_ALLOWED):
            assert status(client, (f"name{k}", "wrong-password")) == 401
        locked = client.get("/api/v1/results", auth=RIGHT)
        assert locked.status_code == 429 and "10.1.2.3" in locked.json()["detail"]
        assert status(other, RIGHT) == 200  # another address is not affected
        clock[0] += timedelta(seconds=auth.LOCK_SECONDS + 1)
        assert status(client, RIGHT) == 200
