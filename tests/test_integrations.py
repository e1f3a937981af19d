"""Results and verdicts to the line's systems, against real counterparts: Debian's mosquitto started by the
tests on a free local port (stopped in the middle of a flow of 50 parts and started again; a wrong
password; TLS with a throwaway CA), and a local HTTP server that fails the first attempts (the webhook).
The messages are checked against the store (every part and verdict once at least, in order, the
signature by HMAC computed here) and the outbox's cursor and lease rules on both store backends.

Needs /usr/sbin/mosquitto (`apt-get install mosquitto`; `.ci/run` installs it): under CI=true a missing
broker fails the MQTT tests instead of skipping them."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
import typing
from types import SimpleNamespace

import cv2
import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient

from inspector.demo import example_dir
from inspector.integrations import IntegrationError
from inspector.station import auth
from inspector.station.app import create_app
from inspector.station.service import Station, StationSettings
from inspector.store import ResultKey, Store, StoreError
from inspector.store.schema import outbox

MOSQUITTO = "/usr/sbin/mosquitto"
SAMPLES = os.path.join(example_dir(), "samples")
needs_broker = pytest.mark.skipif(
    not os.path.exists(MOSQUITTO) and os.environ.get("CI") != "true",
    reason=f"{MOSQUITTO} is missing (apt-get install mosquitto)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_image(k: int) -> bytes:
    """The crack sample with pixel k changed: a new part for the store each time."""
    image = cv2.imread(os.path.join(SAMPLES, "crack.png"), cv2.IMREAD_COLOR)
    row, col = divmod(k, image.shape[1])
    image[row, col, 0] ^= 0x5A
    return cv2.imencode(".png", image)[1].tobytes()


def write_config(tmp_path, integrations: dict, name: str = "config") -> str:
    with open(os.path.join(example_dir(), "config.yaml")) as f:
        raw = yaml.safe_load(f)
    raw["model"] = os.path.join(example_dir(), raw["model"])
    raw["integrations"] = integrations
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@contextlib.contextmanager
def station_for(tmp_path, integrations: dict, name: str = "station"):
    """A station (TestClient) in ``tmp_path / name`` whose config has ``integrations``."""
    station = Station(StationSettings(config=write_config(tmp_path, integrations, name),
                                      out_dir=str(tmp_path / name)))
    auth.add_user(station.store, "line3", "line3-password", "reviewer")
    with TestClient(create_app(station)) as client:
        yield SimpleNamespace(station=station, client=client)


def upload(st, k: int, **identity) -> dict:
    r = st.client.post("/api/v1/explain", files={"image": (f"part_{k}.png", part_image(k), "image/png")},
                       data=identity, auth=("line3", "line3-password"))
    assert r.status_code in (200, 201), r.text
    return r.json()


def outbox_ids(store: Store, kind: str) -> list[int]:
    with store.read() as conn:
        return [i for (i,) in conn.execute(sa.select(outbox.c.id).where(outbox.c.kind == kind)
                                           .order_by(outbox.c.id))]


def wait_for(condition, timeout=60.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# ----- a throwaway broker ------------------------------------------------------------------------------
class Broker:
    """mosquitto on a free port with its own config; :meth:`stop` and :meth:`start` again keep the port
    and (persistence on) the subscribers' sessions."""

    def __init__(self, folder, *, users: dict | None = None, tls: dict | None = None):
        if not os.path.exists(MOSQUITTO):
            raise RuntimeError(f"{MOSQUITTO} is missing: .ci/run installs it (apt-get install -y mosquitto)")
        self.folder, self.port = folder, _free_port()
        lines = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {folder}/",
                 "autosave_interval 1", f"log_dest file {folder}/mosquitto.log",
                 f"user {getpass.getuser()}"]  # as root it would become 'mosquitto', who cannot read here
        if users:
            passwords = folder / "passwords"
            passwords.write_text("")
            for name, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), name, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        (folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        self.proc = None
        self.start()

    def start(self) -> None:
        with open(self.folder / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.folder / "mosquitto.conf")],
                                         stdout=err, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            assert self.proc.poll() is None, (self.folder / "stderr.log").read_text()
            assert time.monotonic() < deadline, "mosquitto did not listen within 20 s"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # it saves the sessions on the way out
            self.proc.wait(timeout=20)


