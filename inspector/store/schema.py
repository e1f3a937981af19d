"""The results store's tables (SQLAlchemy Core) and the steps that bring a store up to date.

Version history (``schema_version.version``):
    1. runs, images, results, artifacts, inputs.
    2. reviews: append-only operator verdicts on a result (who, when, verdict, note).
    3. the review station: users (KDF-hashed passwords, roles), login sessions, each verdict's previous
       label, and an index for the newest-first queue.
    4. login_failures: wrong passwords by user name and client address, so that the lock-out holds across
       stations sharing the store and across restarts.
    5. detections: a detector's result holds one row per detection it explains (box, class, score, the
       evidence of its own map).
    6. reviews.undoes: an ``undo`` row names the verdict it takes back (rows are never deleted); failed
       parts get action rows (``acknowledge``, ``explain_again``) in the same table.
    7. parts: each arrival of an image with its identity on the line (serial, line, camera, product,
       tags); the same bytes under two serials are two parts sharing one result. Results recorded before
       get one part without identity each.
    8. outbox and outbox_cursors: the messages for the line's systems (a part arrived, a verdict), written
       with what they report, and each sink's place in them.

A new store is created at the newest version; one made by an older version is upgraded step by step
when it is opened for writing; a store made by
a newer version than this code is refused. Each step runs in one transaction under a lock (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock), so two processes opening a new store at once cannot
both create it.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from ..common.identity import Identity

metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),          # explain | audit | watch | merge | demo
    sa.Column("scope", sa.String(64), nullable=False),         # which inputs go together (an audit's series)
    sa.Column("settings_hash", sa.String(64), nullable=False),
    sa.Column("model_sha256", sa.String(64), nullable=False),
    sa.Column("config", sa.JSON, nullable=False),              # the resolved settings that went into the hash
    sa.Column("source", sa.Text),                              # input folder / manifest (display form)
    sa.Column("shard_index", sa.Integer, nullable=False, default=0),
    sa.Column("shard_count", sa.Integer, nullable=False, default=1),
    sa.Column("out_dir", sa.Text, nullable=False),             # artifacts are relative to this folder
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("tool_version", sa.String(64), nullable=False),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("heartbeat_at", TS, nullable=False),
    sa.Column("ended_at", TS),
    sa.Column("status", sa.String(16), nullable=False),        # running | finished | interrupted | stopped
    sa.Column("message", sa.Text),
    sa.Index("ix_runs_scope", "scope"),
)

images = sa.Table(
    "images", metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),     # of the file's bytes
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("first_path", sa.Text, nullable=False),          # display form (undecodable bytes escaped)
    sa.Column("first_path_bytes", sa.LargeBinary, nullable=False),  # exactly as the file system gave it
    sa.Column("first_seen_at", TS, nullable=False),
)

results = sa.Table(
    "results", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("image_sha256", sa.String(64), sa.ForeignKey("images.sha256"), nullable=False),
    sa.Column("settings_hash", sa.String(64), nullable=False),
    sa.Column("target_key", sa.String(80), nullable=False),   # top | class:<i> | weights:<sha256>
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),  # run that holds/finished it
    sa.Column("source_path", sa.Text, nullable=False),
    sa.Column("source_path_bytes", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),        # running | done | failed
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("prediction", sa.Integer),
    sa.Column("prediction_name", sa.Text),
    sa.Column("confidence", sa.Float),
    sa.Column("scores", sa.JSON),
    sa.Column("target", sa.Integer),
    sa.Column("target_name", sa.Text),
    sa.Column("regions", sa.JSON),
    sa.Column("region_count", sa.Integer),
    sa.Column("evidence_peak", sa.Float),
    sa.Column("evidence_mean", sa.Float),
    sa.Column("roi_inside", sa.Float),
    sa.Column("flagged", sa.Boolean),
    sa.Column("masks", sa.Integer),
    sa.Column("masks_per_layer", sa.JSON),
    sa.Column("timings", sa.JSON),
    sa.Column("seconds", sa.Float),
    sa.Column("versions", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Column("retryable", sa.Boolean),
    sa.Column("claimed_at", TS, nullable=False),
    sa.Column("finished_at", TS),
    sa.UniqueConstraint("image_sha256", "settings_hash", "target_key",
                        name="uq_results_image_settings_target"),
    sa.Index("ix_results_run", "run_id"),
)

artifacts = sa.Table(
    "artifacts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),          # npz | overlay | layers | sidecar
    sa.Column("path", sa.Text, nullable=False),                # relative to the run's out_dir
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("result_id", "kind", name="uq_artifacts_result_kind"),
)

inputs = sa.Table(
    "inputs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scope", sa.String(64), nullable=False),
    sa.Column("path", sa.Text, nullable=False),                # display form
    sa.Column("path_bytes", sa.LargeBinary, nullable=False),   # exactly as found
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),  # the run that last saw it
    sa.Column("image_sha256", sa.String(64)),                  # None until read (or unreadable)
    sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id")),
    sa.Column("error", sa.Text),                               # the file could not be read at all
    sa.Column("seen_at", TS, nullable=False),
    sa.UniqueConstraint("scope", "path_bytes", name="uq_inputs_scope_path"),
)

reviews = sa.Table(
    "reviews", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id"), nullable=False),
    sa.Column("verdict", sa.String(32), nullable=False),       # LABEL_VERDICTS or ACTIONS
    sa.Column("label", sa.Text),                               # the class the reviewer says it is
    sa.Column("reviewer", sa.Text, nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("previous_label", sa.Text),                      # the label in force before this verdict
    sa.Column("undoes", sa.Integer),                           # an undo row: the verdict it takes back
    sa.Index("ix_reviews_result", "result_id"),
)
EMPTY_IDENTITY_KEY = Identity().key()  # the part of an image that came without identity
parts = sa.Table(
    "parts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id", ondelete="CASCADE"), nullable=False),
    sa.Column("identity_key", sa.String(64), nullable=False),  # common.identity.Identity.key()
    sa.Column("serial", sa.String(200)),
    sa.Column("line", sa.String(200)),
    sa.Column("camera", sa.String(200)),
    sa.Column("product", sa.String(200)),
    sa.Column("tags", sa.JSON),                                 # list of texts (None: none)
    sa.Column("source_path", sa.Text, nullable=False),          # where this arrival's image was
    sa.Column("source_path_bytes", sa.LargeBinary, nullable=False),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id")),
    sa.Column("arrived_at", TS, nullable=False),
    sa.Column("note", sa.Text),                                 # what of the identity could not be read
    sa.UniqueConstraint("result_id", "identity_key", name="uq_parts_result_identity"),
    sa.Index("ix_parts_result", "result_id"),
    sa.Index("ix_parts_serial", "serial"),
)
outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),  # the message id consumers see
    sa.Column("kind", sa.String(16), nullable=False),          # result | verdict
    sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id", ondelete="CASCADE"), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),             # the message (store.outbox)
    sa.Column("created_at", TS, nullable=False),
)
outbox_cursors = sa.Table(
    "outbox_cursors", metadata,
    sa.Column("sink", sa.String(200), primary_key=True),        # mqtt:<url>/<topic> | webhook:<url>
    sa.Column("last_id", sa.Integer, nullable=False),          # the last message delivered
    sa.Column("holder", sa.String(300)),                       # the process that publishes now
    sa.Column("lease_until", TS),                              # ... until then, unless it renews
    sa.Column("updated_at", TS, nullable=False),
)
LABEL_VERDICTS = ("confirm", "overrule", "inconclusive")  # rows that give a part its label
ACTIONS = ("undo", "acknowledge", "explain_again")  # rows that record what was done, and give no label
FAILED_ACTIONS = ("acknowledge", "explain_again")  # what can be done with a part that failed to explain


def standing_reviews():
    """SELECT of the review rows that stand: label verdicts no undo row has taken back. A part's label is
    its newest standing verdict's; a part with none has no verdict (see also :func:`standing`)."""
    undo_rows = reviews.alias("undo_rows")
    undone = sa.select(undo_rows.c.undoes).where(undo_rows.c.undoes.is_not(None))
    return sa.select(reviews).where(reviews.c.verdict.in_(LABEL_VERDICTS), reviews.c.id.not_in(undone))


