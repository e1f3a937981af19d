"""Outages under the long-running services (issue: faults a red-team pass found): PostgreSQL stopped and
started again, and a real tmpfs filled and grown again, under the review station and under `watch`; two
stations on one store answering for an image that the other is explaining. Afterwards every image is
done exactly once, with no restart.

The services run in this process (the station through FastAPI's TestClient, `watch` in a thread), so that
the outage can be made to land at an exact moment: the engine's explain call is wrapped to stop the
database, or fill the disk, after the image was claimed and explained and before its result is recorded.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
import time

import cv2
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from inspector.common.stop import Stop
from inspector.demo import example_dir
from inspector.engine.inspector import Inspector
from inspector.jobs import watch as watch_module
from inspector.jobs.audit import run_audit
from inspector.quality.synthetic import sample
from inspector.station import auth
from inspector.station.app import create_app
from inspector.station.service import Station, StationSettings

from .postgres import new_database, own_server
from .test_audit import tmpfs

CONFIG = os.path.join(example_dir(), "config.yaml")
LINE = ("line", "line-password")


def png(i: int) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(sample(31, i).image, cv2.COLOR_RGB2BGR))[1].tobytes()


def wait_for(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def results_of(url: str) -> list[tuple[str, str]]:
    """(image SHA-256, status) of every result row, read with a connection of the test's own."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text("SELECT image_sha256, status FROM results"))]
    finally:
        engine.dispose()


