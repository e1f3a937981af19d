"""The results store on SQLite and on a real PostgreSQL server: claims, the unique result per content +
settings + target under concurrent writers, takeover of dead claims, release, lossless paths, schema
upgrades, read-only opening."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from inspector.common.identity import Identity
from inspector.errors import VerdictConflict
from inspector.store import SCHEMA_VERSION, ResultKey, Store, StoreError
from inspector.store import store as store_module
from inspector.store.db import utcnow
from inspector.store.schema import metadata, parts, results, reviews, runs, schema_version

KEY = ResultKey("a" * 64, "s" * 64, "top")


def new_run(store: Store, kind: str = "audit") -> int:
    return store.start_run(kind=kind, scope="scope", settings_hash=KEY.settings_hash, model_sha256="m" * 64,
                           config={"x": 1}, out_dir="/tmp/out")


def done_fields(prediction: int = 3) -> dict:
    return {"status": "done", "prediction": prediction, "prediction_name": f"class{prediction}",
            "confidence": 0.5, "error": None, "retryable": None}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def count(store: Store, table: sa.Table) -> int:
    with store.begin() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_claim_finish_and_the_unique_result(store_url):
    with Store(store_url) as store:
        store.add_image(KEY.image_sha256, 10, "/a/x.png")
        store.add_image(KEY.image_sha256, 10, "/b/y.png")  # same bytes, other name: still one image
        run_a, run_b = new_run(store), new_run(store)
        first = store.claim(KEY, run_a, "/a/x.png")
        assert first.state == "new" and first.held
        assert store.claim(KEY, run_b, "/b/y.png").state == "busy"  # run_a's process (this one) is alive
        store.finish(first, run_a, done_fields(), [], scope="scope", path="/a/x.png",
                     image_sha256=KEY.image_sha256)
        again = store.claim(KEY, run_b, "/b/y.png")
        assert (again.state, again.result_id) == ("done", first.result_id)
        other_target = store.claim(ResultKey(KEY.image_sha256, KEY.settings_hash, "class:1"), run_b,
                                   "/b/y.png")
        assert other_target.state == "new" and other_target.result_id != first.result_id
        assert count(store, results) == 2
        with pytest.raises(StoreError), store.begin() as conn:  # the database refuses a second row for a key
            conn.execute(sa.insert(results).values(
                image_sha256=KEY.image_sha256, settings_hash=KEY.settings_hash, target_key="top",
                run_id=run_b, source_path="x", source_path_bytes=b"x", status="done", attempts=1,
                claimed_at=utcnow()))


def test_failed_results_are_retried_and_a_release_restores_them(store_url):
    with Store(store_url) as store:
        store.add_image(KEY.image_sha256, 10, "/a/x.png")
        run_a, run_b = new_run(store), new_run(store)
        claim = store.claim(KEY, run_a, "/a/x.png")
        store.finish(claim, run_a, {"status": "failed", "error": "boom", "retryable": True}, scope="scope",
                     path="/a/x.png", image_sha256=KEY.image_sha256)
        assert store.claim(KEY, run_b, "/a/x.png", retry=False).state == "failed"
        retry = store.claim(KEY, run_b, "/a/x.png")
        assert retry.state == "retry"
        store.release(retry, run_b)  # e.g. the disk filled up while writing its outputs
        row = store.result(claim.result_id)
        assert (row["status"], row["error"], row["run_id"], row["attempts"]) == ("failed", "boom", run_a, 1)
        store.add_image("b" * 64, 5, "/c.png")
        new = store.claim(ResultKey("b" * 64, KEY.settings_hash, "top"), run_b, "/c.png")
        store.release(new, run_b)
        assert count(store, results) == 1  # a released new claim leaves no row


def test_claims_of_dead_or_silent_runs_are_taken_over(store_url):
    with Store(store_url) as store:
        store.add_image(KEY.image_sha256, 10, "/a/x.png")
        killed, remote, alive, me = (new_run(store) for _ in range(4))
        with store.begin() as conn:
            conn.execute(sa.update(runs).where(runs.c.id == killed).values(pid=dead_pid()))
            conn.execute(sa.update(runs).where(runs.c.id == remote).values(
                host="other-machine",
                heartbeat_at=utcnow() - store_module.STALE_AFTER - timedelta(seconds=5)))
            conn.execute(sa.update(runs).where(runs.c.id == alive).values(host="other-machine"))
        for owner, expected in ((killed, "takeover"), (remote, "takeover"), (alive, "busy")):
            key = ResultKey(KEY.image_sha256, KEY.settings_hash, f"class:{owner}")
            assert store.claim(key, owner, "/a/x.png").state == "new"
            assert store.claim(key, me, "/a/x.png").state == expected, owner
        slow = new_run(store)  # this machine, a live process, an old heartbeat (a long lock wait): not dead
        with store.begin() as conn:
            conn.execute(sa.update(runs).where(runs.c.id == slow).values(
                heartbeat_at=utcnow() - store_module.STALE_AFTER * 10))
        key = ResultKey(KEY.image_sha256, KEY.settings_hash, "slow")
        assert store.claim(key, slow, "/a/x.png").state == "new"
        assert store.claim(key, me, "/a/x.png").state == "busy"
        ended = new_run(store)
        key = ResultKey(KEY.image_sha256, KEY.settings_hash, "ended")
        store.claim(key, ended, "/a/x.png")
        store.end_run(ended, "stopped")
        assert store.claim(key, me, "/a/x.png").state == "takeover"


def test_dead_runs_of_this_machine_are_ended_after_their_process_exits(store_url):
    """The runs of a Ray audit's workers: ended once their process is gone, waiting ``grace`` for one that is
    still exiting; live ones, other machines' and earlier runs are left alone."""
    with Store(store_url) as store:
        before, dead, exiting, alive, remote = (new_run(store) for _ in range(5))
        slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
        with store.begin() as conn:
            for run_id, pid in ((before, dead_pid()), (dead, dead_pid()), (exiting, slow.pid)):
                conn.execute(sa.update(runs).where(runs.c.id == run_id).values(pid=pid))
            conn.execute(sa.update(runs).where(runs.c.id == remote).values(host="other", pid=dead_pid()))
        assert store.end_dead_runs("scope", before, "finished") == 1  # no grace: the exiting one is alive
        assert store.run(exiting)["ended_at"] is None
        waited_from = time.monotonic()
        assert store.end_dead_runs("scope", before, "stopped", grace=0.5) == 0  # alive for the whole grace
        assert time.monotonic() - waited_from >= 0.5
        assert store.end_dead_runs("scope", before, "stopped", grace=10) == 1  # waits for it to exit
        slow.wait()
        states = {run_id: (store.run(run_id)["status"], store.run(run_id)["ended_at"] is None)
                  for run_id in (before, dead, exiting, alive, remote)}
        assert states == {before: ("running", True), dead: ("finished", False), exiting: ("stopped", False),
                          alive: ("running", True), remote: ("running", True)}


