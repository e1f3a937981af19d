"""The line's API, ``/api/v1``: explain an image, read results and verdicts, give a verdict. Callers
authenticate with HTTP Basic or a session cookie plus ``X-CSRF-Token`` (deps.ApiViewer, ApiReviewer)."""

from __future__ import annotations

import time
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..common.identity import IdentityError, make_identity
from ..errors import InspectorError, VerdictConflict
from ..store import display_path
from . import queries
from .deps import MAX_ID, ApiReviewer, ApiViewer, PartId, StationDep, load_part, parse_utc
from .service import Station, UploadRefused
from .verdicts import VERDICTS, VerdictError, record_verdict

router = APIRouter(prefix="/api/v1", tags=["line"])
DEFAULT_WAIT, MAX_WAIT, POLL_SECONDS = 10.0, 120.0, 0.25  # seconds, for an image another process explains
_BUSY = {"description": "Accepted: another station or audit is explaining this image right now; no result "
                        "yet. Poll the Location header's URL (Retry-After: seconds) until it answers 200.",
         "headers": {"Location": {"description": "the result to poll", "schema": {"type": "string"}},
                     "Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}}
EXPLAIN_RESPONSES = {200: {"description": "the image was explained before: its stored result"},
                     201: {"description": "explained now: the result"}, 202: _BUSY,
                     422: {"description": "not a readable image: recorded as a failed part"},
                     503: {"description": "the result cannot be recorded now (store or disk); send it again"}}
RESULT_RESPONSES = {200: {"description": "the result"}, 202: _BUSY, 404: {"description": "no such result"}}


class ReviewBody(BaseModel):
    """A verdict sent by the line or a script."""

    model_config = ConfigDict(extra="forbid")
    verdict: str = Field(description="one of " + ", ".join(VERDICTS))
    label: str | None = Field(None, max_length=200, description="the class, for overrule")
    comment: str | None = Field(None, max_length=2000)
    seen: int | None = Field(None, ge=0, le=MAX_ID, description=(
        "the review_id of the newest verdict the sender saw (0: none); when another was given since, nothing "
        "is recorded and the answer is 409 with that verdict"))


REVIEW_RESPONSES = {409: {"description": "not recorded: another verdict was given since `seen`, or the same "
                                         "reviewer gave this verdict moments ago; `detail` says which, "
                                         "`newest` is the part's newest verdict"}}


@router.post("/explain", status_code=201, responses=EXPLAIN_RESPONSES)
def api_explain(
    user: ApiReviewer,
    station: StationDep,
    image: Annotated[UploadFile, File(description="the part's image file")],
    wait: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT, description="seconds to wait for an image that another station or "
              "audit is explaining at this moment, before answering 202"),
    ] = DEFAULT_WAIT,
    serial: Annotated[str | None, Form(description="the part's serial number")] = None,
    line: Annotated[str | None, Form(description="the production line")] = None,
    camera: Annotated[str | None, Form(description="the camera or station on the line")] = None,
    product: Annotated[str | None, Form(description="the product (type, variant)")] = None,
    tags: Annotated[str | None, Form(description="comma-separated tags")] = None,
):
    """Explain one image (PNG, JPEG, BMP, TIFF, WebP, PNM) and record it as a part with its identity
    (serial, line, camera, product, tags; without any, the config's ``identity.pattern`` reads them from
    the file name); the same image sent again returns the stored result, and under another serial it is
    another part sharing that result. Every 200 and 201 carries the result. An image that another process
    is explaining right now is waited for up to ``wait`` seconds, then answered ``202 Accepted`` with
    a ``Location`` to poll (``GET /api/v1/results/{id}``: 202 while it runs, 200 with the result).
    411/413/401 (before the body is read: see ``app.refuse_body``), 413: too many bytes or pixels, 415:
    a format whose size no header check reads, 422: a damaged image (recorded as a failed part),
    503: the result cannot be recorded now (the store or the disk)."""
    try:
        identity = make_identity(serial, line, camera, product, tags or ())
    except IdentityError as e:
        raise HTTPException(422, str(e)) from e
    data = image.file.read(station.settings.max_upload_bytes + 1)
    deadline = time.monotonic() + wait
    for _ in range(5):  # an image given back unfinished by the other process is explained here
        try:
            outcome = station.explain_upload(data, image.filename, None if identity.empty else identity)
        except UploadRefused as e:
            raise HTTPException(e.status, str(e)) from e
        except InspectorError as e:
            raise HTTPException(503, str(e)) from e
        if outcome.state != "busy":
            break
        row = _wait_until_finished(station, outcome.result_id, deadline)
        if row is not None:
            return _still_running(row) if row["status"] == "running" else _done_elsewhere(station, row)
    else:
        raise HTTPException(503, "the image was claimed and given back by other processes several "
                            "times in a row; send it again")
    row = load_part(station, outcome.result_id)
    body = result_body(row, station.class_names)
    body["state"] = outcome.state
    body["identity"] = outcome.identity.as_dict()
    if row["status"] == "failed":
        return JSONResponse(body, status_code=422)
    return JSONResponse(body, status_code=201 if outcome.state == "explained" else 200)


