"""An MQTT sink (paho-mqtt 2, MQTT 3.1.1): each message published with QoS 1 (or 2) to
``<topic>/result`` or ``<topic>/verdict``, and a part's result also retained at
``<topic>/last/<line>/<camera>``; a message counts as delivered once the broker acknowledged it."""

from __future__ import annotations

import json
import logging
import ssl
import threading
from urllib.parse import quote, urlsplit

from ..config import MqttConfig
from . import IntegrationError, read_secret
from .publisher import Sink

log = logging.getLogger("inspector.integrations")
CONNECT_WAIT = 5.0  # seconds to wait for the broker's answer at start
ACK_WAIT = 10.0  # seconds to wait for a message's acknowledgement
REFUSED = {"Bad user name or password", "Not authorized", "Client identifier not valid",
           "Unsupported protocol version"}


def topic_part(value: str | None) -> str:
    """A line's or camera's name as one topic level: percent-encoded (``/``, ``+``, ``#``, ``%`` and
    everything but letters, digits and ``_.~``), so two names never share a level; ``-`` for none."""
    if not value:
        return "-"
    return quote(value, safe="").replace("-", "%2D")


class MqttSink(Sink):
    def __init__(self, config: MqttConfig):
        try:
            from paho.mqtt import client as mqtt
        except ImportError as e:
            raise IntegrationError("integrations.mqtt needs paho-mqtt: pip install -e '.[line]' in the "
                                   "checkout, or pip install 'paho-mqtt>=2'") from e
        self.config = config
        url = urlsplit(config.url)
        self.host, self.port = url.hostname, url.port or (8883 if url.scheme == "mqtts" else 1883)
        self.name = f"mqtt:{config.url}/{config.topic}"
        self._connected = threading.Event()
        self._answered = threading.Event()
        self._refusal: str | None = None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id or "",
                             protocol=mqtt.MQTTv311, clean_session=True)
        if config.username is not None:
            password = read_secret(config.password_file, "integrations.mqtt.password_file").decode()
            client.username_pw_set(config.username, password)
        if config.tls is not None:
            try:
                client.tls_set(ca_certs=config.tls.ca_file, certfile=config.tls.cert_file,
                               keyfile=config.tls.key_file, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError) as e:
                raise IntegrationError(f"integrations.mqtt.tls: {e}") from e
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self.client = client

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
            self._connected.clear()
        else:
            self._refusal = None
            self._connected.set()
        self._answered.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()

    def start(self) -> None:
        """Connect in the background; refused credentials are an error now, a broker that does not
        answer is not (messages wait in the outbox, and paho connects again by itself)."""
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self._answered.wait(CONNECT_WAIT)
        if self._refusal in REFUSED:
            self.stop()
            raise IntegrationError(f"integrations.mqtt: {self.config.url} refused the connection: "
                                   f"{self._refusal} (check username and password_file)")
        if not self._connected.is_set():
            log.warning("%s: no answer from the broker yet; results wait in the outbox and go out once "
                        "it answers", self.name)

    def send(self, kind: str, message: dict) -> None:
        if not self._connected.is_set():
            reason = f": {self._refusal}" if self._refusal else ""
            raise IntegrationError(f"not connected to {self.host}:{self.port}{reason}")
        body = json.dumps(message, sort_keys=True)
        targets = [(f"{self.config.topic}/{kind}", False)]
        if kind == "result":
            who = message.get("identity") or {}
            last = f"{self.config.topic}/last/{topic_part(who.get('line'))}/{topic_part(who.get('camera'))}"
            targets.append((last, True))
        qos = self.config.qos
        sent = [self.client.publish(topic, body, qos=qos, retain=retain) for topic, retain in targets]
        for info in sent:
            try:
                info.wait_for_publish(ACK_WAIT)
            except (RuntimeError, ValueError) as e:  # not queued: the connection went away
                raise IntegrationError(f"not delivered to {self.host}:{self.port} ({e})") from e
            if not info.is_published():
                raise IntegrationError(f"the broker at {self.host}:{self.port} did not acknowledge within "
                                       f"{ACK_WAIT:.0f} s")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