def _claim_in_process(url: str, run_id: int, barrier, queue) -> None:
    store = Store(url)
    store.add_image(KEY.image_sha256, 10, f"/p{run_id}.png")
    barrier.wait()
    claim = store.claim(KEY, run_id, f"/p{run_id}.png")
    if claim.held:
        store.finish(claim, run_id, done_fields(run_id), scope="scope", path=f"/p{run_id}.png",
                     image_sha256=KEY.image_sha256)
    queue.put(claim.state)
    store.close()


def test_concurrent_processes_write_one_result(store_url):
    with Store(store_url) as store:
        run_ids = [new_run(store) for _ in range(6)]
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(len(run_ids)), ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(store_url, r, barrier, queue)) for r in run_ids]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    states = sorted(queue.get(timeout=5) for _ in procs)
    assert states.count("new") == 1 and set(states) <= {"new", "busy", "done"}, states
    with Store(store_url) as store:
        assert count(store, results) == 1


def test_paths_that_are_not_utf8_are_kept_byte_for_byte(store_url):
    raw = b"/line3/lot\xff\xfe #7/caf\xe9.png"
    path = os.fsdecode(raw)  # what os.listdir hands Python for such a name
    with Store(store_url) as store:
        store.add_image(KEY.image_sha256, 10, path)
        run = new_run(store)
        claim = store.claim(KEY, run, path)
        store.finish(claim, run, done_fields(), scope="scope", path=path, image_sha256=KEY.image_sha256)
        row = store.result(claim.result_id)
    assert bytes(row["source_path_bytes"]) == raw
    assert os.fsdecode(bytes(row["source_path_bytes"])) == path
    assert row["source_path"] == "/line3/lot\\xff\\xfe #7/caf\\xe9.png"


