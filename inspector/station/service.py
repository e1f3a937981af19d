"""The station's engine side: one :class:`Inspector` shared by uploads and the watched folder (one image at
a time, under one lock), the run that uploads are recorded under, and the counters behind ``/metrics``."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from ..common.atomic import write_atomic
from ..common.identity import Identity
from ..common.stop import Stop
from ..engine.inspector import Inspector
from ..engine.runtime.preprocess import image_size
from ..errors import InspectorError
from ..integrations.publisher import start_publisher
from ..jobs.record import Outcome, explain_and_record, start_job
from ..jobs.watch import _candidates, watch
from ..store import STORE_FILE, Store, StoreError, default_url, display_path

log = logging.getLogger("inspector.station")
UPLOAD_DIR = "uploads"
MIN_FREE_BYTES = 16 * 2**20  # less free space than this under the station's folder fails /healthz
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Metrics:
    """What this process did since it started (the store's own figures are read at each scrape)."""

    explained: int = 0
    failed: int = 0
    in_flight: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    seconds_sum: float = 0.0
    seconds_count: int = 0
    started: float = field(default_factory=time.time)  # Unix time: the counters count from here
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, outcome: Outcome, seconds: float) -> None:
        with self.lock:
            if outcome.state == "explained":
                self.explained += 1
                self.seconds_sum += seconds
                self.seconds_count += 1
                for i, bound in enumerate(LATENCY_BUCKETS):
                    if seconds <= bound:
                        self.buckets[i] += 1
            elif outcome.state == "failed":
                self.failed += 1


@dataclass(frozen=True)
class StationSettings:
    config: str
    out_dir: str
    store_url: str | None = None
    watch_dir: str | None = None
    max_upload_bytes: int = 50 * 2**20
    shifts: tuple[str, ...] = ("06:00", "14:00", "22:00")
    # golden images shown beside a part (key r): "product/camera", "product" or "" (any part) -> file
    reference: tuple[tuple[str, str], ...] = ()
    secure_cookies: bool = False  # set behind a TLS reverse proxy: the session cookie is sent over HTTPS only
    poll: float = 1.0
    settle: float = 2.0