@pytest.fixture
def broker_factory(tmp_path):
    made = []

    def make(name="broker", **kw) -> Broker:
        folder = tmp_path / name
        folder.mkdir()
        made.append(Broker(folder, **kw))
        return made[-1]

    yield make
    for broker in made:
        broker.stop()


class Subscriber:
    """A paho client with a persistent session (its queued messages survive the broker's restart)."""

    def __init__(self, port: int, topic: str, *, tls_ca: str | None = None):
        from paho.mqtt import client as mqtt

        self.messages: list[tuple[str, dict, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}",
                                  clean_session=False, protocol=mqtt.MQTTv311)
        if tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        self.subscribed = threading.Event()  # the broker confirmed the subscription (SUBACK)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload), msg.retain))

    def got(self, suffix: str) -> list[dict]:
        with self.lock:
            return [m for t, m, _ in self.messages if t.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ----- MQTT ---------------------------------------------------------------------------------------------
@needs_broker
def test_mqtt_loses_nothing_when_the_broker_restarts_in_a_flow_of_50_parts(tmp_path, broker_factory):
    """25 parts, the broker stopped, 25 more (recorded meanwhile, their messages waiting in the outbox),
    the broker started again: the subscriber gets a result message for each of the 50 parts, first
    arrivals in the outbox's order, and the verdict given while the broker was down; the retained
    last result of the line and camera is the newest part."""
    broker = broker_factory()
    subscriber = Subscriber(broker.port, "sise/line3/#")
    try:
        wait_for(subscriber.subscribed.is_set, 20, "the subscriber's subscription")
        config = {"mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}", "topic": "sise/line3",
                           "client_id": "sise-station-1"}, "base_url": "https://station.plant"}
        with station_for(tmp_path, config) as st:
            made = [upload(st, k, serial=f"SN{k:03d}", line="L3", camera="top") for k in range(25)]
            wait_for(lambda: len({m["message_id"] for m in subscriber.got("/result")}) >= 25, 60,
                     "the first 25 messages")
            broker.stop()
            made += [upload(st, k, serial=f"SN{k:03d}", line="L3", camera="top") for k in range(25, 50)]
            review = st.client.post(f"/api/v1/results/{made[3]['result_id']}/review",
                                    json={"verdict": "overrule", "label": "scratch"},
                                    auth=("line3", "line3-password"))
            assert review.status_code == 201
            assert st.client.get("/healthz").status_code == 200  # recording goes on without the broker
            sink = f"mqtt:mqtt://127.0.0.1:{broker.port}/sise/line3"
            metrics = st.client.get("/metrics").text
            backlog = int(metrics.split(f'sise_outbox_backlog{{sink="{sink}"}} ')[1].split()[0])
            assert backlog >= 20, backlog  # waiting, not dropped
            broker.start()
            wait_for(lambda: len({m["message_id"] for m in subscriber.got("/result")}) == 50
                     and subscriber.got("/verdict"), 90, "all 50 result messages and the verdict")
            results = outbox_ids(st.station.store, "result")
            caught_up = (f'sise_outbox_backlog{{sink="{sink}"}} 0', f'sise_sink_up{{sink="{sink}"}} 1')
            wait_for(lambda: all(line in st.client.get("/metrics").text for line in caught_up), 30,
                     "the backlog to empty")
        got = subscriber.got("/result")
        first_arrivals = list(dict.fromkeys(m["message_id"] for m in got))
        assert first_arrivals == results  # each once at least, in order
        by_serial = {m["identity"]["serial"]: m for m in got}
        assert sorted(by_serial) == [f"SN{k:03d}" for k in range(50)]
        sample = by_serial["SN007"]
        assert sample["schema"] == "sise-inspector/result@1" and sample["result_id"] == made[7]["result_id"]
        assert sample["prediction"] == made[7]["prediction"] and sample["status"] == "done"
        assert sample["urls"]["part"] == f"https://station.plant/parts/{made[7]['result_id']}"
        assert sample["identity"] == {"serial": "SN007", "line": "L3", "camera": "top", "product": None,
                                      "tags": []}
        verdict = subscriber.got("/verdict")[0]
        assert (verdict["schema"], verdict["verdict"], verdict["label"], verdict["previous_label"]) == (
            "sise-inspector/verdict@1", "overrule", "scratch", made[3]["prediction"])
        assert verdict["identity"]["serial"] == "SN003"
    finally:
        subscriber.close()
    last = Subscriber(broker.port, "sise/line3/last/#")  # a newcomer gets the retained last result
    try:
        wait_for(lambda: last.got("/last/L3/top"), 20, "the retained last result")
        assert last.got("/last/L3/top")[-1]["identity"]["serial"] == "SN049"
    finally:
        last.close()


