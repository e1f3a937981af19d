"""What the station's pages and API read from the results store: the queue, one part with its verdict
history, a shift's figures, results and verdicts since a point (for the line), and reviewed parts to
export. Every function takes a :class:`~inspector.store.Store` and returns plain dicts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from ..common.identity import FIELDS as IDENTITY_FIELDS
from ..store import Store
from ..store.db import as_utc
from ..store.schema import (
    artifacts,
    detections,
    inputs,
    parts,
    results,
    reviews,
    runs,
    standing,
    standing_reviews,
)

PAGE = 100
SHOWN = ("done", "failed")  # results still running are not parts yet


@dataclass(frozen=True)
class Filters:
    """The queue's filters (also the context of a part page's next/previous)."""

    cls: str | None = None  # predicted class name
    flagged: bool = False  # evidence mostly outside the ROI
    unreviewed: bool = False  # no verdict yet
    failed: bool = False  # failed to explain (only those)
    since: datetime | None = None  # finished at or after
    until: datetime | None = None  # finished before
    rejects_first: bool = True  # parts not predicted good (and failures) before good ones
    serial: str | None = None  # a part with this serial number arrived as this image
    line: str | None = None
    camera: str | None = None
    product: str | None = None

    def query_string(self) -> str:
        from urllib.parse import urlencode

        items = {
            "cls": self.cls or None,
            "flagged": "1" if self.flagged else None,
            "unreviewed": "1" if self.unreviewed else None,
            "failed": "1" if self.failed else None,
            "since": self.since.isoformat(timespec="minutes") if self.since else None,
            "until": self.until.isoformat(timespec="minutes") if self.until else None,
            "order": None if self.rejects_first else "newest",
            **{f: getattr(self, f) or None for f in IDENTITY_FIELDS},
        }
        return urlencode({k: v for k, v in items.items() if v is not None})


def _latest_review():
    """One row per reviewed result: its newest standing verdict (undone verdicts and actions on failed
    parts do not count)."""
    kept = standing_reviews().subquery("kept")
    newest = (
        sa.select(kept.c.result_id, sa.func.max(kept.c.id).label("review_id"))
        .group_by(kept.c.result_id)
        .subquery("newest")
    )
    return (
        sa.select(
            reviews.c.result_id, reviews.c.verdict, reviews.c.label, reviews.c.reviewer, reviews.c.created_at,
            newest.c.review_id,
        )
        .join(newest, newest.c.review_id == reviews.c.id)
        .subquery("latest")
    )


def _parts(*columns):
    """(SELECT of the given result columns plus the newest verdict, for parts that are done or failed;
    the newest-verdict subquery, to filter on)."""
    latest = _latest_review()
    query = (
        sa.select(
            *columns,
            latest.c.verdict,
            latest.c.label.label("review_label"),
            latest.c.reviewer,
            latest.c.created_at.label("reviewed_at"),
        )
        .select_from(results.outerjoin(latest, latest.c.result_id == results.c.id))
        .where(results.c.status.in_(SHOWN))
    )
    return query, latest


def _acknowledged():
    """Whether someone acknowledged the (failed) part: the reviewer of its newest acknowledgement."""
    return (
        sa.select(reviews.c.reviewer)
        .where(reviews.c.result_id == results.c.id, reviews.c.verdict == "acknowledge")
        .order_by(reviews.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def _identity_columns() -> list:
    """The identity of the result's newest part (the newest arrival of its image), and how many parts
    share the result (the same bytes under several serials)."""
    def newest(column):
        return (sa.select(column).where(parts.c.result_id == results.c.id).order_by(parts.c.id.desc())
                .limit(1).scalar_subquery())

    count = sa.select(sa.func.count()).where(parts.c.result_id == results.c.id).scalar_subquery()
    return [*(newest(getattr(parts.c, f)).label(f) for f in IDENTITY_FIELDS), count.label("part_count")]


def _with_identity(query, f: Filters):
    """Only results that arrived as a part with the filter's serial, line, camera and product."""
    wanted = {name: getattr(f, name) for name in IDENTITY_FIELDS if getattr(f, name)}
    if not wanted:
        return query
    return query.where(sa.exists().where(parts.c.result_id == results.c.id,
                                         *(getattr(parts.c, k) == v for k, v in wanted.items())))


def _category(good_classes):
    """0 for a part to look at (predicted not good, or failed), 1 for a good part."""
    if not good_classes:
        return sa.literal(0)
    return sa.case(
        (sa.and_(results.c.status == "done", results.c.prediction_name.in_(list(good_classes))), 1), else_=0
    )