LATER_TABLES = ("reviews", "users", "sessions", "login_failures", "detections", "parts", "outbox",
                "outbox_cursors")  # made by the upgrades to 2-8


def _back_to_version_1(conn: sa.Connection) -> None:
    for name in ("outbox_cursors", "outbox", "parts", "detections", "login_failures", "sessions", "users",
                 "reviews"):
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_results_finished"))
    conn.execute(sa.update(schema_version).values(version=1))


def _make_version_1(url: str) -> None:
    """A store as version 1 of the schema made it: runs, images, results, artifacts, inputs; version 1."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        metadata.create_all(conn, tables=[t for t in metadata.sorted_tables if t.name not in LATER_TABLES])
        conn.execute(sa.insert(schema_version).values(version=1))
        _back_to_version_1(conn)
    engine.dispose()


def test_a_version_1_store_is_upgraded_with_its_data(store_url):
    _make_version_1(store_url)
    with Store(store_url) as store:
        run = new_run(store)
        store.add_image(KEY.image_sha256, 10, "/x.png")
        claim = store.claim(KEY, run, "/x.png")
        store.finish(claim, run, done_fields(), scope="scope", path="/x.png", image_sha256=KEY.image_sha256)
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:  # put it back to version 1, with a result in it
        _back_to_version_1(conn)
    engine.dispose()
    with Store(store_url) as store:
        with store.begin() as conn:
            assert conn.execute(sa.select(schema_version.c.version)).scalar_one() == SCHEMA_VERSION == 8
            assert "ix_results_finished" in {i["name"] for i in sa.inspect(conn).get_indexes("results")}
            tables = set(sa.inspect(conn).get_table_names())
            assert {"users", "sessions", "login_failures", "detections"} <= tables
        assert store.result(claim.result_id)["prediction_name"] == "class3"
        assert store.result(claim.result_id)["detections"] == []
        # a detector's result, recorded into the upgraded store with its detections
        key = ResultKey("d" * 64, "s" * 64, "top")
        store.add_image(key.image_sha256, 10, "/y.png")
        held = store.claim(key, run, "/y.png")
        box = {"class_index": 1, "class_name": "dent", "x1": 1.0, "y1": 2.0, "x2": 30.5, "y2": 40.0,
               "evidence_in_box": 0.7, "evidence_peak": 1.0, "regions": [], "masks": 12}
        store.finish(held, run, {**done_fields(), "detections": [{"position": 1, "score": 0.9, **box},
                                                                  {"position": 2, "score": 0.4, **box}]},
                     scope="scope", path="/y.png", image_sha256=key.image_sha256)
        assert [(d["position"], d["score"], d["x2"]) for d in store.result(held.result_id)["detections"]] == \
            [(1, 0.9, 30.5), (2, 0.4, 30.5)]
        first = store.add_review(claim.result_id, verdict="overrule", label="ok", reviewer="operator 7")
        second = store.add_review(claim.result_id, verdict="confirm", label="ok", reviewer="operator 9")
        assert count(store, reviews) == 2
        assert (first["previous_label"], second["previous_label"]) == ("class3", "ok")


def test_newer_or_foreign_databases_are_refused(store_url):
    Store(store_url).close()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.update(schema_version).values(version=SCHEMA_VERSION + 1))
    engine.dispose()
    with pytest.raises(StoreError, match="newer sise-inspector"):
        Store(store_url)


def test_readonly_opening_never_writes(tmp_path):
    url = "sqlite:///" + str(tmp_path / "results.db")
    with Store(url) as store:
        new_run(store)
    before = hashlib.sha256((tmp_path / "results.db").read_bytes()).hexdigest()
    with Store(url, readonly=True) as store:
        assert store.run(1)["kind"] == "audit"
        with pytest.raises(StoreError):
            new_run(store)
    assert hashlib.sha256((tmp_path / "results.db").read_bytes()).hexdigest() == before
    with pytest.raises(StoreError, match="no results store"):
        Store("sqlite:///" + str(tmp_path / "missing.db"), readonly=True)
    with pytest.raises(StoreError, match="not a database URL"):
        Store("results")


def test_heartbeats_advance_while_a_run_works(store_url):
    with Store(store_url) as store:
        run = new_run(store)
        first = store.run(run)["heartbeat_at"]
        with store.heartbeats(run, every=0.05):
            deadline = time.time() + 10
            while store.run(run)["heartbeat_at"] == first and time.time() < deadline:
                time.sleep(0.05)
        assert store.run(run)["heartbeat_at"] > first


def explained_result(store: Store) -> int:
    """KEY recorded as explained (prediction class3) by a new run; its result id."""
    run = new_run(store)
    store.add_image(KEY.image_sha256, 10, "/x.png")
    claim = store.claim(KEY, run, "/x.png")
    store.finish(claim, run, done_fields(), scope="scope", path="/x.png", image_sha256=KEY.image_sha256)
    return claim.result_id


def _review_in_process(url: str, result_id: int, reviewer: str, labels: list, barrier, queue) -> None:
    store = Store(url)
    barrier.wait()
    for label in labels:
        store.add_review(result_id, verdict="overrule", label=label, reviewer=reviewer)
    queue.put(reviewer)
    store.close()


def test_reviewers_at_once_each_see_the_others_verdict_as_previous(store_url):
    """Four processes append five verdicts each to one result at the same moment: all 20 rows are kept,
    and each row's previous label is the label of the row before it (none read a stale "previous")."""
    with Store(store_url) as store:
        result_id = explained_result(store)
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_review_in_process,
                         args=(store_url, result_id, f"r{k}", [f"r{k}-{i}" for i in range(5)], barrier,
                               queue))
             for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with Store(store_url) as store, store.begin() as conn:
        rows = conn.execute(sa.select(reviews.c.label, reviews.c.previous_label).order_by(reviews.c.id)).all()
    assert len(rows) == 20 and len({r.label for r in rows}) == 20
    assert rows[0].previous_label == "class3"  # the model's label came first
    assert all(rows[i].previous_label == rows[i - 1].label for i in range(1, 20))


