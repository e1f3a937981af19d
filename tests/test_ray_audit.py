"""`inspector audit --engine ray` on a local Ray (2 CPUs): the same rows as the single-process audit, every
image exactly once when a worker process is killed mid-run, and a resume after the driver is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest
import sqlalchemy as sa

from .test_audit import (
    assert_artifacts_match_store,
    audit,
    backend_url,
    config,
    csv_rows,
    done_so_far,
    inspector,
    make_inputs,
    sqlite_url,
    store_counts,
)

pytest.importorskip("ray.data")
psutil = pytest.importorskip("psutil")  # comes with Ray

COMPARED = ["image_sha256", "status", "prediction", "target", "masks", "regions", "flagged", "retryable"]


def ray_audit(*args, **kw):
    return audit(*args, "--engine", "ray", "--workers", "2", **kw)


def rows_by_path(out) -> dict[str, dict]:
    return {r["path"]: r for r in csv_rows(out)}


def make_folder(folder, count: int) -> None:
    """``count`` parts plus a broken file and a name that is not UTF-8."""
    make_inputs(folder, count)
    (folder / "broken.png").write_bytes(b"not an image")
    with open(os.path.join(os.fsencode(str(folder)), b"caf\xe9 \xff.png"), "wb") as f:
        f.write((folder / "part_000.png").read_bytes()[:-1] + b"\x00")  # other bytes, other content


def assert_exactly_once(out, images: int, url: str | None = None) -> None:
    url = url or sqlite_url(out)
    counts = store_counts(url)
    assert counts["dupes"] == 0 and counts["results"] == counts["images"] == images, counts
    assert_artifacts_match_store(url)


def workers_of(driver_pid: int) -> list:
    """The Ray actor processes running AuditWorker under this driver's local Ray."""
    found = []
    for p in psutil.Process(driver_pid).children(recursive=True):
        try:
            if "AuditWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def wait_until(condition, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@contextlib.contextmanager
def ray_audit_under_way(tmp_path, images: int, *extra, done=None):
    """A Ray audit of ``images`` parts in batches of 2 into ``tmp_path/out``, yielded as (process, input, out,
    config) once ``done()`` (default: finished results in its SQLite store) reaches 3; killed at the end."""
    inp, out, cfg = tmp_path / "in", tmp_path / "out", config(tmp_path)
    make_inputs(inp, images)
    done = done or (lambda: done_so_far(out))
    proc = ray_audit("-c", cfg, inp, "--out", out, "--batch-images", "2", *extra, wait=False)
    try:
        wait_until(lambda: done() >= 3)
        yield proc, inp, out, cfg
    finally:
        proc.kill()


def test_ray_audit_equals_the_single_process_audit(tmp_path, monkeypatch):
    """Also: an input folder whose name is not UTF-8 (on the command line Ray passes on), a RAY_ADDRESS
    naming no cluster (the default is a new Ray on this machine), more workers than batches (every
    worker's run is ended in the store)."""
    inp = tmp_path / os.fsdecode(b"in \xe9")
    make_folder(inp, 10)
    cfg = config(tmp_path)
    local = audit("-c", cfg, inp, "--out", tmp_path / "local")
    out = tmp_path / "ray"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    ray = audit("-c", cfg, inp, "--out", out, "--engine", "ray", "--workers", "6", "--batch-images", "3")
    assert local.returncode == ray.returncode == 1, ray.stderr  # broken.png fails in both
    assert "12 image(s): 11 explained now, 0 found in the store, 1 failed" in ray.stdout, ray.stdout
    engine = sa.create_engine(sqlite_url(out))
    with engine.connect() as conn:
        open_runs = conn.execute(sa.text("SELECT count(*) FROM runs WHERE ended_at IS NULL")).scalar_one()
        runs = conn.execute(sa.text("SELECT count(*) FROM runs")).scalar_one()
    engine.dispose()
    assert open_runs == 0 and runs >= 2
    monkeypatch.delenv("RAY_ADDRESS")
    a, b = rows_by_path(tmp_path / "local"), rows_by_path(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) == 12
    for path in a:
        assert {k: a[path][k] for k in COMPARED} == {k: b[path][k] for k in COMPARED}, path
    assert_exactly_once(tmp_path / "ray", 12)  # the broken file has a (failed) result too
    again = ray_audit("-c", cfg, inp, "--out", tmp_path / "ray", "--no-retry")
    assert again.returncode == 1 and "0 explained now, 11 found in the store, 1 failed" in again.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_killed_ray_worker_still_gives_every_image_exactly_once(tmp_path, backend, request):
    url, extra = backend_url(backend, tmp_path / "out", request)

    def done() -> int:
        try:
            return store_counts(url)["done"]
        except sa.exc.DatabaseError:  # not created yet
            return 0
    with ray_audit_under_way(tmp_path, 24, *extra, done=done) as (proc, _, out, _):
        victims = workers_of(proc.pid)
        assert victims, "no Ray worker found"
        victims[0].send_signal(signal.SIGKILL)
        killed_at = done()
        _, stderr = proc.communicate(timeout=600)
    assert killed_at < 24, "the run had finished before the kill; nothing was tested"
    assert proc.returncode == 0, stderr
    assert_exactly_once(out, 24, url)
    assert {r["status"] for r in csv_rows(out)} == {"done"} and len(csv_rows(out)) == 24


