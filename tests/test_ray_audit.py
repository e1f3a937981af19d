"""`inspector audit --engine ray` on a local Ray (2 CPUs): the same rows as the single-process audit, every
image exactly once when a worker process is killed mid-run, and a resume after the driver is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from .test_audit import (
    assert_artifacts_match_store,
    audit,
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


def assert_exactly_once(out, images: int) -> None:
    counts = store_counts(sqlite_url(out))
    assert counts["dupes"] == 0 and counts["results"] == counts["images"] == images, counts
    assert_artifacts_match_store(sqlite_url(out))


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


def test_ray_audit_equals_the_single_process_audit(tmp_path):
    inp = tmp_path / "in"
    make_folder(inp, 10)
    cfg = config(tmp_path)
    local = audit("-c", cfg, inp, "--out", tmp_path / "local")
    ray = ray_audit("-c", cfg, inp, "--out", tmp_path / "ray", "--batch-images", "3")
    assert local.returncode == ray.returncode == 1, ray.stderr  # broken.png fails in both
    assert "12 image(s): 11 explained now, 0 found in the store, 1 failed" in ray.stdout, ray.stdout
    a, b = rows_by_path(tmp_path / "local"), rows_by_path(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) == 12
    for path in a:
        assert {k: a[path][k] for k in COMPARED} == {k: b[path][k] for k in COMPARED}, path
    assert_exactly_once(tmp_path / "ray", 12)  # the broken file has a (failed) result too
    again = ray_audit("-c", cfg, inp, "--out", tmp_path / "ray", "--no-retry")
    assert again.returncode == 1 and "0 explained now, 11 found in the store, 1 failed" in again.stdout


def test_a_killed_ray_worker_still_gives_every_image_exactly_once(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 24)
    out = tmp_path / "out"
    proc = ray_audit("-c", config(tmp_path), inp, "--out", out, "--batch-images", "2", wait=False)
    try:
        wait_until(lambda: done_so_far(out) >= 3)
        victims = workers_of(proc.pid)
        assert victims, "no Ray worker found"
        victims[0].send_signal(signal.SIGKILL)
        killed_at = done_so_far(out)
        _, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert killed_at < 24, "the run had finished before the kill; nothing was tested"
    assert proc.returncode == 0, stderr
    assert_exactly_once(out, 24)
    assert {r["status"] for r in csv_rows(out)} == {"done"} and len(csv_rows(out)) == 24


def test_resume_after_the_ray_driver_is_killed(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 20)
    out = tmp_path / "out"
    cfg = config(tmp_path)
    proc = ray_audit("-c", cfg, inp, "--out", out, "--batch-images", "2", wait=False)
    try:
        wait_until(lambda: done_so_far(out) >= 3)
        local_ray = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        killed_at = done_so_far(out)
        for p in local_ray:  # what `kill -9` of the job's process group does to the Ray it started
            with contextlib.suppress(psutil.Error):
                p.kill()
    finally:
        proc.kill()
    assert killed_at < 20, "the run had finished before the kill; nothing was tested"
    again = ray_audit("-c", cfg, inp, "--out", out)
    assert again.returncode == 0, again.stderr
    assert "found in the store" in again.stdout
    assert_exactly_once(out, 20)
    rows = csv_rows(out)
    assert len(rows) == 20 and {r["status"] for r in rows} == {"done"}
    merged = inspector("audit-merge", out, "--out", tmp_path / "merged")
    assert merged.returncode == 0, merged.stderr