def standing(history: list[dict]) -> dict | None:
    """The newest standing verdict of a part's history (its rows, oldest first), or None."""
    undone = {h["undoes"] for h in history if h.get("undoes") is not None}
    kept = [h for h in history if h["verdict"] in LABEL_VERDICTS and h["id"] not in undone]
    return kept[-1] if kept else None
sa.Index("ix_results_finished", results.c.finished_at)

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("password_hash", sa.Text, nullable=False),       # scrypt$n$r$p$salt$hash (hex)
    sa.Column("role", sa.String(16), nullable=False),          # viewer | reviewer | admin
    sa.Column("created_at", TS, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
)

sessions = sa.Table(
    "sessions", metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),  # the cookie's token itself is never stored
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
)


login_failures = sa.Table(
    "login_failures", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(200), nullable=False),     # as typed (cut to 200 characters)
    sa.Column("address", sa.String(64)),                        # the client's IP address, if known
    sa.Column("failed_at", TS, nullable=False),                 # the database's clock
    sa.Index("ix_login_failures_username", "username", "failed_at"),
    sa.Index("ix_login_failures_address", "address", "failed_at"),
)

detections = sa.Table(
    "detections", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id", ondelete="CASCADE"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),         # 1, 2, ...: highest score first
    sa.Column("class_index", sa.Integer, nullable=False),
    sa.Column("class_name", sa.Text, nullable=False),
    sa.Column("score", sa.Float, nullable=False),               # objectness x class probability
    sa.Column("x1", sa.Float, nullable=False),                  # the box in the original image's pixels
    sa.Column("y1", sa.Float, nullable=False),
    sa.Column("x2", sa.Float, nullable=False),
    sa.Column("y2", sa.Float, nullable=False),
    sa.Column("evidence_in_box", sa.Float),                     # share of its map's evidence inside its box
    sa.Column("evidence_peak", sa.Float),
    sa.Column("regions", sa.JSON),
    sa.Column("masks", sa.Integer),
    sa.UniqueConstraint("result_id", "position", name="uq_detections_result_position"),
)