@needs_broker
def test_a_wrong_mqtt_password_is_one_clear_error_at_start(tmp_path, broker_factory):
    broker = broker_factory(users={"station": "right-password"})
    (tmp_path / "mqtt-password").write_text("wrong-password\n")
    config = {"mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}", "username": "station",
                       "password_file": str(tmp_path / "mqtt-password")}}
    refused = r"refused the connection: (Not authorized|Bad user name)"
    with pytest.raises(IntegrationError, match=refused), station_for(tmp_path, config):
        pass
    (tmp_path / "mqtt-password").write_text("right-password\n")
    with station_for(tmp_path, config, "second") as st:
        upload(st, 900)
        publisher = st.station.publisher
        wait_for(lambda: publisher.status()[0]["delivered"] == 1, 30, "the message")


def _throwaway_ca(folder) -> dict:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl), valid for a day."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=sise test CA",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "ext.cnf", "-out", "server.crt")
    return {"ca": str(folder / "ca.crt"), "cert": str(folder / "server.crt"),
            "key": str(folder / "server.key")}


@needs_broker
def test_mqtt_over_tls_with_a_throwaway_ca(tmp_path, broker_factory):
    certs = tmp_path / "certs"
    certs.mkdir()
    tls = _throwaway_ca(certs)
    broker = broker_factory(tls=tls)
    subscriber = Subscriber(broker.port, "sise/#", tls_ca=tls["ca"])
    try:
        wait_for(subscriber.subscribed.is_set, 20, "the subscriber's subscription over TLS")
        config = {"mqtt": {"url": f"mqtts://127.0.0.1:{broker.port}", "tls": {"ca_file": tls["ca"]}}}
        with station_for(tmp_path, config) as st:
            sent = upload(st, 901, serial="TLS-1")
            wait_for(lambda: subscriber.got("/result"), 30, "the message over TLS")
        assert subscriber.got("/result")[0]["result_id"] == sent["result_id"]
    finally:
        subscriber.close()
    other = tmp_path / "other"
    other.mkdir()
    wrong = _throwaway_ca(other)  # a CA that did not sign the broker's certificate: nothing goes out
    config = {"mqtt": {"url": f"mqtts://127.0.0.1:{broker.port}", "tls": {"ca_file": wrong["ca"]}}}
    with station_for(tmp_path, config, "wrong-ca") as st:
        upload(st, 902)
        time.sleep(2)
        status = st.station.publisher.status()[0]
        assert status["delivered"] == 0 and "not connected" in (status["error"] or "")


# ----- webhook ------------------------------------------------------------------------------------------
class Hook(http.server.BaseHTTPRequestHandler):
    """Answers 500 to the first ``fail`` requests, then 200; keeps what it was sent."""

    fail = 3
    received: typing.ClassVar[list] = []  # (headers with lower-case names, body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        ok = len(type(self).received) > type(self).fail
        self.send_response(200 if ok else 500)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_webhook_retries_until_it_is_taken_and_signs_every_message(tmp_path):
    Hook.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = b"plant-secret-7"
    (tmp_path / "hook-secret").write_bytes(secret + b"\n")
    config = {"webhook": {"url": f"http://127.0.0.1:{server.server_port}/sise", "secret_file": "hook-secret"}}
    try:
        with station_for(tmp_path, config) as st:
            made = [upload(st, 910 + k, serial=f"W{k}") for k in range(4)]
            api = st.client.post(f"/api/v1/results/{made[0]['result_id']}/review",
                                 json={"verdict": "confirm"}, auth=("line3", "line3-password"))
            assert api.status_code == 201
            expected = outbox_ids(st.station.store, "result") + outbox_ids(st.station.store, "verdict")
            wait_for(lambda: len(Hook.received) >= Hook.fail + len(expected), 60, "the webhook's messages")
    finally:
        server.shutdown()
    delivered = Hook.received[Hook.fail:]
    ids = [int(h["x-sise-message-id"]) for h, _ in delivered]
    assert ids == sorted(expected)  # after the failures, every message once, in order
    for headers, body in Hook.received:
        wanted = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-sise-signature"], wanted)
        assert json.loads(body)["message_id"] == int(headers["x-sise-message-id"])
    kinds = [json.loads(b)["schema"] for _, b in delivered]
    assert kinds == ["sise-inspector/result@1"] * 4 + ["sise-inspector/verdict@1"]
    assert [json.loads(b)["identity"]["serial"] for _, b in delivered[:4]] == ["W0", "W1", "W2", "W3"]