def _queue_select(f: Filters, good_classes):
    category = _category(good_classes).label("category")
    query, latest = _parts(
        results.c.id,
        results.c.status,
        results.c.source_path,
        results.c.prediction_name,
        results.c.confidence,
        results.c.flagged,
        results.c.region_count,
        results.c.error,
        results.c.finished_at,
        category,
        _acknowledged().label("acknowledged"),
        *_identity_columns(),
    )
    query = _with_identity(query, f)
    if f.cls:
        query = query.where(results.c.prediction_name == f.cls)
    if f.flagged:
        query = query.where(results.c.flagged.is_(True))
    if f.unreviewed:  # failed parts have nothing to review
        query = query.where(latest.c.verdict.is_(None), results.c.status == "done")
    if f.failed:
        query = query.where(results.c.status == "failed")
    if f.since:
        query = query.where(results.c.finished_at >= f.since)
    if f.until:
        query = query.where(results.c.finished_at < f.until)
    return query, category


def _ordered(query, category, f: Filters):
    keys = [results.c.finished_at.desc(), results.c.id.desc()]
    return query.order_by(*([category.asc()] if f.rejects_first else []), *keys)


def queue(store: Store, f: Filters, good_classes=(), page: int = 0) -> tuple[list[dict], int]:
    """(one page of parts in queue order, how many parts match)."""
    query, category = _queue_select(f, good_classes)
    with store.read() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
        rows = conn.execute(_ordered(query, category, f).limit(PAGE).offset(page * PAGE)).mappings().all()
    return [_with_utc(r) for r in rows], total


def neighbours(store: Store, result_id: int, f: Filters, good_classes=()) -> tuple[int | None, int | None]:
    """(previous, next) part in queue order around ``result_id``, with the same filters."""
    query, category = _queue_select(f, good_classes)
    with store.read() as conn:
        me = conn.execute(query.where(results.c.id == result_id)).mappings().first()
        if me is None:
            return None, None
        cat, fin, rid = me["category"], me["finished_at"], me["id"]
        cat_expr = _category(good_classes)
        same_cat = cat_expr == cat if f.rejects_first else sa.true()
        later = sa.or_(results.c.finished_at > fin, sa.and_(results.c.finished_at == fin, results.c.id > rid))
        earlier = sa.or_(
            results.c.finished_at < fin, sa.and_(results.c.finished_at == fin, results.c.id < rid)
        )
        before = sa.and_(same_cat, later)
        after = sa.and_(same_cat, earlier)
        if f.rejects_first:
            before = sa.or_(cat_expr < cat, before)
            after = sa.or_(cat_expr > cat, after)
        prev_row = conn.execute(_reverse(query.where(before), category, f).limit(1)).first()
        next_row = conn.execute(_ordered(query.where(after), category, f).limit(1)).first()
    return (prev_row.id if prev_row else None), (next_row.id if next_row else None)


def _reverse(query, category, f: Filters):
    keys = [results.c.finished_at.asc(), results.c.id.asc()]
    return query.order_by(*([category.desc()] if f.rejects_first else []), *keys)


