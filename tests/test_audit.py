"""`inspector audit` on the results store, as a user runs it: bad files, kills at random points, repeated
and hostile names, shards and merges, two audits at once (SQLite and PostgreSQL), disk full, signals,
refused folders, exit codes, file modes."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
import yaml

from inspector.demo import example_dir
from inspector.quality.synthetic import sample

from .mounts import tmpfs

SAMPLES = os.path.join(example_dir(), "samples")


def png(seed: int, i: int) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(sample(seed, i).image, cv2.COLOR_RGB2BGR))[1].tobytes()


def make_inputs(folder, count, seed=55, prefix="part"):
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        with open(os.path.join(folder, f"{prefix}_{i:03d}.png"), "wb") as f:
            f.write(png(seed, i))


def config(tmp_path, **extra):
    with open(os.path.join(example_dir(), "config.yaml")) as f:
        raw = yaml.safe_load(f)
    raw["model"] = os.path.join(example_dir(), raw["model"])
    raw.update(extra)
    path = tmp_path / f"config_{len(extra)}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def inspector(*args, wait=True, umask=None):
    cmd = [sys.executable, "-m", "inspector", *map(os.fsdecode, args)]
    if umask is not None:  # the child's own umask (a shell sets it; preexec_fn is unsafe with threads)
        cmd = ["sh", "-c", f"umask {umask:03o} && exec \"$@\"", "sh", *cmd]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


def audit(*args, **kw):
    return inspector("audit", *args, **kw)


def csv_rows(out) -> list[dict]:
    with open(os.path.join(out, "results.csv"), newline="") as f:
        return list(csv.DictReader(f))


def jsonl_rows(out) -> list[dict]:
    with open(os.path.join(out, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def summary(rows, root):
    """path relative to ``root`` -> what a reviewer compares between two runs."""
    return {os.path.relpath(r["path"], root): (r["status"], r["prediction"], r["confidence"], r["regions"])
            for r in rows}


def store_counts(db_url: str) -> dict:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        out = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
               for t in ("results", "inputs", "images", "artifacts")}
        out["done"] = conn.execute(sa.text("SELECT count(*) FROM results WHERE status = 'done'")).scalar_one()
        out["dupes"] = conn.execute(sa.text(
            "SELECT count(*) FROM (SELECT image_sha256 FROM results "
            "GROUP BY image_sha256, settings_hash, target_key HAVING count(*) > 1) d")).scalar_one()
    engine.dispose()
    return out


def done_so_far(out) -> int:
    """Finished results in ``<out>/results.db`` while an audit may still be creating it."""
    try:
        return store_counts(sqlite_url(out))["done"]
    except sa.exc.OperationalError:  # not created yet
        return 0


def sqlite_url(out) -> str:
    return "sqlite:///" + os.path.join(str(out), "results.db")


def assert_artifacts_match_store(db_url: str) -> None:
    """Every artifact the store lists exists with the recorded SHA-256; no temporary files anywhere."""
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT a.path, a.sha256, r.out_dir FROM artifacts a JOIN results s ON "
                                    "s.id = a.result_id JOIN runs r ON r.id = s.run_id")).all()
    engine.dispose()
    assert rows
    for path, sha, out_dir in rows:
        with open(os.path.join(out_dir, path), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha
    for out_dir in {r[2] for r in rows}:
        for _, _, files in os.walk(out_dir):
            assert not [f for f in files if f.endswith(".part")]


def test_bad_files_are_recorded_and_the_run_goes_on(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 3)
    data = cv2.imencode(".jpg", sample(1, 1).image)[1].tobytes()
    (inp / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (inp / "text.png").write_text("this is not an image")
    (inp / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    r = audit("-c", config(tmp_path), inp, "--out", out)
    assert r.returncode == 1, r.stderr  # some images failed, each named on stderr
    assert "3 image(s) failed" in r.stderr and f"{inp / 'text.png'}: not a readable image" in r.stderr
    rows = {os.path.basename(row["path"]): row for row in csv_rows(out)}
    assert len(rows) == 6
    assert ({k for k, v in rows.items() if v["status"] == "failed"}
            == {"truncated.jpg", "text.png", "empty.png"})
    assert "empty" in rows["empty.png"]["error"] and rows["empty.png"]["retryable"] == "false"
    assert rows["part_000.png"]["flagged"] == "false" and rows["part_000.png"]["retryable"] == ""
    assert len(rows["part_000.png"]["confidence"].split(".")[1]) == 4  # rounded
    assert (rows["part_000.png"]["image_sha256"]
            == hashlib.sha256((inp / "part_000.png").read_bytes()).hexdigest())
    report = (out / "report.html").read_text()
    assert "3 failed" in report and "part_000" in report and "Flagged" not in report  # no ROI configured
    assert len(jsonl_rows(out)) == 6


def backend_url(backend: str, out, request) -> tuple[str, list[str]]:
    """(store URL, extra audit arguments) for a test on ``backend``."""
    if backend == "sqlite":
        return sqlite_url(out), []
    from .postgres import new_database

    url = new_database(request.getfixturevalue("postgres_server"))
    return url, ["--store", url]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killed_at_random_points_then_resumed_every_image_once(tmp_path, backend, request):
    inp = tmp_path / "in"
    make_inputs(inp, 24)
    cfg = config(tmp_path)
    reference = tmp_path / "reference"
    assert audit("-c", cfg, inp, "--out", reference).returncode == 0
    out = tmp_path / "out"
    url, extra = backend_url(backend, out, request)
    rng = random.Random(7)
    done_at_kill = []

    def done() -> int:
        try:
            return store_counts(url)["done"]
        except sa.exc.DatabaseError:  # not created yet
            return 0
    for _ in range(3):
        before = done()
        proc = audit("-c", cfg, inp, "--out", out, *extra, wait=False)
        # killed at a random moment once this run recorded a result (not at a time after its start: on a
        # busy machine start-up alone took longer than that window, and no kill landed mid-run)
        while done() == before and proc.poll() is None and before < 24:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        try:
            done_at_kill.append(store_counts(url)["done"])
        except sa.exc.DatabaseError:  # killed before it created the tables
            done_at_kill.append(0)
    assert any(0 < d < 24 for d in done_at_kill), f"no kill landed mid-run: {done_at_kill}"
    r = audit("-c", cfg, inp, "--out", out, *extra)
    assert r.returncode == 0, r.stderr
    rows = csv_rows(out)
    assert len(rows) == len({r["path"] for r in rows}) == 24
    assert summary(rows, inp) == summary(csv_rows(reference), inp)
    counts = store_counts(url)
    assert counts["results"] == counts["done"] == 24 and counts["dupes"] == 0 and counts["artifacts"] == 120
    assert_artifacts_match_store(url)
    again = audit("-c", cfg, inp, "--out", out, *extra)  # a further run has nothing left to do
    assert again.returncode == 0 and "0 explained now, 24 found in the store" in again.stdout


def test_results_are_keyed_by_content_not_by_name(tmp_path):
    cfg = config(tmp_path)
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    make_inputs(a, 3, seed=1)
    make_inputs(b, 3, seed=2)  # the same file names, other parts
    out = tmp_path / "out"
    assert audit("-c", cfg, a, "--out", out).returncode == 0
    r = audit("-c", cfg, b, "--out", out)
    assert r.returncode == 0 and "3 explained now, 0 found in the store" in r.stdout
    rows_b = csv_rows(out)
    assert [os.path.dirname(x["path"]) for x in rows_b] == [str(b)] * 3
    assert {x["image_sha256"] for x in rows_b} == {hashlib.sha256((b / n).read_bytes()).hexdigest()
                                                    for n in os.listdir(b)}
    c.mkdir()
    for i, name in enumerate(sorted(os.listdir(a))):  # the same bytes under new names, elsewhere
        shutil.copy(a / name, c / f"renamed_{i}.png")
    r = audit("-c", cfg, c, "--out", out)
    assert r.returncode == 0 and "0 explained now, 3 found in the store" in r.stdout
    assert store_counts(sqlite_url(out))["results"] == 6


def test_two_shards_merged_equal_one_run_and_partial_merges_say_what_is_missing(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 10)
    cfg = config(tmp_path)
    assert audit("-c", cfg, inp, "--out", tmp_path / "all").returncode == 0
    for i in range(2):
        assert audit("-c", cfg, inp, "--out", tmp_path / f"s{i}", "--shard", f"{i}/2").returncode == 0
    parts = [csv_rows(tmp_path / f"s{i}") for i in range(2)]
    assert parts[0] and parts[1] and not ({r["path"] for r in parts[0]} & {r["path"] for r in parts[1]})

    def fingerprint(folder):  # a reader of a WAL database may add an empty -wal and its -shm index
        return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in sorted(os.listdir(folder))
                if n in ("results.db", "results.csv", "results.jsonl", "report.html")
                or (n == "results.db-wal" and (folder / n).stat().st_size)}
    before = [fingerprint(tmp_path / f"s{i}") for i in range(2)]
    half = inspector("audit-merge", tmp_path / "s0", "--out", tmp_path / "half")
    assert half.returncode == 3 and "shard(s) 1/2 missing" in half.stderr
    assert "INCOMPLETE" in (tmp_path / "half" / "report.html").read_text()
    onto = inspector("audit-merge", tmp_path / "s1", "--out", tmp_path / "s0")
    assert onto.returncode == 2 and "holds the store of an audit" in onto.stderr
    same = inspector("audit-merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "s0")
    assert same.returncode == 2 and "is the part" in same.stderr
    # a shard folder brought from another machine
    shutil.copytree(tmp_path / "s1", tmp_path / "copied" / "s1")
    shutil.rmtree(tmp_path / "s1")
    r = inspector("audit-merge", tmp_path / "s0", tmp_path / "copied" / "s1", "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    shutil.move(tmp_path / "copied" / "s1", tmp_path / "s1")
    assert summary(csv_rows(tmp_path / "merged"), inp) == summary(csv_rows(tmp_path / "all"), inp)
    assert [fingerprint(tmp_path / f"s{i}") for i in range(2)] == before  # parts are never written
    assert_artifacts_match_store(sqlite_url(tmp_path / "merged"))
    for row in jsonl_rows(tmp_path / "merged"):
        assert (tmp_path / "merged" / row["artifacts"]["overlay"]).is_file()
    again = inspector("audit-merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "merged")
    assert again.returncode == 0 and store_counts(sqlite_url(tmp_path / "merged"))["results"] == 10
    other = audit("-c", config(tmp_path, regions={"threshold": "fixed", "value": 0.4}), inp, "--out",
                  tmp_path / "other", "--shard", "1/2")
    assert other.returncode == 0
    mixed = inspector("audit-merge", tmp_path / "s0", tmp_path / "other", "--out", tmp_path / "mixed")
    assert mixed.returncode == 2 and "different settings" in mixed.stderr


def test_unfinished_images_of_a_shard_are_named_by_the_merge(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 8)
    cfg = config(tmp_path)
    proc = audit("-c", cfg, inp, "--out", tmp_path / "s0", "--shard", "0/1", "--batch-images", "2",
                 wait=False)
    deadline = time.time() + 120
    while time.time() < deadline:
        if done_so_far(tmp_path / "s0") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    r = inspector("audit-merge", tmp_path / "s0", "--out", tmp_path / "m")
    assert r.returncode == 3 and "have no result" in r.stderr, r.stderr
    assert "Not finished" in (tmp_path / "m" / "report.html").read_text()


def test_roi_evidence_and_flag(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    cv2.imwrite(str(inp / "crack.png"), cv2.imread(os.path.join(SAMPLES, "crack.png")))
    defect = cv2.imread(os.path.join(SAMPLES, "crack_mask.png"), cv2.IMREAD_GRAYSCALE)
    near = cv2.dilate(defect, np.ones((25, 25), np.uint8))
    cv2.imwrite(str(tmp_path / "roi_on.png"), near)
    cv2.imwrite(str(tmp_path / "roi_off.png"), 255 - near)
    on = audit("-c", config(tmp_path, roi={"mask": str(tmp_path / "roi_on.png")}), inp,
               "--out", tmp_path / "on")
    off = audit("-c", config(tmp_path, roi={"mask": str(tmp_path / "roi_off.png"), "flag_below": 0.5}), inp,
                "--out", tmp_path / "off")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    row_on, row_off = jsonl_rows(tmp_path / "on")[0], jsonl_rows(tmp_path / "off")[0]
    assert row_on["roi_inside"] == pytest.approx(1 - row_off["roi_inside"], abs=1e-5)
    assert row_on["roi_inside"] > 0.5 and not row_on["flagged"] and row_off["flagged"]
    assert "Flagged: evidence mostly outside the ROI (1)" in (tmp_path / "off" / "report.html").read_text()


def test_folders_that_would_mix_inputs_and_outputs_are_refused(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 3)
    cfg = config(tmp_path)
    for out, expect in ((inp / "audit", "inside the input folder"), (inp, "inside the input folder"),
                        (tmp_path, "lies inside --out")):
        r = audit("-c", cfg, inp, "--out", out)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and expect in lines[0], r.stderr
    (tmp_path / "file.txt").write_text("x")
    r = audit("-c", cfg, inp, "--out", tmp_path / "file.txt")
    assert r.returncode == 2 and r.stderr.strip() == (f"error: --out {tmp_path / 'file.txt'}: is a file; "
                                                      "give a folder (created if missing)")
    assert sorted(os.listdir(inp)) == [f"part_{i:03d}.png" for i in range(3)]


def test_hostile_and_undecodable_names(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    names = [b"caf\xe9 \xff.png", b"lot#7 part.png", b"<img src=x onerror=alert(1)>.png", b"a'b\"c&d.png"]
    for i, name in enumerate(names):
        with open(os.path.join(os.fsencode(str(inp)), name), "wb") as f:
            f.write(png(9, i))
    out = tmp_path / "out"
    r = audit("-c", config(tmp_path), inp, "--out", out, "--shard", "0/1")
    assert r.returncode == 0, r.stderr
    engine = sa.create_engine(sqlite_url(out))
    with engine.connect() as conn:
        stored = {bytes(p) for (p,) in conn.execute(sa.text("SELECT path_bytes FROM inputs"))}
        sources = {bytes(p) for (p,) in conn.execute(sa.text("SELECT source_path_bytes FROM results"))}
    engine.dispose()
    expected = {os.path.join(os.fsencode(str(inp)), n) for n in names}
    assert stored == sources == expected
    report = (out / "report.html").read_text()
    assert "<img src=x" not in report and "&lt;img src=x onerror=alert(1)&gt;.png" in report
    assert "caf\\xe9 \\xff.png" in (out / "results.csv").read_text()
    for row in jsonl_rows(out):  # every thumbnail the report links exists
        assert (out / row["artifacts"]["overlay"]).is_file()
    for src in __import__("re").findall(r"src='([^']+)'", report):
        from urllib.parse import unquote

        assert (out / unquote(src.replace("&amp;", "&"))).is_file(), src


def test_sigterm_stops_after_the_current_image_and_writes_the_views(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 30)
    out = tmp_path / "out"
    proc = audit("-c", config(tmp_path), inp, "--out", out, wait=False)
    deadline = time.time() + 120
    while time.time() < deadline:
        if done_so_far(out) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "stopped by SIGTERM" in err
    assert "\r" not in err and "[" in err  # progress in a log is whole lines, not carriage returns
    rows = csv_rows(out)
    done = [r for r in rows if r["status"] == "done"]
    assert len(rows) == 30 and 2 <= len(done) < 30
    assert all(r["status"] in ("done", "pending") for r in rows)
    assert "INCOMPLETE" in (out / "report.html").read_text()
    # the image in flight was finished, none half
    assert store_counts(sqlite_url(out))["results"] == len(done)


def test_outputs_are_readable_by_others_under_the_usual_umask(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 1)
    out = tmp_path / "out"
    assert audit("-c", config(tmp_path), inp, "--out", out, umask=0o022).returncode == 0
    files = [out / n for n in ("results.csv", "results.jsonl", "report.html", "results.db")]
    files += [out / "images" / n for n in os.listdir(out / "images")]
    assert len(files) == 9  # the four views, and one image's five files
    assert {oct(os.stat(f).st_mode & 0o777) for f in files} == {"0o644"}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_audits_at_once_write_every_result_once(tmp_path, backend, request):
    inp = tmp_path / "in"
    make_inputs(inp, 16)
    cfg = config(tmp_path)
    out = tmp_path / "out"
    url, extra = backend_url(backend, out, request)
    procs = [audit("-c", cfg, inp, "--out", out, *extra, wait=False) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    counts = store_counts(url)
    assert counts["results"] == counts["done"] == 16 and counts["dupes"] == 0
    assert counts["inputs"] == 16 and counts["artifacts"] == 80
    rows = csv_rows(out)
    assert len(rows) == 16 and {r["status"] for r in rows} == {"done"}
    assert_artifacts_match_store(url)


def test_disk_full_stops_the_run_and_a_later_run_continues(tmp_path):
    """On a real 3 MB tmpfs (needs root, as CI has): ENOSPC is not an image failure."""
    inp = tmp_path / "in"
    make_inputs(inp, 14)
    cfg = config(tmp_path)
    reference = tmp_path / "reference"
    assert audit("-c", cfg, inp, "--out", reference).returncode == 0
    out = tmp_path / "small"
    with tmpfs(out, "3m"):
        full = audit("-c", cfg, inp, "--out", out)
        assert full.returncode == 3, full.stderr
        assert "No space left on device" in full.stderr or "full" in full.stderr, full.stderr
        assert "Traceback" not in full.stderr
        counts = store_counts(sqlite_url(out))
        engine = sa.create_engine(sqlite_url(out))
        with engine.connect() as conn:
            statuses = dict(conn.execute(sa.text("SELECT status, count(*) FROM results GROUP BY status"))
                            .all())
        engine.dispose()
        assert 0 < counts["done"] < 14 and "failed" not in statuses, statuses  # ENOSPC fails no image
        # at most the claim the full disk kept the store from giving back (the next run takes it over)
        assert statuses.get("running", 0) <= 1, statuses
        subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)  # space freed
        r = audit("-c", cfg, inp, "--out", out)
        assert r.returncode == 0, r.stderr
        assert summary(csv_rows(out), inp) == summary(csv_rows(reference), inp)
        counts = store_counts(sqlite_url(out))
        assert counts["results"] == counts["done"] == 14 and counts["artifacts"] == 70
        assert_artifacts_match_store(sqlite_url(out))


def test_simulated_enospc_and_transient_failures_in_process(tmp_path, monkeypatch):
    """The same guarantees without root: the file system answers ENOSPC from the 6th artifact on; an
    engine error on one image is a failed result that the next run retries (not with retry=False)."""
    from inspector.common import atomic
    from inspector.engine.inspector import Inspector
    from inspector.jobs.audit import run_audit

    inp = tmp_path / "in"
    make_inputs(inp, 5)
    insp = Inspector.from_config(config(tmp_path))
    out = tmp_path / "out"
    real_write = atomic._write_temp
    calls = {"n": 0}

    def full_disk(final, data):  # the artifacts' disk is full; the views still fit
        calls["n"] += 1
        if calls["n"] > 5 and os.sep + "images" + os.sep in final:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), final)
        return real_write(final, data)
    monkeypatch.setattr(atomic, "_write_temp", full_disk)
    s = run_audit(insp, str(inp), str(out))
    assert s.exit_code == 3 and "No space left on device" in s.stopped
    assert [r["status"] for r in s.rows].count("done") == 1 and s.failed == 0
    assert s.explained == 1  # recorded before the disk filled, in the same batch: counted
    assert not [n for n in os.listdir(out / "images") if n.endswith(".part")]
    assert len(os.listdir(out / "images")) == 5  # the one finished image; the second's files were removed
    monkeypatch.setattr(atomic, "_write_temp", real_write)

    real_group, broken = Inspector._explain_group, {"n": 0}

    def flaky(self, items, **kw):  # the batch of four runs out of memory, then its first image alone too
        if len(items) > 1 or broken["n"] == 0:
            broken["n"] += len(items) == 1
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_group(self, items, **kw)
    monkeypatch.setattr(Inspector, "_explain_group", flaky)
    s = run_audit(insp, str(inp), str(out))
    assert s.exit_code == 1 and s.failed == 1 and s.explained == 3 and s.reused == 1
    failed = [r for r in s.rows if r["status"] == "failed"]
    assert failed[0]["retryable"] is True and "out of memory" in failed[0]["error"]
    s = run_audit(insp, str(inp), str(out), retry=False)
    assert s.exit_code == 1 and s.explained == 0
    s = run_audit(insp, str(inp), str(out))
    assert s.exit_code == 0 and s.explained == 1 and s.reused == 4
    assert store_counts(sqlite_url(out))["results"] == 5


def test_the_views_follow_the_folder_as_it_is_now(tmp_path):
    """Files renamed or deleted between two runs leave the views; nothing is listed twice."""
    inp = tmp_path / "in"
    make_inputs(inp, 4)
    cfg = config(tmp_path)
    out = tmp_path / "out"
    assert audit("-c", cfg, inp, "--out", out).returncode == 0
    os.rename(inp / "part_000.png", inp / "renamed.png")
    os.unlink(inp / "part_001.png")
    r = audit("-c", cfg, inp, "--out", out)
    assert r.returncode == 0 and "3 image(s): 0 explained now, 3 found in the store" in r.stdout, r.stdout
    assert sorted(os.path.basename(row["path"]) for row in csv_rows(out)) == ["part_002.png", "part_003.png",
                                                                            "renamed.png"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_manifest_that_lists_a_file_twice(tmp_path, backend, request):
    inp = tmp_path / "in"
    make_inputs(inp, 2)
    manifest = tmp_path / "night.csv"
    manifest.write_text("image\nin/part_000.png\nin/part_001.png\nin/part_000.png\n")
    out = tmp_path / "out"
    url, extra = backend_url(backend, out, request)
    r = audit("-c", config(tmp_path), manifest, "--out", out, *extra)
    assert r.returncode == 0, r.stderr
    assert len(csv_rows(out)) == 2 and store_counts(url)["inputs"] == 2
    (tmp_path / "latin1.csv").write_bytes("image\nin/caf\xe9.png\n".encode("latin-1"))
    bad = audit("-c", config(tmp_path), tmp_path / "latin1.csv", "--out", tmp_path / "o2")
    assert bad.returncode == 2 and "not UTF-8" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_deleted_result_files_are_made_again(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 3)
    cfg = config(tmp_path)
    out = tmp_path / "out"
    assert audit("-c", cfg, inp, "--out", out).returncode == 0
    shutil.rmtree(out / "images")
    r = audit("-c", cfg, inp, "--out", out)
    assert r.returncode == 0 and "3 explained now" in r.stdout, r.stdout
    assert_artifacts_match_store(sqlite_url(out))
    counts = store_counts(sqlite_url(out))
    assert counts["results"] == 3 and counts["artifacts"] == 15


def test_folder_names_with_url_syntax_get_their_own_store(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 1)
    cfg = config(tmp_path)
    for name in ("q?1", "q?2", "p%41", "h#1"):
        r = audit("-c", cfg, inp, "--out", tmp_path / name)
        assert r.returncode == 0 and "1 explained now" in r.stdout, (name, r.stdout, r.stderr)
        assert (tmp_path / name / "results.db").is_file() and len(os.listdir(tmp_path / name / "images")) == 5
        assert inspector("report", "--store", tmp_path / name,
                         "--out", tmp_path / (name + "-v")).returncode == 0
    assert sorted(os.listdir(tmp_path)) == sorted(["in", "config_0.yaml", "q?1", "q?2", "p%41", "h#1",
                                                   "q?1-v", "q?2-v", "p%41-v", "h#1-v"])


def test_merges_never_write_into_a_part_or_mix_audits(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 4)
    cfg, fast = config(tmp_path), config(tmp_path, method={"preset": "fast"})
    for i in range(2):
        assert audit("-c", cfg, inp, "--out", tmp_path / f"s{i}", "--shard", f"{i}/2").returncode == 0
        assert audit("-c", fast, inp, "--out", tmp_path / f"f{i}", "--shard", f"{i}/2").returncode == 0
    spelled = "sqlite:///" + str(tmp_path) + "//s0/../s0/results.db"
    r = inspector("audit-merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m",
                  "--store", spelled)
    assert r.returncode == 2 and "is the part" in r.stderr, r.stderr
    assert inspector("audit-merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m").returncode == 0
    r = inspector("audit-merge", tmp_path / "f0", tmp_path / "f1", "--out", tmp_path / "m")
    assert r.returncode == 2 and "other settings" in r.stderr, r.stderr
    merged = jsonl_rows(tmp_path / "m")
    for row in merged:  # each copied sidecar describes the image of its row
        with open(tmp_path / "m" / row["artifacts"]["sidecar"]) as f:
            assert json.load(f)["image_sha256"] == row["image_sha256"]
    os.unlink(tmp_path / "s1" / jsonl_rows(tmp_path / "s1")[0]["artifacts"]["npz"])
    r = inspector("audit-merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m2")
    assert r.returncode == 2 and "missing; run that shard's audit again" in r.stderr, r.stderr


def test_a_store_on_a_read_only_file_system_can_be_reported_and_merged(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 2)
    ro = tmp_path / "ro"
    with tmpfs(ro, "16m"):
        assert audit("-c", config(tmp_path), inp, "--out", ro / "a").returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        r = inspector("report", "--store", ro / "a", "--out", tmp_path / "v")
        assert r.returncode == 0 and "2 image(s)" in r.stdout, r.stderr
        r = inspector("audit-merge", ro / "a", "--out", tmp_path / "m")
        assert r.returncode == 0, r.stderr
        assert_artifacts_match_store(sqlite_url(tmp_path / "m"))


def test_fifos_and_symbolic_links_in_the_input(tmp_path):
    from inspector.jobs.audit import list_inputs

    inp = tmp_path / "in"
    make_inputs(inp / "real", 2)
    os.mkfifo(inp / "camera.png")  # would block a reader forever
    os.symlink(inp / "real", inp / "linked")  # a folder linked in: followed once
    os.symlink(inp, inp / "real" / "loop")  # a loop: not followed forever
    os.symlink(inp / "nowhere.png", inp / "dangling.png")  # recorded as unreadable
    keys = [k for k, _ in list_inputs(str(inp))]
    assert keys == ["dangling.png", "linked/part_000.png", "linked/part_001.png"] or \
        keys == ["dangling.png", "real/part_000.png", "real/part_001.png"], keys


def test_a_claim_taken_over_leaves_the_new_owners_files(tmp_path):
    """A process paused past the heartbeat limit finds its claim taken over: it must not remove the files
    the new owner wrote under the same names."""
    from inspector.engine.inspector import Inspector
    from inspector.jobs.record import Outcome, _commit, _explain, _Held, explain_and_record, start_job
    from inspector.store import ClaimLost, ResultKey, Store

    make_inputs(tmp_path / "in", 1)
    path = str(tmp_path / "in" / "part_000.png")
    with open(path, "rb") as f:
        data = f.read()
    sha = hashlib.sha256(data).hexdigest()
    insp = Inspector.from_config(config(tmp_path))
    (tmp_path / "out").mkdir()
    with Store(sqlite_url(tmp_path / "out")) as store:
        paused, other = (start_job(insp, store, kind="explain", out_dir=str(tmp_path / "out"))
                         for _ in range(2))
        store.add_image(sha, len(data), path)
        claim = store.claim(ResultKey(sha, paused.settings_hash, paused.target_key), paused.run_id, path)
        store.end_run(paused.run_id, "stopped")  # what a missed heartbeat looks like to the other run
        assert explain_and_record(other, path).state == "explained"
        outcome = Outcome(path, "explained", claim.result_id, sha)
        key = ResultKey(sha, paused.settings_hash, paused.target_key)
        files = _explain(paused, [_Held(outcome, claim, key, data)])[path]
        with pytest.raises(ClaimLost, match="taken over"):
            _commit(paused, claim, outcome, files)
        assert store.result(claim.result_id)["run_id"] == other.run_id
    assert_artifacts_match_store(sqlite_url(tmp_path / "out"))


def test_an_image_whose_files_cannot_be_encoded_is_a_failed_image_not_a_stuck_run(tmp_path):
    """A 66000 px wide image passes max_pixels but no JPEG can hold it: that image fails, the run goes on."""
    inp = tmp_path / "in"
    make_inputs(inp, 2)
    wide = np.tile(cv2.resize(sample(3, 0).image, (600, 40)), (1, 110, 1))  # 40 x 66000
    cv2.imwrite(str(inp / "wide.png"), cv2.cvtColor(wide, cv2.COLOR_RGB2BGR))
    cfg = config(tmp_path, outputs={"overlay": "jpg"})
    out = tmp_path / "out"
    for _ in range(2):  # and the next run does not get stuck on it either
        r = audit("-c", cfg, inp, "--out", out)
        assert r.returncode == 1, r.stderr
        rows = {os.path.basename(row["path"]): row for row in csv_rows(out)}
        assert rows["wide.png"]["status"] == "failed" and "error" in rows["wide.png"]["error"].lower()
        assert [rows[f"part_00{i}.png"]["status"] for i in range(2)] == ["done", "done"]
    counts = store_counts(sqlite_url(out))
    assert counts["results"] == 3 and counts["done"] == 2


def test_an_output_folder_whose_name_is_not_utf8(tmp_path):
    inp = tmp_path / "in"
    make_inputs(inp, 1)
    out = os.path.join(os.fsencode(str(tmp_path)), b"out \xe9\xff")
    r = audit("-c", config(tmp_path), inp, "--out", out)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(os.path.join(out, b"results.db"))
    assert len(os.listdir(os.path.join(out, b"images"))) == 5
    again = audit("-c", config(tmp_path), inp, "--out", out)
    assert again.returncode == 0 and "1 found in the store" in again.stdout