def test_a_missing_secret_file_is_refused_at_start(tmp_path):
    config = {"webhook": {"url": "http://127.0.0.1:9/x", "secret_file": str(tmp_path / "nowhere")}}
    missing = "integrations.webhook.secret_file: .*nowhere cannot be read"
    with pytest.raises(IntegrationError, match=missing), station_for(tmp_path, config):
        pass


# ----- the outbox in the store ------------------------------------------------------------------------
def test_the_outbox_is_written_with_the_record_and_one_process_publishes_a_sink(store_url):
    """A message is written in the transaction of its part or verdict only when the writer has
    integrations; a sink's lease keeps a second publisher out until it lapses; a cursor moves only
    forward and only for its holder."""
    with Store(store_url) as store:
        run = store.start_run(kind="audit", scope="s", settings_hash="h" * 64, model_sha256="m" * 64,
                              config={}, out_dir="/tmp/out")
        for k, on in ((0, False), (1, True)):
            store.outbox = on
            key = ResultKey(f"{k}" * 64, "h" * 64, "top")
            store.add_image(key.image_sha256, 10, f"/p{k}.png")
            claim = store.claim(key, run, f"/p{k}.png")
            store.finish(claim, run, {"status": "done", "prediction": 0, "prediction_name": "ok",
                                      "confidence": 0.9}, scope="s", path=f"/p{k}.png",
                         image_sha256=key.image_sha256)
        store.add_review(claim.result_id, verdict="confirm", label="ok", reviewer="rita")
        rows = store.outbox_after(0)
        assert [(r["kind"], r["payload"]["result_id"]) for r in rows] == [("result", claim.result_id),
                                                                        ("verdict", claim.result_id)]
        assert rows[0]["payload"]["message_id"] == rows[0]["id"]
        assert store.hold_sink("mqtt:x", "a", 30) == 0
        assert store.hold_sink("mqtt:x", "b", 30) is None  # a holds it
        store.advance_sink("mqtt:x", "a", rows[0]["id"])
        with pytest.raises(StoreError, match="another process publishes"):
            store.advance_sink("mqtt:x", "b", rows[1]["id"])
        with pytest.raises(StoreError):
            store.advance_sink("mqtt:x", "a", rows[0]["id"])  # never back, never twice
        assert store.hold_sink("mqtt:x", "a", -1) == rows[0]["id"]  # a's lease lapses at once
        assert store.hold_sink("mqtt:x", "b", 30) == rows[0]["id"]  # b goes on from a's place
        assert store.outbox_backlog("mqtt:x") == 1



# ----- from a red-team pass ----------------------------------------------------------------------------
class Redirect(http.server.BaseHTTPRequestHandler):
    """Answers the first two POSTs with 302 to a page that would take a GET; then 200."""

    posts: typing.ClassVar[list] = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append(self.path)
        self.send_response(200 if len(type(self).posts) > 2 else 302)
        if len(type(self).posts) <= 2:
            self.send_header("Location", "/login")
        self.end_headers()

    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_redirect_is_not_a_delivery(tmp_path):
    Redirect.posts = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with station_for(tmp_path, {"webhook": {"url": f"http://127.0.0.1:{server.server_port}/h"}}) as st:
            upload(st, 960)
            wait_for(lambda: st.station.publisher.status()[0]["delivered"] == 1, 30, "the delivery")
    finally:
        server.shutdown()
    assert Redirect.posts == ["/h", "/h", "/h"]  # two 302s were failures, sent again, to the same URL


class Hang(http.server.BaseHTTPRequestHandler):
    """Holds every POST until the test lets go (``release``), then answers 200."""

    release = threading.Event()

    def do_POST(self):
        type(self).release.wait(60)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@needs_broker