def part(store: Store, result_id: int) -> dict | None:
    """One result with its run's folder, artifacts (kind -> (relative path, sha256)), input paths,
    verdict history (oldest first) and, for a detector, its detections (highest score first)."""
    with store.read() as conn:
        row = (
            conn.execute(
                sa.select(results, runs.c.out_dir, runs.c.kind.label("run_kind"))
                .join(runs, runs.c.id == results.c.run_id)
                .where(results.c.id == result_id)
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        arts = conn.execute(
            sa.select(artifacts.c.kind, artifacts.c.path, artifacts.c.sha256).where(
                artifacts.c.result_id == result_id
            )
        ).all()
        paths = _input_paths(conn, row)
        history = (
            conn.execute(sa.select(reviews).where(reviews.c.result_id == result_id).order_by(reviews.c.id))
            .mappings()
            .all()
        )
        found = store.detection_rows(conn, result_id)
    out = _with_utc(row)
    out["parts"] = parts_of(store, [result_id]).get(result_id, [])
    out["detections"] = found
    out["artifacts"] = {a.kind: (a.path, a.sha256) for a in arts}
    out["input_paths"] = paths
    out["history"] = [_with_utc(h) for h in history]
    undone = {h["undoes"] for h in out["history"] if h["undoes"] is not None}
    for h in out["history"]:
        h["undone"] = h["id"] in undone
        if h["undoes"] is not None:  # the verdict it brought back (None: the part had none left)
            h["restored"] = standing([x for x in out["history"] if x["id"] < h["undoes"]])
    newest = standing(out["history"]) or {}
    out["verdict"], out["review_label"] = newest.get("verdict"), newest.get("label")
    out["reviewer_now"] = newest.get("reviewer")
    acknowledged = [h for h in out["history"] if h["verdict"] == "acknowledge"]
    out["acknowledged"] = acknowledged[-1] if acknowledged else None
    return out


def results_since(store: Store, since: datetime | None, after_id: int, limit: int,
                  f: Filters = Filters()) -> list[dict]:
    """Finished results in (finished_at, id) order after the cursor, each with its newest verdict; only
    those that arrived as a part with ``f``'s serial, line, camera, product when given."""
    query, _ = _parts(
        results.c.id,
        results.c.image_sha256,
        results.c.status,
        results.c.source_path,
        results.c.prediction_name,
        results.c.confidence,
        results.c.scores,
        results.c.regions,
        results.c.flagged,
        results.c.roi_inside,
        results.c.error,
        results.c.finished_at,
    )
    query = _with_identity(query, f)
    if since is not None:
        query = query.where(
            sa.or_(
                results.c.finished_at > since,
                sa.and_(results.c.finished_at == since, results.c.id > after_id),
            )
        )
    with store.read() as conn:
        rows = conn.execute(query.order_by(results.c.finished_at, results.c.id).limit(limit)).mappings().all()
    return [_with_utc(r) for r in rows]


def identity_values(store: Store, limit: int = 200) -> dict[str, list[str]]:
    """The lines, cameras and products parts arrived from (for the queue's filters), at most ``limit``
    of each, sorted."""
    with store.read() as conn:
        return {name: [v for (v,) in conn.execute(
            sa.select(getattr(parts.c, name)).where(getattr(parts.c, name).is_not(None)).distinct()
            .order_by(getattr(parts.c, name)).limit(limit))] for name in ("line", "camera", "product")}


def parts_of(store: Store, result_ids: list[int]) -> dict[int, list[dict]]:
    """The parts each result arrived as (oldest first): identity, where the image was, when."""
    if not result_ids:
        return {}
    found: dict[int, list[dict]] = {}
    with store.read() as conn:
        for p in conn.execute(sa.select(parts).where(parts.c.result_id.in_(result_ids))
                              .order_by(parts.c.result_id, parts.c.id)).mappings():
            row = _with_utc(p)
            row["tags"] = row["tags"] or []
            found.setdefault(p["result_id"], []).append(row)
    return found


def artifact_kinds(store: Store, result_ids: list[int]) -> dict[int, list[str]]:
    """The kinds of files each of these results has (for the API's artifact URLs)."""
    if not result_ids:
        return {}
    kinds: dict[int, list[str]] = {}
    with store.read() as conn:
        for rid, kind in conn.execute(
            sa.select(artifacts.c.result_id, artifacts.c.kind).where(artifacts.c.result_id.in_(result_ids))
        ):
            kinds.setdefault(rid, []).append(kind)
    return kinds


def detections_of(store: Store, result_ids: list[int]) -> dict[int, list[dict]]:
    """A detector's results' detections (highest score first), by result."""
    if not result_ids:
        return {}
    found: dict[int, list[dict]] = {}
    with store.read() as conn:
        for d in conn.execute(
            sa.select(detections)
            .where(detections.c.result_id.in_(result_ids))
            .order_by(detections.c.result_id, detections.c.position)
        ).mappings():
            row = {k: v for k, v in d.items() if k not in ("id", "result_id")}
            found.setdefault(d["result_id"], []).append(row)
    return found


def reviews_after(store: Store, after_id: int, limit: int) -> list[dict]:
    """Verdicts in the order they were given (ids only grow: the table is append-only)."""
    with store.read() as conn:
        rows = (
            conn.execute(
                sa.select(reviews, results.c.image_sha256, results.c.prediction_name)
                .join(results, results.c.id == reviews.c.result_id)
                .where(reviews.c.id > after_id)
                .order_by(reviews.c.id)
                .limit(limit)
            )
            .mappings()
            .all()
        )
    return [_with_utc(r) for r in rows]


def shift_rows(store: Store, start: datetime, end: datetime) -> list[dict]:
    """Every part finished in [start, end) with its newest verdict."""
    query, _ = _parts(results.c.id, results.c.status, results.c.prediction_name, results.c.finished_at)
    query = query.where(results.c.finished_at >= start, results.c.finished_at < end)
    with store.read() as conn:
        return [_with_utc(r) for r in conn.execute(query).mappings()]


def reviewed_parts(store: Store) -> list[dict]:
    """Every explained part whose newest verdict gives a label, with what the export needs."""
    latest = _latest_review()
    query = (
        sa.select(
            results.c.id,
            results.c.image_sha256,
            results.c.source_path,
            results.c.source_path_bytes,
            results.c.prediction_name,
            latest.c.verdict,
            latest.c.label.label("review_label"),
            latest.c.reviewer,
            latest.c.created_at,
        )
        .join(latest, latest.c.result_id == results.c.id)
        .where(results.c.status == "done", latest.c.label.is_not(None))
        .order_by(results.c.id)
    )
    with store.read() as conn:
        return [_with_utc(r) for r in conn.execute(query).mappings()]


def confirmed_good(store: Store, good_classes, exclude: int, limit: int = 20, *, product: str | None = None,
                   camera: str | None = None) -> list[dict]:
    """The parts whose standing verdict labels them good, most recently reviewed first (candidates for a
    reference part beside a reject), without ``exclude``; of ``product`` and ``camera`` when given."""
    if not good_classes:
        return []
    latest = _latest_review()
    query = (
        sa.select(results.c.id, results.c.image_sha256, results.c.source_path, results.c.source_path_bytes,
                  latest.c.label, latest.c.reviewer, latest.c.created_at.label("reviewed_at"))
        .join(latest, latest.c.result_id == results.c.id)
        .where(results.c.status == "done", latest.c.label.in_(list(good_classes)), results.c.id != exclude)
        .order_by(latest.c.review_id.desc())
        .limit(limit)
    )
    query = _with_identity(query, Filters(product=product, camera=camera))
    with store.read() as conn:
        rows = [_with_utc(r) for r in conn.execute(query).mappings()]
        for row in rows:
            row["input_paths"] = _input_paths(conn, row)
    return rows


def _input_paths(conn: sa.Connection, row) -> list[bytes]:
    """Where a result's image has been seen: its source path, then every input with its content (the
    original may have moved to the done folder); files.original_path picks the first still there."""
    return [bytes(row["source_path_bytes"]), *(
        bytes(p) for (p,) in conn.execute(sa.select(inputs.c.path_bytes)
                                          .where(inputs.c.image_sha256 == row["image_sha256"])))]


BULK_LIMIT = 200  # parts one bulk confirmation may cover


def bulk_candidates(store: Store, cls: str, min_confidence: float) -> tuple[list[dict], int]:
    """(explained parts predicted ``cls`` with a confidence of at least ``min_confidence`` and no verdict
    yet, newest first, at most BULK_LIMIT; how many match in all)."""
    query, latest = _parts(results.c.id, results.c.source_path, results.c.confidence, results.c.finished_at)
    query = query.where(results.c.status == "done", results.c.prediction_name == cls,
                        results.c.confidence >= min_confidence, latest.c.verdict.is_(None))
    with store.read() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
        rows = conn.execute(query.order_by(results.c.finished_at.desc(), results.c.id.desc())
                            .limit(BULK_LIMIT)).mappings().all()
    return [_with_utc(r) for r in rows], total


def counts(store: Store) -> dict:
    """Figures for /metrics that live in the store: parts by status, parts without a verdict."""
    latest = _latest_review()
    with store.read() as conn:
        by_status = dict(
            conn.execute(sa.select(results.c.status, sa.func.count()).group_by(results.c.status)).all()
        )
        unreviewed = conn.execute(
            sa.select(sa.func.count())
            .select_from(results.outerjoin(latest, latest.c.result_id == results.c.id))
            .where(results.c.status == "done", latest.c.verdict.is_(None))
        ).scalar_one()
    return {"by_status": by_status, "unreviewed": unreviewed}


def _with_utc(row) -> dict:
    """A row as a dict with its timestamps in UTC (SQLite gives them back without a zone)."""
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in dict(row).items()}


def named_scores(scores, classes) -> list[tuple[str, float | None]]:
    """(class name, score) per class; indices stand in for names the config lacks."""
    if not scores:
        return []
    return [(classes[i] if i < len(classes) else str(i), s) for i, s in enumerate(scores)]