def _add_reviews(conn: sa.Connection) -> None:
    """Version 1 -> 2. The table as it was at version 2, frozen here so that a later change to ``reviews``
    (made by a later step) cannot change what this step does."""
    frozen = sa.MetaData()
    sa.Table("runs", frozen, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table("results", frozen, sa.Column("id", sa.Integer, primary_key=True))
    table = sa.Table(
        "reviews", frozen,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id"), nullable=False),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("label", sa.Text),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Index("ix_reviews_result", "result_id"),
    )
    table.create(conn)


# UPGRADES[k - 1] brings a store from version k to k + 1. A new store is created from ``metadata`` at the
# newest version directly. Never edit a released step; append a new one and bump the tables above.
def _add_station(conn: sa.Connection) -> None:
    """Version 2 -> 3: users, sessions, reviews.previous_label and the queue's index (frozen as at 3)."""
    frozen = sa.MetaData()
    sa.Table("results", frozen, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("finished_at", TS), sa.Index("ix_results_finished", "finished_at"))
    user_table = sa.Table(
        "users", frozen,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    )
    session_table = sa.Table(
        "sessions", frozen,
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    user_table.create(conn)
    session_table.create(conn)
    conn.execute(sa.text("ALTER TABLE reviews ADD COLUMN previous_label TEXT"))
    for index in frozen.tables["results"].indexes:
        index.create(conn)


def _add_login_failures(conn: sa.Connection) -> None:
    """Version 3 -> 4: login_failures (frozen as at 4)."""
    frozen = sa.MetaData()
    sa.Table(
        "login_failures", frozen,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(200), nullable=False),
        sa.Column("address", sa.String(64)),
        sa.Column("failed_at", TS, nullable=False),
        sa.Index("ix_login_failures_username", "username", "failed_at"),
        sa.Index("ix_login_failures_address", "address", "failed_at"),
    ).create(conn)


def _add_detections(conn: sa.Connection) -> None:
    """Version 4 -> 5: detections (frozen as at 5)."""
    frozen = sa.MetaData()
    sa.Table("results", frozen, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "detections", frozen,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("class_index", sa.Integer, nullable=False),
        sa.Column("class_name", sa.Text, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("x1", sa.Float, nullable=False),
        sa.Column("y1", sa.Float, nullable=False),
        sa.Column("x2", sa.Float, nullable=False),
        sa.Column("y2", sa.Float, nullable=False),
        sa.Column("evidence_in_box", sa.Float),
        sa.Column("evidence_peak", sa.Float),
        sa.Column("regions", sa.JSON),
        sa.Column("masks", sa.Integer),
        sa.UniqueConstraint("result_id", "position", name="uq_detections_result_position"),
    ).create(conn)


def _add_undo(conn: sa.Connection) -> None:
    """Version 5 -> 6: reviews.undoes."""
    conn.execute(sa.text("ALTER TABLE reviews ADD COLUMN undoes INTEGER"))


def _add_parts(conn: sa.Connection) -> None:
    """Version 6 -> 7: parts (frozen as at 7), one part without identity for each finished result."""
    frozen = sa.MetaData()
    sa.Table("results", frozen, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table("runs", frozen, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "parts", frozen,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id", ondelete="CASCADE"), nullable=False),
        sa.Column("identity_key", sa.String(64), nullable=False),
        sa.Column("serial", sa.String(200)),
        sa.Column("line", sa.String(200)),
        sa.Column("camera", sa.String(200)),
        sa.Column("product", sa.String(200)),
        sa.Column("tags", sa.JSON),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("source_path_bytes", sa.LargeBinary, nullable=False),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id")),
        sa.Column("arrived_at", TS, nullable=False),
        sa.Column("note", sa.Text),
        sa.UniqueConstraint("result_id", "identity_key", name="uq_parts_result_identity"),
        sa.Index("ix_parts_result", "result_id"),
        sa.Index("ix_parts_serial", "serial"),
    ).create(conn)
    conn.execute(sa.text(
        "INSERT INTO parts (result_id, identity_key, source_path, source_path_bytes, run_id, arrived_at) "
        "SELECT id, :key, source_path, source_path_bytes, run_id, COALESCE(finished_at, claimed_at) "
        "FROM results WHERE status IN ('done', 'failed')"), {"key": EMPTY_IDENTITY_KEY})


def _add_outbox(conn: sa.Connection) -> None:
    """Version 7 -> 8: outbox and outbox_cursors (frozen as at 8)."""
    frozen = sa.MetaData()
    sa.Table("results", frozen, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "outbox", frozen,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id", ondelete="CASCADE"), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    ).create(conn)
    sa.Table(
        "outbox_cursors", frozen,
        sa.Column("sink", sa.String(200), primary_key=True),
        sa.Column("last_id", sa.Integer, nullable=False),
        sa.Column("holder", sa.String(300)),
        sa.Column("lease_until", TS),
        sa.Column("updated_at", TS, nullable=False),
    ).create(conn)


UPGRADES: list[Callable[[sa.Connection], None]] = [
    _add_reviews,
    _add_station,
    _add_login_failures,
    _add_detections,
    _add_undo,
    _add_parts,
    _add_outbox,
]
SCHEMA_VERSION = len(UPGRADES) + 1