def _rounds_in_process(url: str, result_id: int, reviewer: str, rounds: int, barrier, queue) -> None:
    """Each round: read the part's newest verdict, wait for the other process, then give a verdict that
    says it saw that one."""
    store = Store(url)
    outcomes = []
    for r in range(rounds):
        barrier.wait()
        with store.read() as conn:
            seen = conn.execute(sa.select(sa.func.max(reviews.c.id))
                                .where(reviews.c.result_id == result_id)).scalar() or 0
        barrier.wait()  # both have read the same newest verdict: now both give theirs at once
        try:
            store.add_review(result_id, verdict="overrule", label=f"{reviewer}-{r}", reviewer=reviewer,
                             seen=seen)
            outcomes.append("recorded")
        except VerdictConflict:
            outcomes.append("refused")
    queue.put((reviewer, outcomes))
    store.close()


def test_of_two_verdicts_given_at_once_on_what_both_saw_exactly_one_is_recorded(store_url):
    """50 rounds of two processes giving a verdict on one part at the same moment, each having seen the
    same newest verdict: the check that it is still the newest runs in the transaction that inserts, so
    each round records exactly one (the other is refused) and every row's previous label is the label of
    the row before it."""
    rounds = 50
    with Store(store_url) as store:
        result_id = explained_result(store)
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_rounds_in_process,
                         args=(store_url, result_id, name, rounds, barrier, queue))
             for name in ("rita", "rob")]
    for p in procs:
        p.start()
    outcomes = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r in range(rounds):
        assert sorted(outcomes[name][r] for name in outcomes) == ["recorded", "refused"], r
    with Store(store_url) as store, store.begin() as conn:
        rows = conn.execute(sa.select(reviews.c.label, reviews.c.previous_label).order_by(reviews.c.id)).all()
    assert len(rows) == rounds
    assert [int(row.label.split("-")[1]) for row in rows] == list(range(rounds))  # one per round, in order
    assert rows[0].previous_label == "class3"
    assert all(rows[i].previous_label == rows[i - 1].label for i in range(1, rounds))


