"""`inspector audit --engine ray`: the audit's per-image work on a pool of Ray Data actors.

    driver: list the inputs (shard), register the run and its plan in the store (as `inspector audit`)
      -> ray.data over the inputs, one block per batch of images
      -> map_batches(AuditWorker): one Inspector per actor (the model loads once per worker), each actor its
         own run in the store; every batch goes through record.explain_and_record_many, so the store's
         claims decide who explains an image, and a result exists once per content and settings
      -> the driver counts outcomes as they stream back, then ends the runs and writes the views

A worker process that dies is restarted by Ray and its batch is run again: the images it had finished are
found done in the store (not explained twice); those it held are taken over at once on the same machine
(its process is gone), or after the store's heartbeat limit on another one. Resume, retry and exit codes are
those of the single-process audit: run the same command again.

Imported only by this path; Ray is the optional extra ``[ray]`` (``pip install -e '.[ray]'`` in the
checkout, or ``pip install 'ray[data,client]>=2.40'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket

import numpy as np

from ..common.progress import Progress
from ..common.stop import Stop
from ..config import load_config
from ..engine.inspector import Inspector
from ..errors import InspectorError, OutputError
from ..store import Store, StoreError, display_path
from .audit import AuditSummary, run_audit, wait_for_busy
from .ray_reaper import Reaper
from .record import Job, explain_and_record_many, start_job

log = logging.getLogger(__name__)
DEFAULT_WORKERS = 2
LOCAL_CPUS_PER_WORKER = 0.5  # of a local Ray's logical CPUs: Ray Data keeps some for its own tasks


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """``--ray-address`` (None: a local Ray on this machine), ``--workers``, ``--gpus-per-worker`` and the
    logical CPUs each worker asks for (None: 0.5 on a local Ray, 1 on a cluster)."""

    address: str | None = None
    workers: int = DEFAULT_WORKERS
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None

    def __post_init__(self):
        if self.workers < 1:
            raise InspectorError(f"--workers {self.workers}: need at least 1")
        if not 0 <= self.gpus_per_worker < math.inf:
            raise InspectorError(f"--gpus-per-worker {self.gpus_per_worker}: must be a number >= 0")
        if self.address is not None and not self.address.strip():
            raise InspectorError("--ray-address is empty: give HOST:PORT, ray://HOST:PORT or auto, or leave "
                                 "it out for a Ray on this machine")


def _import_ray():
    try:
        import ray
        import ray.data  # the Data library (pyarrow, pandas) comes with the extra
    except ImportError as e:
        raise InspectorError("--engine ray needs Ray Data: pip install 'ray[data,client]>=2.40' (the [ray] "
                             f"extra); {e}") from e
    return ray


class AuditWorker:
    """One Ray actor: an Inspector and a store connection; explains and records batches of paths."""

    def __init__(self, *, config: str, store_url: str, out: str, scope: str, source: str,
                 shard: tuple[int, int], retry: bool, threads: int | None, wait_for_others: float):
        cfg = load_config(config)
        if threads and not cfg.runtime.intra_op_threads:
            cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, intra_op_threads=threads))
        self.insp = Inspector(cfg)
        self.store = Store(store_url)
        self.job = start_job(self.insp, self.store, kind="audit", out_dir=out, scope=scope, source=source,
                             shard=shard, retry=retry)
        self.wait_for_others = wait_for_others
        self._beating = contextlib.ExitStack()
        self._beating.enter_context(self.job.keep_alive())

    def __call__(self, batch: dict) -> dict:
        paths = [os.fsdecode(bytes(p)) for p in batch["path"]]
        try:
            outcomes = {o.path: o for o in explain_and_record_many(self.job, paths)}
        except OutputError as e:  # the run's stop (disk full, the store away), told to the driver as data:
            recorded = {o.path: o.state for o in e.recorded}  # Ray would only retry a raise
            return self._rows(paths, [recorded.get(p, "stopped") for p in paths], str(e))
        busy = [p for p, o in outcomes.items() if o.state == "busy"]  # e.g. a dead worker's, on another host
        outcomes.update((o.path, o) for o in wait_for_busy(self.job, busy, self.wait_for_others))
        return self._rows(paths, [outcomes[p].state for p in paths], "")

    def _rows(self, paths: list[str], states: list[str], stopped: str) -> dict:
        return {"path": np.array([os.fsencode(p) for p in paths], dtype=object),
                "state": np.array(states, dtype=object),
                "stopped": np.array([stopped] * len(paths), dtype=object),
                "run_id": np.full(len(paths), self.job.run_id, np.int64)}


def run_ray_audit(config_path: str, source: str, out: str, *, options: RayOptions = RayOptions(),
                  store_url: str | None = None, shard: tuple[int, int] = (0, 1), retry: bool = True,
                  stop: Stop | None = None, batch_images: int | None = None,
                  wait_for_others: float = 3600.0) -> AuditSummary:
    """The audit of ``source`` (this shard) with Ray Data: :func:`inspector.audit.run_audit` (the same store,
    views and summary) with the images explained by the workers."""
    ray = _import_ray()
    if options.address:
        check_reachable(options.address)
    insp = Inspector.from_config(config_path)  # checks config and model here, before any worker starts
    worker = {"config": os.path.abspath(config_path), "source": display_path(os.path.abspath(source)),
              "shard": shard}

    def explain_on_ray(job: Job, todo: list[str], stop: Stop, summary: AuditSummary, batch: int,
                       wait: float) -> None:
        worker_runs: set[int] = set()
        reaper = Reaper() if options.address is None else None  # stops the local Ray if this process dies
        try:
            _start_ray(ray, options, job.store.url)
        except BaseException:
            if reaper is not None:
                reaper.end()
            raise
        try:
            run = {"store_url": job.store.url, "out": job.out_dir, "scope": job.scope, "retry": job.retry}
            stream = _pipeline(ray, todo, options, batch, wait, {**worker, **run})
            _collect(stream, stop, summary, worker_runs, len(todo))
        finally:
            status = "stopped" if stop.requested else "finished"
            for run_id in worker_runs:  # their workers may live on other machines
                with contextlib.suppress(StoreError):
                    job.store.end_run(run_id, status)
            ray.shutdown()
            if reaper is not None:
                reaper.end()
            with contextlib.suppress(StoreError):  # the workers of this machine that sent nothing back
                job.store.end_dead_runs(job.scope, job.run_id, status, grace=15.0)

    return run_audit(insp, source, out, store_url=store_url, shard=shard, retry=retry, stop=stop,
                     wait_for_others=wait_for_others, batch_images=batch_images, explain=explain_on_ray)


def _start_ray(ray, options: RayOptions, url: str) -> None:
    """Connect to the cluster at ``options.address``, or start a local Ray; a SQLite store is refused
    when the cluster has several machines (each would write its own copy of the file)."""
    import ray.data

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    utf8_entrypoint = _Utf8Entrypoint(ray)
    try:
        # "local": a new Ray on this machine, never a cluster named by RAY_ADDRESS or left running here
        ray.init(address=options.address or "local", include_dashboard=False, configure_logging=True,
                 logging_level=logging.WARNING, log_to_driver=True)
    except ConnectionError as e:
        raise InspectorError(f"--ray-address {options.address}: cannot connect to the Ray cluster ({e}); "
                             "is it running (`ray status` on the head)? A cluster with token authentication "
                             "(Ray's default) also needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, "
                             "or ~/.ray/auth_token) in this environment; on the head, --ray-address auto "
                             "finds both") from e
    finally:
        utf8_entrypoint.undo()
    for sig, handler in handlers.items():  # Ray's core put its own (which exit at once) in their place
        if callable(handler):
            signal.signal(sig, handler)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the audit prints its own progress line
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes on its own settings are not news
    machines = len({n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")})
    try:
        check_store_for_cluster(url, machines, options.address)
        check_resources(ray.cluster_resources(), options)
    except InspectorError:
        ray.shutdown()
        raise


def cpus_per_worker(options: RayOptions) -> float:
    if options.cpus_per_worker is not None:
        return options.cpus_per_worker
    return LOCAL_CPUS_PER_WORKER if options.address is None else 1.0


def check_resources(resources: dict, options: RayOptions) -> None:
    """Refuse workers that no machine of the cluster could hold (Ray would wait for them forever); warn
    when fewer than ``--workers`` fit at once."""
    need = {"GPU": options.gpus_per_worker, "CPU": cpus_per_worker(options)}
    fit = min((int(resources.get(kind, 0.0) // amount) for kind, amount in need.items() if amount > 0),
              default=options.workers)
    where = f"the Ray cluster at {options.address}" if options.address else "this machine's Ray"
    if fit < 1:
        have = ", ".join(f"{resources.get(k, 0.0):g} {k}" for k in need)
        raise InspectorError(f"{where} has {have}: not enough for one worker with {need['GPU']:g} GPU and "
                             f"{need['CPU']:g} CPU; lower --gpus-per-worker (0 on machines without a GPU) "
                             "or add machines")
    if fit < options.workers:
        log.warning("%s holds %d of the %d workers asked for at once (--gpus-per-worker %g); the rest wait",
                    where, fit, options.workers, options.gpus_per_worker)


class _Utf8Entrypoint:
    """Ray hands the command line (the job's entrypoint) to its core as UTF-8, so a non-UTF-8 path among the
    arguments fails ``ray.init``; while it runs, the command line it reads has such bytes escaped."""

    def __init__(self, ray):
        self.utils = getattr(getattr(ray, "_private", None), "utils", None)
        self.original = getattr(self.utils, "get_entrypoint_name", None)
        if self.original is not None:
            self.utils.get_entrypoint_name = self._escaped

    def _escaped(self) -> str:
        return self.original().encode("utf-8", "backslashreplace").decode("utf-8")

    def undo(self) -> None:
        if self.original is not None:
            self.utils.get_entrypoint_name = self.original


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) address must accept a connection: Ray itself retries a wrong one
    for minutes before it gives up. ``auto`` (the cluster this machine is part of) is left to Ray."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InspectorError(f"--ray-address {address}: expected HOST:PORT (the head's GCS port, 6379 by "
                             "default), ray://HOST:PORT, or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise InspectorError(f"--ray-address {address}: nothing answers there ({e.strerror or e}); start "
                             "the cluster (`ray start --head` on the head) or check the address") from e


def check_store_for_cluster(url: str, machines: int, address: str | None) -> None:
    """A SQLite store is a file on one machine: refused when the workers are on several."""
    if machines > 1 and url.startswith("sqlite"):
        raise InspectorError(f"the Ray cluster at {address} spans {machines} machines: a SQLite store lives "
                             "on one of them; give --store postgresql+psycopg://... (a database every worker "
                             "reaches)")


def _pipeline(ray, todo: list[str], options: RayOptions, batch: int, wait_for_others: float, worker: dict):
    """Batches of outcomes, streamed as the workers finish them."""
    threads = max(1, (os.cpu_count() or 1) // options.workers) if options.address is None else None
    dataset = ray.data.from_items([{"path": os.fsencode(p)} for p in todo],
                                  override_num_blocks=max(1, math.ceil(len(todo) / batch)))
    explained = dataset.map_batches(
        AuditWorker, batch_size=batch, batch_format="numpy", num_cpus=cpus_per_worker(options),
        compute=ray.data.ActorPoolStrategy(size=options.workers), num_gpus=options.gpus_per_worker or None,
        fn_constructor_kwargs={**worker, "threads": threads, "wait_for_others": wait_for_others})
    return explained.iter_batches(batch_size=None, batch_format="numpy")


def _collect(stream, stop: Stop, summary: AuditSummary, worker_runs: set[int], total: int) -> None:
    progress, done = Progress(total), 0
    try:
        for outcomes in stream:
            worker_runs.update(int(r) for r in outcomes["run_id"])
            for state in outcomes["state"]:
                summary.explained += state == "explained"
                summary.reused += state == "done"
            done += len(outcomes["state"])
            progress.update(done, "ray")
            stopped = [s for s in outcomes["stopped"] if s]
            if stopped:
                raise OutputError(stopped[0])
            if stop.requested:
                return
    finally:
        progress.finish("handled")
