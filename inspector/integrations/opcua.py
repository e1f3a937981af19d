"""An OPC UA server (asyncua) inside ``station`` and ``watch``: per line and camera the last result, and the
system's state, laid out after the result management of OPC 40100-1 (machine vision; a documented subset,
not the companion specification's types), with a handshake a PLC can use. The server runs in its own
thread with its own event loop; the publisher hands it each result message.

Address space (namespace ``integrations.opcua.namespace``)::

    Objects/SISEInspector
      System/            State ("Operational" | "Error: ..."), Version, ResultsTotal (since start)
      Lines/<line>/<camera>/      ("-" for a part without a line or camera)
        LastResult/      ResultId, PartId, Serial, Product, Ok, ClassName, Confidence, RegionCount,
                         EvidenceShare, Flagged, OverlayUrl, PartUrl, Time, Status
        ResultCounter    UInt32, +1 with each result of this line and camera
        ResultAcknowledged  UInt32, written by the PLC: the ResultCounter value it has handled

Values change as results land, so clients subscribe to them. Only ResultAcknowledged is writable.
Anonymous access is off unless ``anonymous: true``; users come from ``users_file`` (``name:password``
lines, a file no one else may read). ``security`` offers NoSecurity (``none``), Basic256Sha256 signing
(``sign``) or signing and encryption (``sign_and_encrypt``, the default), with the given certificate or
one generated beside the config the first time.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import stat
import threading
from datetime import datetime, timezone
from urllib.parse import urlsplit

from ..common.version import __version__
from ..config import OpcUaConfig
from . import IntegrationError
from .publisher import Sink

log = logging.getLogger("inspector.integrations")
START_WAIT = 30.0
LAST_RESULT = (  # name, OPC UA type name, value before the first result
    ("ResultId", "Int64", 0), ("PartId", "Int64", 0), ("Serial", "String", ""), ("Product", "String", ""),
    ("Ok", "Boolean", False), ("ClassName", "String", ""), ("Confidence", "Double", 0.0),
    ("RegionCount", "Int32", 0), ("EvidenceShare", "Double", 0.0), ("Flagged", "Boolean", False),
    ("OverlayUrl", "String", ""), ("PartUrl", "String", ""), ("Status", "String", ""),
    ("Time", "DateTime", datetime(1970, 1, 1, tzinfo=timezone.utc)),
)


def read_users(path: str) -> dict[str, str]:
    """``name:password`` lines of a file that only its owner may read; IntegrationError otherwise."""
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8-sig") as f:
            lines = [line.removesuffix("\r") for line in f.read().split("\n")]
    except (OSError, UnicodeDecodeError) as e:
        raise IntegrationError(f"integrations.opcua.users_file: {path} cannot be read ({e})") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IntegrationError(f"integrations.opcua.users_file: {path} may be read by others; "
                               f"chmod 600 {path}")
    users = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name.strip() or not password:
            raise IntegrationError(f"integrations.opcua.users_file: {path} line {number} is not "
                                   "name:password")
        if name.strip() in users:
            raise IntegrationError(f"integrations.opcua.users_file: {path} line {number} names "
                                   f"{name.strip()} again")
        users[name.strip()] = password
    if not users:
        raise IntegrationError(f"integrations.opcua.users_file: {path} names no user")
    return users


class OpcUaSink(Sink):
    """The server as a publisher's sink: results update the address space; it keeps no cursor in the
    store (each server shows what arrives while it runs; :meth:`prime` fills the last results)."""

    shared = False

    def __init__(self, config: OpcUaConfig, good_classes=(), certificate_dir: str = "."):
        try:
            import asyncua  # noqa: F401 - checked here, used in the server's thread
        except ImportError as e:
            raise IntegrationError("integrations.opcua needs asyncua: pip install -e '.[line]' in the "
                                   "checkout, or pip install asyncua") from e
        self.config = config
        self.good = set(good_classes)
        self.certificate_dir = certificate_dir
        self.name = f"opcua:{config.endpoint}"
        self.users = read_users(config.users_file) if config.users_file else {}
        if not config.anonymous and not self.users:
            raise IntegrationError("integrations.opcua: anonymous access is off and no users_file is given; "
                                   "give users_file (name:password lines) or anonymous: true")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._nodes: dict[tuple[str, str], dict] = {}  # (line, camera) -> its nodes
        self._line_nodes: dict = {}  # line -> its object
        self._tasks: list[asyncio.Task] = []
        self.counters: dict[tuple[str, str], dict[str, int]] = {}  # read by the station's pages

    # ----- life ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sise-opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_WAIT):
            raise IntegrationError(f"integrations.opcua: the server did not start within {START_WAIT:.0f} s")
        if self._failure is not None:
            raise IntegrationError(f"integrations.opcua: {self.config.endpoint}: {self._failure}") \
                from self._failure

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(15)

    def send(self, kind: str, message: dict) -> None:
        if kind != "result":
            return  # the address space shows results; verdicts reach the line over MQTT and the webhook
        future = asyncio.run_coroutine_threadsafe(self._show(message, count=True), self._loop)
        future.result(timeout=15)

    def prime(self, messages: list[dict]) -> None:
        """Show the newest of these result messages per line and camera, without counting them."""
        newest: dict[tuple[str, str], dict] = {}
        for message in messages:
            newest[self._where(message)] = message
        for message in newest.values():
            asyncio.run_coroutine_threadsafe(self._show(message, count=False), self._loop).result(timeout=15)

    def unacknowledged(self) -> dict[tuple[str, str], int]:
        """Per line and camera: results the PLC has not acknowledged (ResultCounter - ResultAcknowledged)."""
        return {where: c["counter"] - c["acknowledged"] for where, c in self.counters.items()
                if c["counter"] > c["acknowledged"]}

    # ----- the server's thread ------------------------------------------------------------------------
    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # noqa: BLE001 - reported to start(), or logged once running
            if not self._ready.is_set():
                self._failure = e
                self._ready.set()
            else:
                log.error("%s: the OPC UA server stopped: %s", self.name, e)
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        from asyncua import Server, ua
        from asyncua.crypto.permission_rules import User, UserRole

        users, anonymous = self.users, self.config.anonymous

        class Users:
            def get_user(self, iserver, username=None, password=None, certificate=None):
                if username is None:
                    return User(role=UserRole.User) if anonymous else None
                known = users.get(username)
                if known is not None and password is not None and hmac.compare_digest(
                        known.encode(), password.encode() if isinstance(password, str) else bytes(password)):
                    return User(role=UserRole.User, name=username)
                return None

        server = Server(user_manager=Users())
        await server.init()
        server.set_endpoint(self.config.endpoint)
        server.set_server_name("SISE Inspector")
        await server.set_application_uri(self.config.namespace)
        policies = {"none": [ua.SecurityPolicyType.NoSecurity],
                    "sign": [ua.SecurityPolicyType.Basic256Sha256_Sign],
                    "sign_and_encrypt": [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]}
        server.set_security_policy(policies[self.config.security])
        tokens = [ua.UserNameIdentityToken] + ([ua.AnonymousIdentityToken] if self.config.anonymous else [])
        server.set_identity_tokens(tokens)
        if self.config.security != "none":
            await self._load_certificate(server)
        idx = await server.register_namespace(self.config.namespace)
        root = await server.nodes.objects.add_object(idx, "SISEInspector")
        system = await root.add_object(idx, "System")
        self._state = await system.add_variable(idx, "State", "Operational", ua.VariantType.String)
        await system.add_variable(idx, "Version", __version__, ua.VariantType.String)
        self._total = await system.add_variable(idx, "ResultsTotal", 0, ua.VariantType.UInt32)
        self._lines = await root.add_object(idx, "Lines")
        self._idx, self._ua, self._server = idx, ua, server
        self._stopping = asyncio.Event()
        self._results_total = 0
        async with server:
            self._ready.set()
            await self._stopping.wait()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _load_certificate(self, server) -> None:
        from pathlib import Path

        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from cryptography.x509.oid import ExtendedKeyUsageOID

        cert, key = self.config.certificate, self.config.private_key
        if cert is None or key is None:  # generated once, then kept beside the config
            folder = self.certificate_dir
            os.makedirs(folder, exist_ok=True)
            cert, key = os.path.join(folder, "opcua-server.der"), os.path.join(folder, "opcua-server.key.pem")
            host = socket.gethostname() or urlsplit(self.config.endpoint).hostname or "localhost"
            await setup_self_signed_certificate(Path(key), Path(cert), self.config.namespace, host,
                                                [ExtendedKeyUsageOID.SERVER_AUTH],
                                                {"commonName": "SISE Inspector"})
            os.chmod(key, 0o600)
        await server.load_certificate(cert)
        await server.load_private_key(key)

    def _where(self, message: dict) -> tuple[str, str]:
        who = message.get("identity") or {}
        return (who.get("line") or "-", who.get("camera") or "-")

    async def _place(self, where: tuple[str, str]) -> dict:
        if where not in self._nodes:
            ua, idx = self._ua, self._idx
            if where[0] not in self._line_nodes:
                self._line_nodes[where[0]] = await self._lines.add_object(idx, where[0])
            camera = await self._line_nodes[where[0]].add_object(idx, where[1])
            last = await camera.add_object(idx, "LastResult")
            values = {}
            for name, kind, start in LAST_RESULT:
                values[name] = await last.add_variable(idx, name, start, getattr(ua.VariantType, kind))
            counter = await camera.add_variable(idx, "ResultCounter", 0, ua.VariantType.UInt32)
            acknowledged = await camera.add_variable(idx, "ResultAcknowledged", 0, ua.VariantType.UInt32)
            await acknowledged.set_writable()
            self.counters[where] = {"counter": 0, "acknowledged": 0}
            self._nodes[where] = {"values": values, "counter": counter, "acknowledged": acknowledged}
            self._watch_ack(where)
        return self._nodes[where]

    def _watch_ack(self, where: tuple[str, str]) -> None:
        """The PLC's acknowledgement, read back each time a result is shown and on a timer."""
        async def poll():
            node = self._nodes[where]["acknowledged"]
            while not self._stopping.is_set():
                self.counters[where]["acknowledged"] = int(await node.read_value())
                await asyncio.sleep(0.2)

        self._tasks.append(asyncio.ensure_future(poll()))

    async def _show(self, message: dict, *, count: bool) -> None:
        ua = self._ua
        where = self._where(message)
        place = await self._place(where)
        regions = message.get("regions") or []
        shares = [r.get("evidence_share") or 0.0 for r in regions]
        urls = message.get("urls") or {}
        time = datetime.fromisoformat(message["time"]) if message.get("time") else datetime.now(timezone.utc)
        values = {
            "ResultId": message["result_id"], "PartId": message.get("part_id") or 0,
            "Serial": (message.get("identity") or {}).get("serial") or "",
            "Product": (message.get("identity") or {}).get("product") or "",
            "Ok": message["status"] == "done" and message.get("prediction") in self.good,
            "ClassName": message.get("prediction") or "",
            "Confidence": float(message.get("confidence") or 0.0),
            "RegionCount": int(message.get("region_count") or 0),
            "EvidenceShare": float(max(shares, default=0.0)),
            "Flagged": bool(message.get("flagged")), "OverlayUrl": urls.get("overlay", ""),
            "PartUrl": urls.get("part", ""), "Status": message["status"], "Time": time,
        }
        for name, kind, _ in LAST_RESULT:
            await place["values"][name].write_value(ua.Variant(values[name], getattr(ua.VariantType, kind)))
        if count:
            self.counters[where]["counter"] += 1
            counted = ua.Variant(self.counters[where]["counter"], ua.VariantType.UInt32)
            await place["counter"].write_value(counted)
            self._results_total += 1
            await self._total.write_value(ua.Variant(self._results_total, ua.VariantType.UInt32))
