"""The station's OPC UA server against a real asyncua client, over Basic256Sha256 with signing and
encryption: browse and read the last result of a line and camera, subscribe to it and see the next part
arrive, write the acknowledgement as a PLC would (the queue shows what is not acknowledged), and the
refusals: anonymous, a wrong password, a read-only value written, a users file others can read."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path

import pytest

from inspector.integrations import IntegrationError

from .test_integrations import station_for, upload, wait_for

asyncua = pytest.importorskip("asyncua")
from asyncua import Client, ua


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_certificate(folder: Path) -> tuple[str, str]:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert, key = folder / "client.der", folder / "client.pem"
    asyncio.run(setup_self_signed_certificate(key, cert, "urn:sise-test-plc", "localhost",
                                              [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "test PLC"}))
    return str(cert), str(key)


async def _secure(client: Client, certs) -> None:
    if certs is not None:
        await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{certs[0]},{certs[1]}")


async def plc_client(endpoint: str, certs) -> Client:
    """The line's PLC user over SignAndEncrypt (not connected yet: ``async with`` it)."""
    client = Client(endpoint)
    client.set_user("plc-line3")
    client.set_password("plc-secret-3")
    await _secure(client, certs)
    return client


def path(idx: int, *names: str) -> list[str]:
    return [f"{idx}:{n}" for n in ("SISEInspector", *names)]


@pytest.fixture
def opcua_station(tmp_path):
    users = tmp_path / "opcua-users"
    users.write_text("plc-line3:plc-secret-3\n")
    users.chmod(0o600)
    endpoint = f"opc.tcp://127.0.0.1:{_free_port()}/sise/"
    config = {"opcua": {"endpoint": endpoint, "namespace": "urn:plant:sise", "users_file": str(users)}}
    with station_for(tmp_path, config) as st:
        yield st, endpoint, client_certificate(tmp_path)


def test_a_plc_reads_subscribes_and_acknowledges_results(opcua_station):
    st, endpoint, certs = opcua_station
    first = upload(st, 700, serial="SN-700", line="L3", camera="top", product="gear")
    wait_for(lambda: st.station.publisher.status()[0]["delivered"] == 1, 30, "the result on the server")
    received: list = []

    class Handler:
        def datachange_notification(self, node, value, data):
            received.append(value)

    async def plc():
        async with await plc_client(endpoint, certs) as client:
            idx = await client.get_namespace_index("urn:plant:sise")
            objects = client.nodes.objects
            assert await (await objects.get_child(path(idx, "System", "State"))).read_value() == "Operational"
            cameras = await (await objects.get_child(path(idx, "Lines", "L3"))).get_children()
            assert [(await c.read_browse_name()).Name for c in cameras] == ["top"]
            last = path(idx, "Lines", "L3", "top", "LastResult")
            values = {(await n.read_browse_name()).Name: await n.read_value()
                      for n in await (await objects.get_child(last)).get_children()}
            assert values["Serial"] == "SN-700" and values["Product"] == "gear"
            assert values["ResultId"] == first["result_id"] and values["ClassName"] == first["prediction"]
            assert values["Ok"] is (first["prediction"] == "ok")
            assert values["Confidence"] == pytest.approx(first["confidence"])
            counter = await objects.get_child(path(idx, "Lines", "L3", "top", "ResultCounter"))
            acknowledged = await objects.get_child(path(idx, "Lines", "L3", "top", "ResultAcknowledged"))
            assert await counter.read_value() == 1
            serial = await objects.get_child(last + [f"{idx}:Serial"])
            subscription = await client.create_subscription(50, Handler())
            await subscription.subscribe_data_change(serial)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(upload, st, 701, serial="SN-701", line="L3", camera="top")
            for _ in range(100):
                if "SN-701" in received:
                    break
                await asyncio.sleep(0.1)
            assert "SN-701" in received  # the subscription saw the next part arrive
            assert await counter.read_value() == 2
            with pytest.raises(ua.UaStatusCodeError):  # only the acknowledgement is writable
                await serial.write_value(ua.Variant("forged", ua.VariantType.String))
            await acknowledged.write_value(ua.Variant(1, ua.VariantType.UInt32))

    asyncio.run(plc())
    wait_for(lambda: "1 result(s) of line L3, camera top not acknowledged by the PLC" in _queue_summary(st),
             30, "the station to read the acknowledgement back")

    async def acknowledge_all():
        async with await plc_client(endpoint, certs) as client:
            idx = await client.get_namespace_index("urn:plant:sise")
            node = await client.nodes.objects.get_child(path(idx, "Lines", "L3", "top", "ResultAcknowledged"))
            await node.write_value(ua.Variant(2, ua.VariantType.UInt32))

    asyncio.run(acknowledge_all())
    wait_for(lambda: "not acknowledged by the PLC" not in _queue_summary(st), 30, "every result acknowledged")


def _queue_summary(st) -> str:
    """The queue page's summary line, as a logged-in viewer sees it."""
    from inspector.station import auth

    if not getattr(st, "viewer", None):
        auth.add_user(st.station.store, "vic", "viewer-password-1", "viewer")
        st.viewer = True
    client = st.client
    token = client.get("/login").cookies.get("sise_login") or client.cookies.get("sise_login")
    client.post("/login", data={"username": "vic", "password": "viewer-password-1", "token": token})
    page = client.get("/queue").text
    return re.search(r'<p class="summary">(.*?)</p>', page, re.DOTALL).group(1)


def test_anonymous_and_wrong_passwords_are_refused(opcua_station):
    _, endpoint, certs = opcua_station

    async def attempt(user, password):
        client = Client(endpoint)
        if user is not None:
            client.set_user(user)
            client.set_password(password)
        await _secure(client, certs)
        async with client:
            return await client.nodes.objects.read_browse_name()

    for user, password, refusal in ((None, None, "BadIdentityTokenRejected"),
                                    ("plc-line3", "wrong", "BadUserAccessDenied"),
                                    ("nobody", "plc-secret-3", "BadUserAccessDenied")):
        with pytest.raises(ua.UaStatusCodeError) as caught:
            asyncio.run(attempt(user, password))
        assert type(caught.value).__name__ == refusal, (user, caught.value)
    assert asyncio.run(attempt("plc-line3", "plc-secret-3")).Name == "Objects"


def test_a_users_file_others_can_read_is_refused_at_start(tmp_path):
    users = tmp_path / "opcua-users"
    users.write_text("plc:secret\n")
    users.chmod(0o644)
    config = {"opcua": {"endpoint": f"opc.tcp://127.0.0.1:{_free_port()}/sise/", "users_file": str(users)}}
    with pytest.raises(IntegrationError, match=f"{re.escape(str(users))} may be read by others; chmod 600"), \
            station_for(tmp_path, config):
        pass
    users.chmod(0o600)
    config["opcua"]["users_file"] = str(tmp_path / "none-here")
    with pytest.raises(IntegrationError, match="users_file: .*none-here cannot be read"), \
            station_for(tmp_path, config, "again"):
        pass
    assert not os.path.exists(tmp_path / "again" / "opcua-server.key.pem")