def test_the_same_verdict_again_moments_later_is_not_recorded_twice(store_url, monkeypatch):
    with Store(store_url) as store:
        result_id = explained_result(store)
        first = store.add_review(result_id, verdict="confirm", label="class3", reviewer="rita")
        with pytest.raises(VerdictConflict, match=r"you gave this verdict \(confirm -> class3\) \d+ s ago"):
            store.add_review(result_id, verdict="confirm", label="class3", reviewer="rita")
        with pytest.raises(VerdictConflict, match="rita gave a verdict .* after the one you saw") as e:
            store.add_review(result_id, verdict="inconclusive", reviewer="rob", seen=0)
        assert e.value.newest["id"] == first["id"]
        again = {"verdict": "confirm", "label": "class3"}
        store.add_review(result_id, reviewer="rob", **again)  # another person
        store.add_review(result_id, reviewer="rita", **again)  # hers is no longer the newest
        monkeypatch.setattr(store_module, "REPEAT_SECONDS", 0.0)
        store.add_review(result_id, reviewer="rita", **again)  # after the window
        with store.begin() as conn:
            names = [r.reviewer for r in conn.execute(sa.select(reviews.c.reviewer).order_by(reviews.c.id))]
        assert names == ["rita", "rob", "rita", "rita"]


def _history(store: Store, result_id: int) -> list[tuple]:
    with store.begin() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(reviews.c.reviewer, reviews.c.verdict, reviews.c.label, reviews.c.previous_label,
                      reviews.c.undoes).where(reviews.c.result_id == result_id).order_by(reviews.c.id))]


def _standing_label(store: Store, result_id: int):
    """The label in force, read the way the station's queries read it (newest standing verdict)."""
    from inspector.station import queries

    row = queries.part(store, result_id)
    return row["verdict"], row["review_label"]


def test_undo_appends_a_row_that_restores_the_label_before(store_url):
    """u undoes the reviewer's newest standing verdict: a new row names it (nothing deleted); the label
    before comes back (no verdict at all after undoing a first one: the part is unreviewed again, in the
    queue's filter too); pressed again it undoes the one before; someone else's later verdict, or the
    time window, refuse it."""
    from inspector.station import queries

    with Store(store_url) as store:
        part = explained_result(store)
        first = store.add_review(part, verdict="overrule", label="class1", reviewer="rita")
        second = store.add_review(part, verdict="confirm", label="class1", reviewer="rita")
        undo = store.undo_review("rita")
        assert (undo["undoes"], undo["label"], undo["previous_label"]) == (second["id"], "class1", "class1")
        assert _standing_label(store, part) == ("overrule", "class1")
        store.undo_review("rita")  # the one before: back to no verdict
        assert _standing_label(store, part) == (None, None)
        unreviewed = queries.queue(store, queries.Filters(unreviewed=True))[0]
        assert [r["id"] for r in unreviewed] == [part]
        with pytest.raises(VerdictConflict, match="no verdict to undo"):
            store.undo_review("rita")
        # the next verdict's previous label skips the undone ones: the model's label is in force again
        third = store.add_review(part, verdict="inconclusive", reviewer="rita")
        assert third["previous_label"] == "class3"
        store.add_review(part, verdict="confirm", label="class3", reviewer="rob")
        with pytest.raises(VerdictConflict, match=f"rob gave a verdict on part #{part} after yours"):
            store.undo_review("rita")
        with pytest.raises(VerdictConflict, match="longer than the 0-minute undo window"):
            store.undo_review("rob", within=0.0)
        assert _history(store, part) == [
            ("rita", "overrule", "class1", "class3", None),
            ("rita", "confirm", "class1", "class1", None),
            ("rita", "undo", "class1", "class1", second["id"]),
            ("rita", "undo", None, "class1", first["id"]),
            ("rita", "inconclusive", None, "class3", None),
            ("rob", "confirm", "class3", None, None),
        ]
        exported = {r["id"]: r["review_label"] for r in queries.reviewed_parts(store)}
        assert exported == {part: "class3"}