def fill(folder) -> None:
    """Write a filler file into ``folder`` until its file system is full."""
    block = b"\0" * 65536
    with open(os.path.join(folder, "filler.bin"), "ab") as f:
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    with open(os.path.join(folder, "filler.bin"), "ab") as f:  # the last partial blocks too
        for size in (4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
                    f.flush()
            except OSError:
                pass


def grow(folder) -> None:
    subprocess.run(["mount", "-o", "remount,size=96m", str(folder)], check=True)


def then(explain, action):
    """``explain`` (an engine's explain_batch) that runs ``action()`` once, after its first call: the
    image is claimed and explained, its result not yet recorded."""
    done = []

    def wrapped(*args, **kwargs):
        result = explain(*args, **kwargs)
        if not done:
            done.append(True)
            action()
        return result
    return wrapped


def station_on(out, store_url=None) -> Station:
    station = Station(StationSettings(config=CONFIG, out_dir=str(out), store_url=store_url))
    auth.add_user(station.store, *LINE, "reviewer")
    return station


def post(client, data: bytes, name: str = "part.png", **params):
    return client.post("/api/v1/explain", files={"image": (name, data, "image/png")}, auth=LINE,
                       params=params)


def test_the_station_gives_back_what_a_postgres_outage_left_claimed(tmp_path):
    """PostgreSQL stops while an upload is explained: 503, and the claim it could not give back is given
    back once the database is there again, so the same upload and an audit of the same image both get
    their result (before, the image stayed 'running' under the live station: 200 busy forever, and the
    audit waited)."""
    with own_server() as pg:
        url = new_database(pg.url)
        station = station_on(tmp_path / "st", url)
        station.insp.explain_batch = then(station.insp.explain_batch, pg.stop)
        image = png(1)
        with TestClient(create_app(station)) as client:
            down = post(client, image)
            assert down.status_code == 503, down.text
            assert client.get("/healthz").status_code == 503
            pg.start()
            healthy = wait_for(lambda: client.get("/healthz").status_code == 200, 30)
            assert healthy, client.get("/healthz").text
            folder = tmp_path / "audit-in"
            folder.mkdir()
            (folder / "same.png").write_bytes(image)
            summary = run_audit(station.insp, str(folder), str(tmp_path / "audit-out"), store_url=url,
                                wait_for_others=3.0)
            assert (summary.explained, summary.pending) == (1, 0)  # not left to wait for a kept claim
            again = post(client, image)
            assert again.status_code == 200 and again.json()["prediction"] is not None, again.text
        assert results_of(url) == [(hashlib.sha256(image).hexdigest(), "done")]


def _watch_thread(insp, tmp_path, url=None):
    stop, lines = Stop(), []
    folders = (str(tmp_path / "in"), str(tmp_path / "out"))
    thread = threading.Thread(target=watch_module.watch, args=(insp, *folders),
                              kwargs={"store_url": url, "poll": 0.1, "settle": 0.3, "stop": stop,
                                      "log": lines.append, "warm_up": False}, daemon=True)
    return thread, stop, lines


def _done_once(tmp_path, images: dict[str, bytes], url: str) -> None:
    """Every image in the done folder with its own bytes, none left in the input, one done result each."""
    done = tmp_path / "out" / "done"
    assert {n: (done / n).read_bytes() for n in images} == images
    assert os.listdir(tmp_path / "in") == []
    rows = results_of(url)
    assert sorted(rows) == sorted((hashlib.sha256(d).hexdigest(), "done") for d in images.values())


def test_watch_explains_after_a_postgres_outage_without_a_restart(tmp_path, monkeypatch):
    monkeypatch.setattr(watch_module, "RETRY_PAUSE", 0.5)
    (tmp_path / "in").mkdir()
    insp = Inspector.from_config(CONFIG)
    with own_server() as pg:
        url = new_database(pg.url)
        insp.explain_batch = then(insp.explain_batch, pg.stop)
        thread, stop, lines = _watch_thread(insp, tmp_path, url)
        thread.start()
        try:
            images = {f"p{i}.png": png(10 + i) for i in range(3)}
            for name, data in images.items():
                (tmp_path / "in" / name).write_bytes(data)
            assert wait_for(lambda: any(line.startswith("ERROR") for line in lines), 60), lines
            pg.start()
            assert wait_for(lambda: all((tmp_path / "out" / "done" / n).exists() for n in images), 60), lines
        finally:
            stop.requested = True
            thread.join(timeout=60)
        _done_once(tmp_path, images, url)
    assert sum(line.startswith("OK ") for line in lines) == 3, lines


def test_watch_explains_after_a_full_disk_is_grown_without_a_restart(tmp_path, monkeypatch):
    """The disk under the output folder (and its SQLite store) fills while images are explained: the
    images stay in the input folder, and are explained once it has room again (a real tmpfs, root)."""
    monkeypatch.setattr(watch_module, "RETRY_PAUSE", 0.5)
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    with tmpfs(out, "4m"):
        insp = Inspector.from_config(CONFIG)
        insp.explain_batch = then(insp.explain_batch, lambda: fill(out))
        url = "sqlite:///" + str(out / "results.db")
        thread, stop, lines = _watch_thread(insp, tmp_path)
        thread.start()
        try:
            images = {f"p{i}.png": png(20 + i) for i in range(3)}
            for name, data in images.items():
                (tmp_path / "in" / name).write_bytes(data)
            assert wait_for(lambda: any(line.startswith("ERROR") for line in lines), 60), lines
            grow(out)
            assert wait_for(lambda: all((out / "done" / n).exists() for n in images), 60), lines
        finally:
            stop.requested = True
            thread.join(timeout=60)
        _done_once(tmp_path, images, url)
        assert not [n for n in os.listdir(out / "images") if n.endswith(".part")]


def test_the_station_says_when_its_disk_is_full_and_records_once_it_has_room(tmp_path):
    """/healthz fails while the station's disk is full (it said "ok" before); an upload whose result
    could not be written is explained once there is room, and recorded once."""
    out = tmp_path / "st"
    with tmpfs(out, "24m"):  # above the 16 MiB /healthz asks to be free
        station = station_on(out)
        station.insp.explain_batch = then(station.insp.explain_batch, lambda: fill(out))
        first, second = png(2), png(3)
        with TestClient(create_app(station)) as client:
            assert client.get("/healthz").status_code == 200
            full = post(client, first)  # the disk fills while it is explained
            assert full.status_code == 503, full.text
            health = client.get("/healthz")
            problems = health.json()["problems"]
            assert health.status_code == 503 and any("free" in p for p in problems), health.text
            assert post(client, second).status_code == 503  # nothing can be kept now
            grow(out)
            healthy = wait_for(lambda: client.get("/healthz").status_code == 200, 30)
            assert healthy, client.get("/healthz").text
            for data in (first, second):
                r = post(client, data)
                assert r.status_code == 201 and r.json()["state"] == "explained", r.text
        url = "sqlite:///" + str(out / "results.db")
        expected = sorted((hashlib.sha256(d).hexdigest(), "done") for d in (first, second))
        assert sorted(results_of(url)) == expected


def test_an_image_another_station_is_explaining_is_never_a_success_without_a_result(tmp_path, request):
    """Two stations on one PostgreSQL store, the same new image posted to both: the one that did not
    claim it answers 202 with a Location to poll (or, with ?wait=, the result once the other finished),
    never 200 without a result."""
    url = new_database(request.getfixturevalue("postgres_server"))
    a = station_on(tmp_path / "a", url)
    b = Station(StationSettings(config=CONFIG, out_dir=str(tmp_path / "b"), store_url=url))  # its users: a's
    explaining, go_on = threading.Event(), threading.Event()
    real = a.insp.explain_batch

    def held(*args, **kwargs):
        explaining.set()
        assert go_on.wait(60)
        return real(*args, **kwargs)
    a.insp.explain_batch = held
    image = png(4)
    with TestClient(create_app(a)) as client_a, TestClient(create_app(b)) as client_b:
        first: dict = {}
        thread = threading.Thread(target=lambda: first.update(r=post(client_a, image)))
        thread.start()
        assert explaining.wait(60)
        busy = post(client_b, image, wait=0)
        assert busy.status_code == 202, busy.text
        location = busy.headers["location"]
        assert busy.json()["status"] == "running" and "prediction" not in busy.json()
        assert client_b.get(location, auth=LINE).status_code == 202
        waited: dict = {}
        waiter = threading.Thread(target=lambda: waited.update(r=post(client_b, image, wait=60)))
        waiter.start()
        time.sleep(0.5)
        go_on.set()
        thread.join(60)
        waiter.join(60)
        assert first["r"].status_code == 201 and first["r"].json()["state"] == "explained"
        answer = waited["r"]
        assert answer.status_code == 200 and answer.json()["prediction"] is not None, answer.text
        polled = client_b.get(location, auth=LINE)
        assert polled.status_code == 200 and polled.json()["prediction"] == first["r"].json()["prediction"]
        responses = client_b.get("/openapi.json").json()["paths"]["/api/v1/explain"]["post"]["responses"]
        assert "202" in responses and "Location" in responses["202"]["headers"]
    assert results_of(url) == [(hashlib.sha256(image).hexdigest(), "done")]


@pytest.fixture(autouse=True)
def _no_leftover_threads():
    yield
    for thread in threading.enumerate():
        if thread.name == "store-heartbeat":
            thread.join(timeout=10)