def _wait_until_finished(station: Station, result_id: int, deadline: float) -> dict | None:
    """The result's row once it is no longer running, or at the deadline; None once it is gone."""
    while True:
        row = queries.part(station.store, result_id)
        if row is None or row["status"] != "running" or time.monotonic() >= deadline:
            return row
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def _done_elsewhere(station: Station, row: dict) -> JSONResponse:
    """The result another process finished while this request waited (as for an image sent again)."""
    body = result_body(load_part(station, row["id"]), station.class_names)
    body["state"] = "done" if row["status"] == "done" else "skipped_failed"
    return JSONResponse(body, status_code=422 if row["status"] == "failed" else 200)


def _still_running(row: dict) -> JSONResponse:
    location = f"/api/v1/results/{row['id']}"
    body = {"result_id": row["id"], "image_sha256": row["image_sha256"], "status": "running",
            "state": "busy", "location": location,
            "detail": "another station or audit is explaining this image now; GET the location until "
                      "it answers 200 with the result"}
    return JSONResponse(body, status_code=202, headers={"Location": location, "Retry-After": "1"})


@router.get("/results")
def api_results(
    user: ApiViewer,
    station: StationDep,
    since: Annotated[str | None, Query(description="ISO 8601 time; results finished after it")] = None,
    after_id: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_ID,
            description="with since: results finished exactly at since with a "
            "larger id (use the response's next link)",
        ),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    serial: Annotated[str | None, Query(max_length=200, description="only results that arrived as a "
                                        "part with this serial number")] = None,
    line: Annotated[str | None, Query(max_length=200)] = None,
    camera: Annotated[str | None, Query(max_length=200)] = None,
    product: Annotated[str | None, Query(max_length=200)] = None,
):
    """Finished results in the order they finished, each with its newest verdict and the parts it
    arrived as (serial, line, camera, product, tags). ``next`` is always the cursor after this page:
    follow it at once while ``more`` is true, and later (a poll) for results that finish after these."""
    moment = parse_utc(since, "since")
    wanted = {"serial": serial, "line": line, "camera": camera, "product": product}
    rows = queries.results_since(station.store, moment, after_id, limit, queries.Filters(**wanted))
    ids = [r["id"] for r in rows]
    kinds, found = queries.artifact_kinds(station.store, ids), queries.detections_of(station.store, ids)
    arrivals = queries.parts_of(station.store, ids)
    items = [
        result_body({**r, "artifacts": kinds.get(r["id"], []), "detections": found.get(r["id"], []),
                     "parts": arrivals.get(r["id"], [])}, station.class_names)
        for r in rows
    ]
    if rows:
        cursor = {"since": rows[-1]["finished_at"].isoformat(), "after_id": rows[-1]["id"]}
    else:  # nothing new: the same place again
        cursor = {"since": moment.isoformat(), "after_id": after_id} if moment is not None else {}
    following = "/api/v1/results?" + urlencode({**cursor, "limit": limit,
                                                **{k: v for k, v in wanted.items() if v}})
    return {"results": items, "next": following, "more": len(rows) == limit}


@router.get("/results/{result_id}", responses=RESULT_RESPONSES)
def api_result(user: ApiViewer, station: StationDep, result_id: PartId):
    """One result with its verdict history; 202 with ``Location`` while it is still being explained,
    404 when there is no such result (an explanation given up unfinished leaves none: send the image
    again)."""
    row = load_part(station, result_id)
    if row["status"] == "running":
        return _still_running(row)
    body = result_body(row, station.class_names)
    body["history"] = [review_body(h) for h in row["history"]]
    return body