def test_a_hanging_webhook_does_not_hold_up_mqtt(tmp_path, broker_factory):
    broker = broker_factory()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hang)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    subscriber = Subscriber(broker.port, "sise/#")
    try:
        wait_for(subscriber.subscribed.is_set, 20, "the subscriber's subscription")
        config = {"mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}"},
                  "webhook": {"url": f"http://127.0.0.1:{server.server_port}/h", "timeout": 120}}
        Hang.release.clear()
        with station_for(tmp_path, config) as st:
            upload(st, 961)
            upload(st, 962)
            wait_for(lambda: len(subscriber.got("/result")) == 2, 60, "MQTT while the webhook hangs")
            def webhook_delivered():
                sinks = st.station.publisher.status()
                return next(s["delivered"] for s in sinks if s["sink"].startswith("webhook"))

            assert webhook_delivered() == 0  # still held on its first message: MQTT went on regardless
            Hang.release.set()
            wait_for(lambda: webhook_delivered() == 2, 60, "the webhook, let go")
    finally:
        Hang.release.set()
        subscriber.close()
        server.shutdown()


def test_topic_levels_and_secrets_and_users_files_are_read_exactly(tmp_path):
    from inspector.integrations import read_secret
    from inspector.integrations.mqtt import topic_part
    from inspector.integrations.opcua import read_users

    levels = [topic_part(v) for v in ("a/b", "a_b", "a%2Fb", None, "-", "", "L+3#")]
    assert len(set(levels[:5])) == 5 and levels[3] == levels[5] == "-"
    assert not any(ch in level for level in levels for ch in "/+#")
    (tmp_path / "secret").write_bytes(b"\xef\xbb\xbfplant-key\r\n")
    assert read_secret(str(tmp_path / "secret"), "k") == b"plant-key"
    (tmp_path / "big").write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(IntegrationError, match="over 65536 bytes"):
        read_secret(str(tmp_path / "big"), "k")
    users = tmp_path / "users"
    users.write_bytes("\ufeffplc:pa\u2028ss:word\r\n# note\n\nmes:x\n".encode())
    users.chmod(0o600)
    assert read_users(str(users)) == {"plc": "pa\u2028ss:word", "mes": "x"}
    users.write_text("plc:a\nplc:b\n")
    with pytest.raises(IntegrationError, match="line 2 names plc again"):
        read_users(str(users))


def _verdicts_in_process(url: str, result_id: int, reviewer: str, count: int, barrier) -> None:
    store = Store(url)
    store.outbox = True
    barrier.wait()
    for i in range(count):
        store.add_review(result_id, verdict="overrule", label=f"{reviewer}-{i}", reviewer=reviewer)
    store.close()


def test_a_publisher_reading_while_writers_commit_passes_over_no_message(store_url):
    """Three processes append 60 verdicts each (each a message) while this process reads the outbox as
    the publisher does (after its cursor, the cursor then at the highest id read): every message is read,
    none passed over. On PostgreSQL a message whose id was drawn before another's but committed after it
    would be; the writers' advisory lock keeps ids committing in order."""
    import multiprocessing

    with Store(store_url) as store:
        run = store.start_run(kind="audit", scope="s", settings_hash="h" * 64, model_sha256="m" * 64,
                              config={}, out_dir="/tmp/out")
        ids = []
        for k in range(3):
            key = ResultKey(f"{k}" * 64, "h" * 64, "top")
            store.add_image(key.image_sha256, 10, f"/p{k}.png")
            claim = store.claim(key, run, f"/p{k}.png")
            store.finish(claim, run, {"status": "done", "prediction": 0, "prediction_name": "ok"}, scope="s",
                         path=f"/p{k}.png", image_sha256=key.image_sha256)
            ids.append(claim.result_id)
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(3)
        procs = [ctx.Process(target=_verdicts_in_process, args=(store_url, rid, f"r{k}", 60, barrier))
                 for k, rid in enumerate(ids)]
        for p in procs:
            p.start()
        cursor, read = 0, []
        while any(p.is_alive() for p in procs) or store.outbox_after(cursor, 1):
            rows = store.outbox_after(cursor, 7)
            read += [r["id"] for r in rows]
            cursor = rows[-1]["id"] if rows else cursor
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        everything = [r["id"] for r in store.outbox_after(0, 1000)]
    assert len(everything) == 180 and read == everything  # in order, none passed over, none twice
