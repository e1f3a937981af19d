"""What connecting the line costs: the station's record path with the integrations off, with MQTT, with
the webhook, with OPC UA and with all three (same run, images interleaved across the five stations so
that the machine's noise falls on all alike; one part each first, untimed), and the delay from an image
landing to its MQTT message and to the OPC UA value change a subscribed client sees (bundled example,
CPU).

Needs /usr/sbin/mosquitto (started here on a free port, anonymous, this machine only), paho-mqtt and
asyncua. The OPC UA servers here offer NoSecurity with anonymous access (the client is this script).

    python benchmarks/integrations.py [--parts 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import cv2
import yaml
from paho.mqtt import client as mqtt

from inspector.common.identity import make_identity
from inspector.common.stop import Stop
from inspector.demo import example_dir
from inspector.engine.inspector import Inspector
from inspector.jobs.watch import watch
from inspector.station.service import Station, StationSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def broker(folder: str):
    port = free_port()
    conf = os.path.join(folder, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        time.sleep(0.1)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Arrivals:
    """A subscriber noting when each message arrived, by serial."""

    def __init__(self, port: int):
        self.when: dict[str, float] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        time.sleep(0.5)

    def _on_message(self, client, userdata, msg) -> None:
        body = json.loads(msg.payload)
        if msg.topic.endswith("/result"):
            self.when.setdefault(body["identity"]["serial"] or body["source"], time.time())

    def wait(self, key: str, timeout: float = 30.0) -> float:
        deadline = time.time() + timeout
        while key not in self.when:
            if time.time() > deadline:
                raise SystemExit(f"no MQTT message for {key} within {timeout} s")
            time.sleep(0.002)
        return self.when[key]


class OpcChanges:
    """An asyncua client, in its own thread, subscribed to the last serial of line '-', camera '-': when
    each serial appeared."""

    def __init__(self, endpoint: str):
        self.endpoint, self.when = endpoint, {}
        self.loop = asyncio.new_event_loop()
        self.done: asyncio.Event | None = None
        threading.Thread(target=self.loop.run_until_complete, args=(self._run(),), daemon=True).start()

    async def _run(self):
        from asyncua import Client

        self.done = asyncio.Event()
        when = self.when

        class Handler:
            def datachange_notification(self, node, value, data):
                if value:
                    when.setdefault(value, time.time())

        async with Client(self.endpoint) as client:
            idx = await client.get_namespace_index("urn:sise-inspector")
            names = [f"{idx}:{n}" for n in ("SISEInspector", "Lines", "-", "-", "LastResult", "Serial")]
            node = await client.nodes.objects.get_child(names)
            subscription = await client.create_subscription(20, Handler())
            await subscription.subscribe_data_change(node)
            await self.done.wait()

    def wait(self, serial: str, timeout: float = 30.0) -> float:
        deadline = time.time() + timeout
        while serial not in self.when:
            if time.time() > deadline:
                raise SystemExit(f"no OPC UA change for {serial} within {timeout} s")
            time.sleep(0.002)
        return self.when[serial]

    def close(self):
        if self.done is not None:
            self.loop.call_soon_threadsafe(self.done.set)


class Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def image(k: int) -> bytes:
    base = cv2.imread(os.path.join(example_dir(), "samples", "scratch.png"), cv2.IMREAD_COLOR)
    row, col = divmod(k, base.shape[1])
    base[row, col, 1] ^= 0x3C
    return cv2.imencode(".png", base)[1].tobytes()


def config(folder: str, name: str, integrations: dict) -> str:
    with open(os.path.join(example_dir(), "config.yaml")) as f:
        raw = yaml.safe_load(f)
    raw["model"] = os.path.join(example_dir(), raw["model"])
    raw["integrations"] = integrations
    path = os.path.join(folder, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=40)
    args = parser.parse_args()
    if not os.path.exists("/usr/sbin/mosquitto"):
        raise SystemExit("needs /usr/sbin/mosquitto (apt-get install mosquitto)")
    with tempfile.TemporaryDirectory() as tmp, broker(tmp) as port:
        hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
        threading.Thread(target=hook.serve_forever, daemon=True).start()
        mq = {"url": f"mqtt://127.0.0.1:{port}", "topic": "bench"}
        web = {"url": f"http://127.0.0.1:{hook.server_port}/sise"}
        opc = {"security": "none", "anonymous": True}
        opc_endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sise/"
        settings = {
            "off": {},
            "mqtt": {"mqtt": mq},
            "webhook": {"webhook": web},
            "opcua": {"opcua": {**opc, "endpoint": opc_endpoint}},
            "all": {"mqtt": {**mq, "topic": "bench2"}, "webhook": web,
                    "opcua": {**opc, "endpoint": f"opc.tcp://127.0.0.1:{free_port()}/sise/"}},
        }
        arrivals = Arrivals(port)
        stations = {}
        for name, integrations in settings.items():
            insp = Inspector.from_config(config(tmp, name, integrations))
            station = Station(
                StationSettings(config=config(tmp, name, integrations), out_dir=os.path.join(tmp, name)),
                insp=insp,
            )
            station.start()
            stations[name] = station
        times = {name: [] for name in settings}
        delays, opc_delays = [], []
        for name, station in stations.items():  # one part each first: lazy set-up is not measured
            station.explain_upload(image(9999), "warm.png", make_identity(serial=f"{name}-warm"))
        while stations["opcua"].publisher.status()[0]["delivered"] < 1:  # the line's node exists now
            time.sleep(0.01)
        changes = OpcChanges(opc_endpoint)
        changes.wait("opcua-warm")
        try:
            for k in range(args.parts):
                data = image(k)
                for name, station in stations.items():
                    start = time.time()
                    station.explain_upload(data, f"p{k}.png", make_identity(serial=f"{name}-{k}"))
                    done = time.time()
                    times[name].append(done - start)
                    if name == "mqtt":
                        delays.append(arrivals.wait(f"mqtt-{k}") - start)
                    if name == "opcua":
                        opc_delays.append(changes.wait(f"opcua-{k}") - start)
            print(f"{args.parts} parts, each recorded by five stations in turn (upload path, in process)")
            off = statistics.median(times["off"])
            for name, values in times.items():
                median = statistics.median(values)
                print(f"  {name:<8} {median * 1000:7.1f} ms per part (median)   {median / off:5.3f}x off")
            delays.sort()
            print(
                "  upload to its MQTT message at a subscriber: median "
                f"{statistics.median(delays) * 1000:.0f} ms, "
                f"p95 {delays[int(0.95 * (len(delays) - 1))] * 1000:.0f} ms (includes explaining it)"
            )
            opc_delays.sort()
            print(
                "  upload to the OPC UA value change at a subscribed client: median "
                f"{statistics.median(opc_delays) * 1000:.0f} ms, "
                f"p95 {opc_delays[int(0.95 * (len(opc_delays) - 1))] * 1000:.0f} ms (includes explaining it)"
            )
        finally:
            changes.close()
            for station in stations.values():
                station.stop()
        # the watched folder: a file renamed in -> its MQTT message (poll 0.1 s, settle 0.3 s)
        inbox, out = os.path.join(tmp, "in"), os.path.join(tmp, "watch")
        os.makedirs(inbox)
        insp = Inspector.from_config(config(tmp, "watch", {"mqtt": {**mq, "topic": "bench3"}}))
        stop = Stop()
        thread = threading.Thread(
            target=watch,
            args=(insp, inbox, out),
            daemon=True,
            kwargs={"poll": 0.1, "settle": 0.3, "stop": stop, "log": lambda _line: None},
        )
        thread.start()
        landed = []
        for k in range(min(args.parts, 10)):
            staged = os.path.join(tmp, f"w{k}.png")
            with open(staged, "wb") as f:
                f.write(image(1000 + k))
            start = time.time()
            shutil.move(staged, os.path.join(inbox, f"w{k}.png"))
            landed.append(arrivals.wait(os.path.join(inbox, f"w{k}.png")) - start)
        stop.requested = True
        thread.join(30)
        landed.sort()
        print(
            "  watched folder, file renamed in to its MQTT message: median "
            f"{statistics.median(landed) * 1000:.0f} "
            f"ms over {len(landed)} files (settle 0.3 s and poll 0.1 s included)"
        )
        arrivals.client.loop_stop()
        hook.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