def _process(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def running(processes: list) -> list:
    alive = []
    for p in processes:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def test_resume_after_the_ray_driver_is_killed(tmp_path):
    """Also: the local Ray the killed driver started stops by itself (its agents used to survive it,
    ignoring SIGTERM); only a kill of the whole process group did it before."""
    with ray_audit_under_way(tmp_path, 20) as (proc, inp, out, cfg):
        local_ray = psutil.Process(proc.pid).children(recursive=True)
        assert len(local_ray) >= 3, local_ray
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        killed_at = done_so_far(out)
        deadline = time.time() + 60
        while running(local_ray) and time.time() < deadline:
            time.sleep(0.5)
        left = [(p.pid, " ".join(p.cmdline())[:80]) for p in running(local_ray)]
        for p in running(local_ray):  # never leave them to the next test
            p.kill()
    assert not left, left
    assert killed_at < 20, "the run had finished before the kill; nothing was tested"
    again = ray_audit("-c", cfg, inp, "--out", out)
    assert again.returncode == 0, again.stderr
    assert "found in the store" in again.stdout
    assert_exactly_once(out, 20)
    rows = csv_rows(out)
    assert len(rows) == 20 and {r["status"] for r in rows} == {"done"}
    merged = inspector("audit-merge", out, "--out", tmp_path / "merged")
    assert merged.returncode == 0, merged.stderr


def test_a_sqlite_store_is_refused_on_a_cluster_of_several_machines():
    from inspector.errors import InspectorError
    from inspector.jobs.ray_audit import check_store_for_cluster

    with pytest.raises(InspectorError, match="spans 3 machines.*postgresql"):
        check_store_for_cluster("sqlite:////srv/audit/results.db", 3, "head:6379")
    check_store_for_cluster("sqlite:////srv/audit/results.db", 1, "head:6379")
    check_store_for_cluster("postgresql+psycopg://sise@db/sise", 3, "head:6379")


def test_an_audit_on_a_cluster_started_with_ray_start(tmp_path, monkeypatch):
    """`ray start --head` then `--ray-address`: the path a cluster takes (one machine here). The head
    enables token authentication (Ray's default); a driver given an address needs RAY_AUTH_MODE=token."""
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": temp}
    log = open(tmp_path / "head.log", "w")  # noqa: SIM115 - closed in finally
    # --block: the head's processes stay under this one process group, which the test stops itself
    # (`ray stop --force` stopped every Ray on the machine, other tests' and other users' too)
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--num-gpus=0", "--disable-usage-stats", "--include-dashboard=false",
                             f"--temp-dir={temp}"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while "Ray runtime started" not in (tmp_path / "head.log").read_text() and head.poll() is None:
            assert time.time() < deadline, (tmp_path / "head.log").read_text()
            time.sleep(0.2)
        assert head.poll() is None, (tmp_path / "head.log").read_text()
        inp = tmp_path / "in"
        make_inputs(inp, 6)
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        r = audit("-c", config(tmp_path), inp, "--out", tmp_path / "out", "--engine", "ray",
                  "--ray-address", f"127.0.0.1:{port}", "--workers", "2")
        assert r.returncode == 0, r.stderr
        assert "6 image(s): 6 explained now" in r.stdout
        assert_exactly_once(tmp_path / "out", 6)
    finally:
        processes = [head_process, *head_process.children(recursive=True)] if (
            head_process := _process(head.pid)) else []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        _, left = psutil.wait_procs(processes, timeout=30)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_wrong_ray_address_is_named_at_once(tmp_path):
    """Ray retries an address where nothing listens for minutes; the audit says so in one line, before
    anything is written."""
    import socket

    from inspector.errors import InspectorError
    from inspector.jobs.ray_audit import check_reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(InspectorError, match=f"127.0.0.1:{port}: nothing answers there"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(InspectorError, match="expected HOST:PORT"):
        check_reachable("head-node")
    check_reachable("auto")
    inp = tmp_path / "in"
    make_inputs(inp, 1)
    r = ray_audit("-c", config(tmp_path), inp, "--out", tmp_path / "out",
                  "--ray-address", f"127.0.0.1:{port}")
    assert r.returncode == 2 and "nothing answers there" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_a_full_disk_stops_the_ray_audit_like_the_local_one(tmp_path):
    """ENOSPC in a worker (a real 3 MB tmpfs, as root) is the run's stop, not an image failure: exit 3 and
    the views; with space freed the same command finishes, every image once."""
    import subprocess

    from .test_audit import tmpfs

    inp = tmp_path / "in"
    make_inputs(inp, 14)
    cfg = config(tmp_path)
    out = tmp_path / "small"
    with tmpfs(out, "3m"):
        full = ray_audit("-c", cfg, inp, "--out", out)
        assert full.returncode == 3, full.stderr
        assert "No space left on device" in full.stderr or "full" in full.stderr, full.stderr
        engine = sa.create_engine(sqlite_url(out))
        with engine.connect() as conn:
            statuses = [s for (s,) in conn.execute(sa.text("SELECT status FROM results"))]
        engine.dispose()
        # ENOSPC fails no image; a claim the other worker held when the run stopped is taken over next time
        assert 0 < statuses.count("done") < 14 and set(statuses) <= {"done", "running"}, statuses
        subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)
        again = ray_audit("-c", cfg, inp, "--out", out)
        assert again.returncode == 0, again.stderr
        assert_exactly_once(out, 14)


def test_sigterm_stops_the_ray_audit_with_views_and_exit_3(tmp_path):
    with ray_audit_under_way(tmp_path, 24) as (proc, inp, out, cfg):
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    assert "stopped by SIGTERM" in stderr
    rows = csv_rows(out)
    assert len(rows) == 24 and 0 < sum(r["status"] == "done" for r in rows) < 24
    again = ray_audit("-c", cfg, inp, "--out", out)
    assert again.returncode == 0, again.stderr
    assert_exactly_once(out, 24)


def test_workers_that_no_machine_can_hold_are_refused(caplog):
    """Ray waits forever for a worker whose GPU no machine has: refused in one line instead."""
    from inspector.errors import InspectorError
    from inspector.jobs.ray_audit import RayOptions, check_resources

    cpu_only = {"CPU": 2.0, "memory": 1e10}
    with pytest.raises(InspectorError, match="0 GPU.*lower --gpus-per-worker"):
        check_resources(cpu_only, RayOptions(workers=2, gpus_per_worker=1))
    check_resources(cpu_only, RayOptions(workers=2))  # 0.5 CPU each on a local Ray
    with caplog.at_level("WARNING"):
        check_resources({"CPU": 16.0, "GPU": 2.0}, RayOptions(address="auto", workers=4, gpus_per_worker=1))
    assert "holds 2 of the 4 workers" in caplog.text
    check_resources({"CPU": 16.0, "GPU": 2.0}, RayOptions(address="auto", workers=4, gpus_per_worker=0.5))
    with pytest.raises(InspectorError, match="not enough for one worker"):
        check_resources({"CPU": 0.25}, RayOptions(workers=1))


def test_nonsense_counts_are_refused(tmp_path):
    from inspector.errors import ConfigError

    inp = tmp_path / "in"
    make_inputs(inp, 1)
    for extra in (["--batch-images", "0"], ["--batch-images", "-3"], ["--engine", "ray", "--workers", "0"],
                  ["--workers", "2"], ["--engine", "ray", "--gpus-per-worker", "nan"],
                  ["--engine", "ray", "--ray-address", ""]):
        r = audit("-c", config(tmp_path), inp, "--out", tmp_path / "out", *extra)
        assert r.returncode == 2, (extra, r.stderr)
        assert "Traceback" not in r.stderr and "unexpected" not in r.stderr, (extra, r.stderr)
    from .test_batching import example

    with pytest.raises(ConfigError, match="batch_images 0"):
        example().batch_images(0)