def test_failed_parts_take_actions_not_verdicts(store_url):
    with Store(store_url) as store:
        run = new_run(store)
        store.add_image(KEY.image_sha256, 10, "/x.png")
        claim = store.claim(KEY, run, "/x.png")
        store.finish(claim, run, {"status": "failed", "error": "truncated file", "retryable": True},
                     scope="scope", path="/x.png", image_sha256=KEY.image_sha256)
        with pytest.raises(StoreError, match="'confirm' cannot be recorded \\(its status is failed\\)"):
            store.add_review(claim.result_id, verdict="confirm", label="class3", reviewer="rita")
        store.add_review(claim.result_id, verdict="acknowledge", reviewer="rita", note="camera cable")
        with pytest.raises(VerdictConflict, match="not recorded twice"):
            store.add_review(claim.result_id, verdict="acknowledge", reviewer="rita")
        with pytest.raises(VerdictConflict, match="no verdict to undo"):  # an action is not a verdict
            store.undo_review("rita")
        from inspector.station import queries

        failed = queries.queue(store, queries.Filters(failed=True))[0]
        assert [(r["id"], r["acknowledged"], r["verdict"]) for r in failed] == [
            (claim.result_id, "rita", None)]
        assert queries.queue(store, queries.Filters(unreviewed=True))[0] == []


def test_a_version_5_store_with_verdicts_is_upgraded_to_undo(store_url):
    with Store(store_url) as store:
        part = explained_result(store)
        store.add_review(part, verdict="overrule", label="class1", reviewer="rita")
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:  # as version 5 made it: no reviews.undoes (and no parts)
        conn.execute(sa.text("ALTER TABLE reviews DROP COLUMN undoes"))
        for later in ("outbox_cursors", "outbox", "parts"):
            conn.execute(sa.text(f"DROP TABLE {later}"))
        conn.execute(sa.update(schema_version).values(version=5))
    engine.dispose()
    with Store(store_url) as store:
        assert _history(store, part) == [("rita", "overrule", "class1", "class3", None)]
        store.undo_review("rita")
        assert _standing_label(store, part) == (None, None)


