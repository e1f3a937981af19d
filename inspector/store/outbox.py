"""The outbox: one message per part that arrived and per verdict, written in the transaction that records
it (so a message is never lost, nor sent for something the store does not hold), and published afterwards
by ``inspector.integrations`` (MQTT, webhook) in id order, at least once. Each sink keeps its own cursor
(the last message it delivered) and a lease, so that of several processes on one store only one publishes
to a sink at a time.

Messages (``schema`` names the kind and its version; a change of meaning gets a new version, a new field
does not):

- ``sise-inspector/result@1``: a part arrived and its image was explained (``status`` done) or could not be
  (``failed``, with ``error``). ``reused``: the same bytes were explained before (another serial, say).
- ``sise-inspector/verdict@1``: a verdict (``confirm``, ``overrule``, ``inconclusive``), an ``undo``
  (``undoes``: the verdict taken back; ``label``: the label in force again, null with none left), or an
  action on a failed part (``acknowledge``, ``explain_again``).

Both carry ``message_id`` (the outbox row's id: consumers drop repeats by it) and ``urls`` relative to the
station (the publisher makes them absolute with ``integrations.base_url``).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from .schema import EMPTY_IDENTITY_KEY, artifacts, outbox, parts, results, runs

RESULT_SCHEMA = "sise-inspector/result@1"
VERDICT_SCHEMA = "sise-inspector/verdict@1"


def _identity(part) -> dict:
    return {"serial": part["serial"], "line": part["line"], "camera": part["camera"],
            "product": part["product"], "tags": part["tags"] or []}


def _regions(row) -> list[dict]:
    mean = row["evidence_mean"]
    return [{"box": r.get("box"), "evidence_share": (r["mean"] * r["area_fraction"] / mean) if mean else None,
             "peak": r.get("peak")} for r in (row["regions"] or [])]


OUTBOX_LOCK = 0x5153_4F42  # PostgreSQL advisory lock taken by every transaction that writes a message


def _in_order(conn: sa.Connection) -> None:
    """On PostgreSQL, writers of messages take turns until they commit, so that messages commit in id
    order (a publisher reading ``id > cursor`` would otherwise pass over a lower id that commits late);
    SQLite serialises every writer already."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": OUTBOX_LOCK})


def add_result_message(conn: sa.Connection, part_id: int, now: datetime, *, reused: bool) -> None:
    """The message for a part that arrived (inside the transaction that recorded it)."""
    _in_order(conn)
    part = conn.execute(sa.select(parts).where(parts.c.id == part_id)).mappings().one()
    row = conn.execute(sa.select(results, runs.c.model_sha256).join(runs, runs.c.id == results.c.run_id)
                       .where(results.c.id == part["result_id"])).mappings().one()
    kinds = [k for (k,) in conn.execute(sa.select(artifacts.c.kind)
                                        .where(artifacts.c.result_id == row["id"]))]
    rid = row["id"]
    payload = {
        "schema": RESULT_SCHEMA, "time": now.isoformat(), "result_id": rid, "part_id": part_id,
        "identity": _identity(part), "image_sha256": row["image_sha256"], "source": part["source_path"],
        "status": row["status"], "reused": reused, "prediction": row["prediction_name"],
        "confidence": row["confidence"], "flagged": row["flagged"], "roi_inside": row["roi_inside"],
        "region_count": row["region_count"], "regions": _regions(row) if row["status"] == "done" else [],
        "error": row["error"], "model_sha256": row["model_sha256"],
        "urls": {"part": f"/parts/{rid}", **{k: f"/artifacts/{rid}/{k}" for k in sorted(kinds)
                                           if k == "overlay" or k.startswith("overlay.")}},
    }
    conn.execute(sa.insert(outbox).values(kind="result", result_id=rid, payload=payload, created_at=now))


def add_verdict_message(conn: sa.Connection, review: dict) -> None:
    """The message for a verdict or action row (inside the transaction that appended it)."""
    _in_order(conn)
    rid = review["result_id"]
    row = conn.execute(sa.select(results.c.prediction_name, results.c.image_sha256)
                       .where(results.c.id == rid)).mappings().one()
    known = conn.execute(sa.select(parts).where(parts.c.result_id == rid)
                         .order_by((parts.c.identity_key == EMPTY_IDENTITY_KEY).asc(), parts.c.id.desc())
                         .limit(1)).mappings().first()
    payload = {
        "schema": VERDICT_SCHEMA, "time": review["created_at"].isoformat(), "result_id": rid,
        "review_id": review["id"], "identity": _identity(known) if known else None,
        "image_sha256": row["image_sha256"], "model_label": row["prediction_name"],
        "verdict": review["verdict"], "label": review["label"], "previous_label": review["previous_label"],
        "undoes": review.get("undoes"), "reviewer": review["reviewer"], "comment": review["note"],
        "urls": {"part": f"/parts/{rid}"},
    }
    conn.execute(sa.insert(outbox).values(kind="verdict", result_id=rid, payload=payload,
                                          created_at=review["created_at"]))