@router.post("/results/{result_id}/review", status_code=201, responses=REVIEW_RESPONSES)
def api_review(user: ApiReviewer, station: StationDep, result_id: PartId, body: ReviewBody):
    """Append a verdict (nothing is ever changed in place): ``confirm`` (the model's label),
    ``overrule_good`` (the first of good_classes), ``overrule`` (to ``label``), ``inconclusive``."""
    row = load_part(station, result_id)
    try:
        review = record_verdict(station, row, body.verdict, body.label, body.comment, user.username,
                                seen=body.seen)
    except VerdictError as e:
        raise HTTPException(422, str(e)) from e
    except VerdictConflict as e:
        newest = review_body(e.newest) if e.newest else None
        return JSONResponse({"detail": str(e), "newest": newest}, status_code=409)
    return review_body(review)


@router.post("/undo", status_code=201, responses={409: {"description": "nothing to undo, or too late"}})
def api_undo(user: ApiReviewer, station: StationDep):
    """Take back the caller's own newest verdict (given within the last 10 minutes, and still the part's
    newest) by appending an ``undo`` row; nothing is deleted."""
    try:
        row = station.store.undo_review(user.username)
    except VerdictConflict as e:
        return JSONResponse({"detail": str(e)}, status_code=409)
    station.poke()
    return review_body(row)


@router.get("/reviews")
def api_reviews(
    user: ApiViewer,
    station: StationDep,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
):
    """Verdicts in the order they were given, after ``after_id``. Besides the verdicts (``confirm``,
    ``overrule``, ``inconclusive``) there are rows that give no label of their own: ``undo`` (takes back
    the verdict ``undoes``; ``label`` is the label in force again, null with no verdict left),
    ``acknowledge`` and ``explain_again`` (on a part that failed to explain)."""
    return {
        "reviews": [
            {**review_body(r), "image_sha256": r["image_sha256"], "model_label": r["prediction_name"]}
            for r in queries.reviews_after(station.store, after_id, limit)
        ]
    }


def result_body(row: dict, classes) -> dict:
    rid = row["id"]
    return {
        "result_id": rid,
        "image_sha256": row["image_sha256"],
        "status": row["status"],
        "source": display_path(row["source_path"]),
        "prediction": row["prediction_name"],
        "confidence": row["confidence"],
        "scores": dict(queries.named_scores(row.get("scores"), classes)),
        "regions": row.get("regions") or [],
        "flagged": row.get("flagged"),
        "roi_inside": row.get("roi_inside"),
        "error": row.get("error"),
        "finished_at": row["finished_at"].isoformat() if row.get("finished_at") else None,
        "verdict": row.get("verdict"),
        "review_label": row.get("review_label"),
        "parts": [part_identity(p) for p in row.get("parts", [])],
        "part_url": f"/parts/{rid}",
        "artifacts": {kind: f"/artifacts/{rid}/{kind}" for kind in row.get("artifacts", {})},
        "detections": [
            {
                "position": d["position"],
                "class": d["class_name"],
                "score": d["score"],
                "box": [d["x1"], d["y1"], d["x2"], d["y2"]],
                "evidence_in_box": d["evidence_in_box"],
                "regions": d["regions"] or [],
                "overlay": f"/artifacts/{rid}/overlay.{d['position']}",
            }
            for d in row.get("detections", [])
        ],
    }


def part_identity(p: dict) -> dict:
    """One arrival of a result's image: its identity on the line, where and when it came."""
    return {"part_id": p["id"], **{k: p[k] for k in ("serial", "line", "camera", "product")},
            "tags": p["tags"] or [], "source": p["source_path"], "arrived_at": p["arrived_at"].isoformat()}


def review_body(r: dict) -> dict:
    return {
        "review_id": r["id"],
        "result_id": r["result_id"],
        "verdict": r["verdict"],
        "label": r["label"],
        "previous_label": r["previous_label"],
        "reviewer": r["reviewer"],
        "comment": r["note"],
        "created_at": r["created_at"].isoformat(),
        "undoes": r.get("undoes"),
    }