@pytest.mark.parametrize("stored", ["'abc'", "0", "-3", "2.5", "two rows", "no row"])
def test_a_schema_version_that_is_not_a_known_number_is_refused_in_one_line(tmp_path, stored):
    """Hand-edited or foreign stores: no upgrade step runs on them (0 re-ran the newest step, -3 ran all
    of them again over existing tables, 'abc' was an unexpected TypeError)."""
    url = "sqlite:///" + str(tmp_path / "results.db")
    Store(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if stored == "two rows":
            conn.execute(sa.text("INSERT INTO schema_version (version) VALUES (1)"))
        elif stored == "no row":
            conn.execute(sa.text("DELETE FROM schema_version"))
        else:
            conn.execute(sa.text(f"UPDATE schema_version SET version = {stored}"))
        before = sorted(sa.inspect(conn).get_table_names())
    engine.dispose()
    for readonly in (False, True):
        with pytest.raises(StoreError) as caught:
            Store(url, readonly=readonly)
        message = str(caught.value)
        assert "schema_version table holds" in message and "\n" not in message, message
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert sorted(sa.inspect(conn).get_table_names()) == before  # nothing was run on it
    engine.dispose()


def test_runs_that_ended_without_a_word_are_marked_interrupted_when_the_next_run_starts(store_url):
    """A run killed, or cut off from the store when it stopped, stays 'running' in the runs table (and the
    report) until the next run starts: then it is 'interrupted'. Live runs, here and elsewhere, stay."""
    with Store(store_url) as store:
        killed, elsewhere_dead, elsewhere_alive, live = (new_run(store) for _ in range(4))
        with store.begin() as conn:
            now = store_module.db_now(conn)
            conn.execute(sa.update(runs).where(runs.c.id == killed).values(pid=dead_pid()))
            conn.execute(sa.update(runs).where(runs.c.id.in_([elsewhere_dead, elsewhere_alive]))
                         .values(host="another-machine 1234 99"))
            conn.execute(sa.update(runs).where(runs.c.id == elsewhere_dead)
                         .values(heartbeat_at=now - store_module.STALE_AFTER - timedelta(seconds=5)))
        new_run(store)
        status = {r: store.run(r) for r in (killed, elsewhere_dead, elsewhere_alive, live)}
    assert [status[r]["status"] for r in (killed, elsewhere_dead)] == ["interrupted"] * 2
    assert all(status[r]["ended_at"] is not None and "ended without noting it" in status[r]["message"]
               for r in (killed, elsewhere_dead))
    assert [status[r]["status"] for r in (elsewhere_alive, live)] == ["running"] * 2
    assert all(status[r]["ended_at"] is None for r in (elsewhere_alive, live))


def test_a_version_6_store_gets_one_part_per_finished_result(store_url):
    """The upgrade to parts: each done or failed result becomes one part without identity, arrived when
    it finished, from its source path (bytes kept); a running claim gets none; verdicts stay."""
    with Store(store_url) as store:
        done = explained_result(store)
        store.add_review(done, verdict="confirm", label="class3", reviewer="rita")
        run = new_run(store)
        raw = b"/line3/caf\xe9.png"
        for key, fields in ((ResultKey("b" * 64, "s" * 64, "top"), {"status": "failed", "error": "bad"}),
                            (ResultKey("c" * 64, "s" * 64, "top"), None)):
            store.add_image(key.image_sha256, 10, os.fsdecode(raw))
            claim = store.claim(key, run, os.fsdecode(raw))
            if fields:
                store.finish(claim, run, fields, scope="scope", path=os.fsdecode(raw),
                             image_sha256=key.image_sha256)
                failed = claim.result_id
        with store.begin() as conn:
            finished = dict(conn.execute(sa.select(results.c.id, results.c.finished_at)).all())
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        for later in ("outbox_cursors", "outbox", "parts"):
            conn.execute(sa.text(f"DROP TABLE {later}"))
        conn.execute(sa.update(schema_version).values(version=6))
    engine.dispose()
    with Store(store_url) as store, store.begin() as conn:
        rows = conn.execute(sa.select(parts).order_by(parts.c.result_id)).mappings().all()
        assert [r["result_id"] for r in rows] == [done, failed]
        assert all(r["serial"] is None and r["identity_key"] == Identity().key() for r in rows)
        assert bytes(rows[1]["source_path_bytes"]) == raw
        assert [store_module.as_utc(r["arrived_at"]) for r in rows] == [
            store_module.as_utc(finished[done]), store_module.as_utc(finished[failed])]
        assert conn.execute(sa.select(sa.func.count()).select_from(reviews)).scalar_one() == 1


def test_the_same_bytes_as_two_serials_are_two_parts_of_one_result(store_url):
    with Store(store_url) as store:
        result_id = explained_result(store)
        run = new_run(store)
        a = store.add_part(result_id, run, "/in/A1.png", Identity(serial="A1", line="L3", tags=("rework",)))
        b = store.add_part(result_id, run, "/in/B7.png", Identity(serial="B7", line="L3"))
        again = store.add_part(result_id, run, "/in/A1-resent.png", Identity(serial="A1", line="L3",
                                                                            tags=("rework",)))
        assert a != b and again == a
        with store.begin() as conn:
            rows = conn.execute(sa.select(parts.c.serial, parts.c.tags, parts.c.source_path)
                                .where(parts.c.result_id == result_id).order_by(parts.c.id)).all()
        assert [tuple(r) for r in rows] == [(None, None, "/x.png"), ("A1", ["rework"], "/in/A1.png"),
                                            ("B7", None, "/in/B7.png")]
