"""Publishing the outbox (:mod:`inspector.store.outbox`) to the configured sinks, in a background thread of
``station`` and ``watch``: per sink, the messages after its cursor in id order; the cursor moves only after
the sink confirmed a message (an MQTT PUBACK, a 2xx answer), so a sink that is down, slow or restarted
loses nothing and gets the messages in order, at least once (``message_id`` lets consumers drop repeats).
Each sink has its own thread: a failing or slow one is tried again with back-off (1 s doubling to 30 s)
and does not hold up the others."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from ..config import IntegrationsConfig
from ..store import Store

log = logging.getLogger("inspector.integrations")
LEASE_SECONDS = 30.0
PRIME = 1000  # newest messages a server of this process looks at when it starts
BATCH = 100
MAX_BACKOFF = 30.0


class Sink:
    """Where messages go. ``name``: its cursor's key in the store (it changes with the destination).
    A sink that is not ``shared`` (a server of this process) keeps its cursor in memory and starts at
    the outbox's end, after :meth:`prime` with the newest result messages."""

    name: str
    shared = True

    def prime(self, messages: list[dict]) -> None:
        """Before the first message: the newest result messages already in the outbox."""

    def start(self) -> None:
        """Connect; raise IntegrationError for what will not heal by itself (a refused password)."""

    def send(self, kind: str, message: dict) -> None:
        """Deliver one message; return only once the other side confirmed it, raise otherwise."""
        raise NotImplementedError

    def stop(self) -> None:
        """Let go of connections."""


@dataclass
class _State:
    sink: Sink
    failures: int = 0
    next_try: float = 0.0
    error: str | None = None
    delivered: int = 0
    held: bool = False
    cursor: int = 0  # a sink that is not shared: the last message it was given


class Publisher:
    """Sends the store's outbox to ``sinks``; :meth:`start` and :meth:`stop` bracket its thread."""

    def __init__(self, store: Store, sinks: list[Sink], base_url: str | None = None, *, poll: float = 0.5):
        self.store = store
        self.states = [_State(s) for s in sinks]
        self.base_url = base_url.rstrip("/") if base_url else None
        self.poll = poll
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._stop = threading.Event()
        self._wakes = [threading.Event() for _ in self.states]
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for state in self.states:
            state.sink.start()
            if not state.sink.shared:
                state.cursor = self.store.outbox_end()
                recent = self.store.outbox_after(max(0, state.cursor - PRIME), PRIME)
                state.sink.prime([self._absolute(r["payload"]) for r in recent if r["kind"] == "result"])
        for state, wake in zip(self.states, self._wakes):
            thread = threading.Thread(target=self._run, args=(state, wake), daemon=True,
                                      name=f"sise-publisher-{state.sink.name.split(':')[0]}")
            thread.start()
            self._threads.append(thread)

    def poke(self) -> None:
        """Something was recorded: look at the outbox now rather than at the next poll."""
        for wake in self._wakes:
            wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.poke()
        for thread in self._threads:
            thread.join(timeout)
        for state in self.states:
            state.sink.stop()

    def status(self) -> list[dict]:
        """Per sink: its name, messages delivered by this process, the last error (None when fine)."""
        return [{"sink": s.sink.name, "delivered": s.delivered, "error": s.error, "held": s.held}
                for s in self.states]

    def _run(self, state: _State, wake: threading.Event) -> None:
        while not self._stop.is_set():
            wait = state.next_try - time.monotonic()
            if wait > 0:  # backing off after a failure
                self._stop.wait(wait)
                continue
            if not self._publish(state):
                wake.wait(self.poll)
                wake.clear()

    def _publish(self, state: _State) -> bool:
        """Send what the sink has not had yet; True when something was sent."""
        sink = state.sink
        try:
            if sink.shared:
                cursor = self.store.hold_sink(sink.name, self.holder, LEASE_SECONDS)
                state.held = cursor is not None
                if cursor is None:  # another process on this store publishes to it
                    state.next_try = time.monotonic() + LEASE_SECONDS / 3
                    return False
            else:
                cursor = state.cursor
            rows = self.store.outbox_after(cursor, BATCH)
            for row in rows:
                if self._stop.is_set():
                    break
                sink.send(row["kind"], self._absolute(row["payload"]))
                if sink.shared:
                    self.store.advance_sink(sink.name, self.holder, row["id"])
                state.cursor = row["id"]
                state.delivered += 1
        except Exception as e:  # noqa: BLE001 - any failure: try again later, the cursor did not move
            state.failures += 1
            delay = min(MAX_BACKOFF, 2.0 ** (state.failures - 1))
            state.next_try = time.monotonic() + delay
            message = str(e) or type(e).__name__
            if message != state.error:
                log.warning("%s: %s; trying again (every %.0f s at most)", sink.name, message, MAX_BACKOFF)
            state.error = message
            return False
        if state.error is not None:
            log.info("%s: delivering again", sink.name)
        state.failures, state.error = 0, None
        return bool(rows)

    def _absolute(self, payload: dict) -> dict:
        if not self.base_url:
            return payload
        return {**payload, "urls": {k: self.base_url + v for k, v in payload.get("urls", {}).items()}}


def start_publisher(config: IntegrationsConfig, store: Store, *, good_classes=(),
                    folder: str = ".") -> Publisher | None:
    """The publisher for the configured sinks, started (None when there are none). ``good_classes``:
    what OPC UA's Ok means; ``folder``: where an OPC UA server's generated certificate is kept.

    Raises:
        IntegrationError: a sink cannot work as configured (a secret file missing, a password refused).
    """
    sinks: list[Sink] = []
    if config.mqtt is not None:
        from .mqtt import MqttSink

        sinks.append(MqttSink(config.mqtt))
    if config.webhook is not None:
        from .webhook import WebhookSink

        sinks.append(WebhookSink(config.webhook))
    if config.opcua is not None:
        from .opcua import OpcUaSink

        sinks.append(OpcUaSink(config.opcua, good_classes, folder))
    if not sinks:
        return None
    publisher = Publisher(store, sinks, config.base_url)
    try:
        publisher.start()
    except BaseException:
        publisher.stop()
        raise
    return publisher