class UploadRefused(InspectorError):
    """An upload the station will not store: too many bytes or pixels, or no image at all."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Station:
    """Owns the engine and the store for the web app; :meth:`start` and :meth:`stop` bracket its life."""

    def __init__(self, settings: StationSettings, insp: Inspector | None = None):
        self.settings = settings
        self.out_dir = os.path.abspath(settings.out_dir)
        os.makedirs(os.path.join(self.out_dir, UPLOAD_DIR), exist_ok=True)
        self.insp = insp or Inspector.from_config(settings.config)
        self.config = self.insp.config
        for key, _ in settings.reference:  # refused at start, not on the first part page
            self.reference_picture(key, "preview")
        self.store_url = settings.store_url or default_url(self.out_dir)
        self.store = Store(self.store_url)
        self.job = start_job(
            self.insp,
            self.store,
            kind="station",
            out_dir=self.out_dir,
            source="uploads (POST /api/v1/explain)",
        )
        self.engine_lock = threading.Lock()
        self.metrics = Metrics()
        self._stop = Stop()
        self._threads: list[threading.Thread] = []
        self._heartbeats = None
        self.publisher = None
        self.watch_error: str | None = None
        # the watched folder's output error while its images cannot be recorded (it tries again by itself;
        # an upload's is told to its client)
        self.watch_output_error: str | None = None

    def golden_key(self, product: str | None, camera: str | None) -> str | None:
        """The --reference entry for a part of ``product`` seen by ``camera``: product/camera, else
        product, else the one for any part; None when there is none."""
        given = dict(self.settings.reference)
        for key in (f"{product}/{camera}" if product and camera else None, product, ""):
            if key is not None and key in given:
                return key
        return None

    def reference_picture(self, key: str, size: str) -> bytes:
        """The golden image given for ``key`` (--reference) as a JPEG picture of ``size``."""
        from .files import reference_picture

        name = dict(self.settings.reference)[key]
        try:
            with open(name, "rb") as f:
                data = f.read()
        except OSError as e:
            raise InspectorError(f"--reference {display_path(name)}: cannot be read ({e.strerror})") from e
        return reference_picture(data, f"--reference {display_path(name)}", size,
                                 self.config.preprocess.max_pixels)

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes or [])

    @property
    def class_names(self) -> list[str]:
        """What a part can be labelled: the config's class names, or the class indices as text; for a
        detector also detect.none_label (a part without detections)."""
        names = self.classes or [str(i) for i in range(self.insp.contract.num_classes)]
        return [*names, self.config.detect.none_label] if self.insp.detector else names

    @property
    def good_classes(self) -> list[str]:
        return list(self.config.good_classes)

    def start(self) -> None:
        with self.engine_lock:
            seconds = self.insp.warm_up()
        log.info("warmed up in %.2f s (%s)", seconds, self.insp.sessions.provider)
        self.publisher = start_publisher(self.config.integrations, self.store, good_classes=self.good_classes,
                                         folder=self.out_dir)
        self._heartbeats = self.job.keep_alive()
        self._heartbeats.__enter__()
        if self.settings.watch_dir:
            thread = threading.Thread(target=self._watch, name="station-watch", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Finish the image in progress, then note the runs as ended."""
        self._stop.requested = True
        for thread in self._threads:
            thread.join()
        if self.publisher is not None:
            self.publisher.stop()
        if self._heartbeats is not None:
            self._heartbeats.__exit__(None, None, None)
        with contextlib.suppress(StoreError):
            self.store.end_run(self.job.run_id, "finished", "station stopped")
        self.store.close()

    def _watch(self) -> None:
        try:
            watch(
                self.insp,
                self.settings.watch_dir,
                self.out_dir,
                store_url=self.store_url,
                poll=self.settings.poll,
                settle=self.settings.settle,
                stop=self._stop,
                log=lambda line: log.info("watch: %s", line),
                engine_lock=self.engine_lock,
                observe=self._observed,
                warm_up=False,
                output_state=lambda message: setattr(self, "watch_output_error", message),
                publish=False,  # the station's publisher sends the watched folder's results too
            )
        except Exception as e:  # noqa: BLE001 - shown on /healthz; the uploads go on
            self.watch_error = str(e) if isinstance(e, InspectorError) else f"{type(e).__name__}: {e}"
            log.error("watching %s stopped: %s", display_path(self.settings.watch_dir), self.watch_error)

    def _observed(self, outcome: Outcome, seconds: float) -> None:
        self.metrics.observe(outcome, seconds)
        self.poke()

    def output_problems(self) -> list[str]:
        """Why results may not be recorded now: the output folder unwritable or (nearly) full, claims the
        store has not taken back yet, the watched folder's images failing to be recorded."""
        problems = []
        if not os.access(self.out_dir, os.W_OK | os.X_OK):
            problems.append(f"out: {display_path(self.out_dir)} cannot be written (permissions, read-only?)")
        with contextlib.suppress(OSError):
            st = os.statvfs(self.out_dir)
            free = st.f_bavail * st.f_frsize
            if free < MIN_FREE_BYTES:
                problems.append(f"out: only {free // 1024} KiB free on the disk of "
                                f"{display_path(self.out_dir)}; free space there")
        kept = len(self.job.unreleased)
        if kept:
            problems.append(f"store: {kept} claim(s) not given back yet (the store refused them)")
        if self.watch_output_error:
            problems.append(f"watch: {self.watch_output_error}")
        return problems

    def unacknowledged(self) -> dict[tuple[str, str], int]:
        """Per line and camera, results the PLC has not acknowledged over OPC UA (empty without it)."""
        for sink in (s.sink for s in self.publisher.states) if self.publisher is not None else ():
            if hasattr(sink, "unacknowledged"):
                return sink.unacknowledged()
        return {}

    @property
    def watching(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def waiting_files(self) -> int:
        """Images in the watched folder not yet handled."""
        if not self.settings.watch_dir:
            return 0
        try:
            return len(_candidates(self.settings.watch_dir))
        except OSError:
            return 0

    def explain_upload(self, data: bytes, filename: str | None, identity: Identity | None = None) -> Outcome:
        """Keep an uploaded image as ``<out>/uploads/<SHA-256>/<client's file name>`` (equal names never
        collide), then explain and record it like any other input, as the part ``identity`` (None: what
        the config's identity rule reads from the file name)."""
        if len(data) > self.settings.max_upload_bytes:
            raise UploadRefused(
                f"upload of {len(data)} bytes is over the limit of {self.settings.max_upload_bytes} bytes",
                413,
            )
        if not data:
            raise UploadRefused("the upload is empty", 422)
        size = image_size(data)
        if size is None:  # other formats (JPEG 2000, GIF, ...) could hide a huge image behind a few bytes
            raise UploadRefused(
                "not a PNG, JPEG, BMP, TIFF, WebP or PNM image with a readable header (the "
                "formats whose size is checked before decoding)",
                415,
            )
        max_pixels = self.config.preprocess.max_pixels
        if size is not None and size[0] * size[1] > max_pixels:
            raise UploadRefused(
                f"{size[0]}x{size[1]} pixels is over preprocess.max_pixels ({max_pixels})", 413
            )
        folder = os.path.join(self.out_dir, UPLOAD_DIR, hashlib.sha256(data).hexdigest())
        path = os.path.join(folder, upload_name(filename))
        try:  # written even when present: what is explained is exactly what was sent
            os.makedirs(folder, exist_ok=True)
            write_atomic(path, data)
        except OSError as e:
            raise InspectorError(
                f"cannot keep the upload ({e.strerror}); free space in {display_path(self.out_dir)}"
            ) from e
        return self.explain_file(path, identity)

    def explain_file(self, path: str, identity: Identity | None = None) -> Outcome:
        """Explain and record one image file (an upload, or a failed part explained again), counted in
        /metrics; the engine explains one image at a time."""
        with self.metrics.lock:
            self.metrics.in_flight += 1
        start = time.perf_counter()
        try:
            with self.engine_lock:
                outcome = explain_and_record(self.job, path, identity)
        finally:
            with self.metrics.lock:
                self.metrics.in_flight -= 1
        self.metrics.observe(outcome, time.perf_counter() - start)
        self.poke()
        return outcome

    def poke(self) -> None:
        """A result or verdict was recorded: its message goes out now."""
        if self.publisher is not None:
            self.publisher.poke()


def parse_references(values: list[str]) -> tuple[tuple[str, str], ...]:
    """``--reference [PRODUCT[/CAMERA]=]IMAGE`` options as (key, image path) pairs; one per key."""
    found: dict[str, str] = {}
    for value in values:
        key, sep, path = value.partition("=")
        if not sep or key.startswith(("/", ".", "~")) or key.count("/") > 1:  # a path with "=" in it
            key, path = "", value
        key = key.strip()
        if not path:
            raise InspectorError(f"--reference {value}: name an image file ([PRODUCT[/CAMERA]=]IMAGE)")
        if key in found:
            raise InspectorError(f"--reference: {key or 'the image for any part'} is given twice")
        found[key] = path
    return tuple(found.items())


def upload_name(filename: str | None) -> str:
    """The client's file name as the part's name (the queue, the API, the export show it), made safe to
    be one file name: path separators and control characters replaced, at most 200 bytes. Uploads live in
    a folder per content hash, so equal names never collide."""
    name = "".join("_" if ch in "/\\" or ord(ch) < 32 else ch for ch in (filename or ""))
    while len(name.encode("utf-8", "surrogateescape")) > 200:
        stem, ext = os.path.splitext(name)
        name = stem[:-1] + ext if stem else name[:-1]
    return name if name.strip(". ") else "upload"


def store_for_users(out_dir: str | None, store_url: str | None, *, create: bool = False) -> Store:
    """The station's store for `inspector station add-user/list-users/...`. Only ``create`` (adding a user
    before the first start) may make a new one: a mistyped --out must not answer from an empty store."""
    if not store_url and not out_dir:
        raise InspectorError("give --store URL or --out DIR (the station folder)")
    if not store_url:
        if not create and not os.path.isfile(os.path.join(out_dir, STORE_FILE)):
            raise InspectorError(
                f"--out {display_path(out_dir)}: no station store here ({STORE_FILE} is "
                "missing); give the folder the station was started with (--out), or --store"
            )
        os.makedirs(out_dir, exist_ok=True)
    return Store(store_url or default_url(out_dir))
