"""The operator's pages, rendered on the server: log-in, the queue, one part (and its pictures), the shift,
the dataset export. Who may see each is its dependency (deps.Viewer, Reviewer, Admin)."""

from __future__ import annotations

import hmac
import os
import secrets
from datetime import datetime, timedelta, timezone
from typing import Annotated
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from ..common import documents
from ..common.reading import ARTIFACT_LIMIT, read_regular
from ..common.version import __version__
from ..errors import InspectorError, VerdictConflict
from ..store import display_path
from ..store.schema import EMPTY_IDENTITY_KEY
from . import auth, files, queries
from .deps import (
    COOKIE,
    MAX_ID,
    Admin,
    Page,
    PartId,
    QueueFilters,
    Reviewer,
    StationDep,
    Viewer,
    client_address,
    csrf_ok,
    load_part,
    parse_local,
    read_filters,
    safe_next,
    shown_message,
    signed,
    station_of,
)
from .export import dataset_zip
from .shifts import parse_shifts, shift_of
from .verdicts import VERDICTS, VerdictError, acknowledge, explain_again, overrule_choices, record_verdict

STALE_FORM = "the page was out of date (logged in again elsewhere?); nothing was recorded"
LOGIN_COOKIE = "sise_login"  # double-submit token of the login form (no session exists yet)
router = APIRouter(include_in_schema=False)


def render(request: Request, name: str, user: auth.User | None, **context):
    """A page from the station's templates, with what every page shows."""
    station = station_of(request)
    context.setdefault("error", shown_message(request))
    context.setdefault("done", shown_message(request, "done"))
    context.update(
        user=user,
        version=__version__,
        classes=station.class_names,
        good_classes=station.good_classes,
        watching=station.settings.watch_dir is not None,
    )
    return request.app.state.templates.TemplateResponse(request, name, context)


# ----- log-in -------------------------------------------------------------------------------------------
@router.api_route("/", methods=["GET", "HEAD"])
def home():
    return RedirectResponse("/queue", status_code=303)


@router.get("/login")
def login_page(request: Request, station: StationDep, next: str = "/queue"):
    token = secrets.token_urlsafe(24)
    response = render(
        request, "login.html", None, next=safe_next(next), token=token, error=shown_message(request)
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=station.settings.secure_cookies,
        max_age=3600,
    )
    return response


@router.post("/login")
def login(
    request: Request,
    station: StationDep,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/queue",
):
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(token, expected):
        return RedirectResponse(
            "/login?" + urlencode({"next": next, **signed("the form expired; try again")}),
            status_code=303,
        )
    try:
        user = auth.check_password(station.store, username, password, client_address(request))
    except auth.TooManyAttempts as e:
        return RedirectResponse("/login?" + urlencode({"next": next, **signed(str(e))}), status_code=303)
    if user is None:
        return RedirectResponse(
            "/login?" + urlencode({"next": next, **signed("wrong user name or password")}),
            status_code=303,
        )
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        auth.open_session(station.store, user),
        httponly=True,
        samesite="lax",  # links from the line's other systems open the part; forms carry CSRF tokens
        secure=station.settings.secure_cookies,
        max_age=int(auth.SESSION_HOURS * 3600),
    )
    response.delete_cookie(LOGIN_COOKIE)
    return response


@router.post("/logout")
def logout(user: Viewer, request: Request, station: StationDep, csrf_token: Annotated[str, Form()] = ""):
    if not csrf_ok(request, user, csrf_token):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page")
    auth.close_session(station.store, request.cookies.get(COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# ----- queue --------------------------------------------------------------------------------------------
@router.get("/queue", response_class=HTMLResponse)
def queue_page(f: QueueFilters, user: Viewer, request: Request, station: StationDep, page: Page = 0):
    rows, total = queries.queue(station.store, f, station.good_classes, page)
    return render(
        request,
        "queue.html",
        user,
        rows=rows,
        total=total,
        page=page,
        f=f,
        pages=(total + queries.PAGE - 1) // queries.PAGE,
        qs=f.query_string(),
        failed_total=queries.counts(station.store)["by_status"].get("failed", 0),
        waiting=station.waiting_files(),
        known=queries.identity_values(station.store),
        plc_waiting=station.unacknowledged(),
    )


@router.get("/queue/rows", response_class=HTMLResponse)
def queue_rows(f: QueueFilters, user: Viewer, request: Request, station: StationDep, page: Page = 0):
    rows, total = queries.queue(station.store, f, station.good_classes, page)
    response = render(request, "queue_rows.html", user, rows=rows, qs=f.query_string())
    response.headers["X-Queue-Total"] = str(total)
    response.headers["X-Queue-Waiting"] = str(station.waiting_files())
    return response


# ----- bulk confirm -------------------------------------------------------------------------------------
@router.get("/bulk", response_class=HTMLResponse)
def bulk_page(
    user: Reviewer,
    request: Request,
    station: StationDep,
    cls: Annotated[str, Query(max_length=200)] = "",
    min_confidence: Annotated[float, Query(alias="min", ge=0.0, le=1.0)] = 0.98,
):
    """Unreviewed parts of one predicted class above a confidence, with their pictures, to confirm at
    once (each still gets its own verdict row)."""
    rows, total = queries.bulk_candidates(station.store, cls, min_confidence) if cls else ([], 0)
    return render(request, "bulk.html", user, rows=rows, total=total, cls=cls, min_confidence=min_confidence,
                  limit=queries.BULK_LIMIT)


@router.post("/bulk/confirm")
def bulk_confirm(
    user: Reviewer,
    request: Request,
    station: StationDep,
    cls: Annotated[str, Form(max_length=200)],
    ids: Annotated[str, Form(max_length=20 * queries.BULK_LIMIT)],
    min_confidence: Annotated[float, Form(alias="min", ge=0.0, le=1.0)] = 0.98,
    looked: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
):
    """Confirm each listed part as ``cls``: one verdict row per part, naming the reviewer; a part that got
    a verdict since the list was shown (or is no longer predicted ``cls``) is skipped and counted."""
    back = "/bulk?" + urlencode({"cls": cls, "min": min_confidence})
    if not csrf_ok(request, user, csrf_token):
        return RedirectResponse(back + "&" + urlencode(signed(
            "the page was out of date (logged in again elsewhere?); nothing was recorded")), status_code=303)
    if looked != "1":
        return RedirectResponse(back + "&" + urlencode(signed(
            "tick 'I have looked at these parts' to confirm them; nothing was recorded")), status_code=303)
    try:
        wanted = [int(x) for x in ids.split(",") if x.strip()]
    except ValueError:
        raise HTTPException(422, "ids: a comma-separated list of part numbers") from None
    if not wanted or len(wanted) > queries.BULK_LIMIT or any(not 0 < i <= MAX_ID for i in wanted):
        raise HTTPException(422, f"ids: 1 to {queries.BULK_LIMIT} part numbers")
    confirmed, skipped = 0, 0
    for result_id in dict.fromkeys(wanted):
        row = queries.part(station.store, result_id)
        if row is None or row["status"] != "done" or row["prediction_name"] != cls:
            skipped += 1
            continue
        try:  # seen=0: only a part that still has no verdict is confirmed
            record_verdict(station, row, "confirm", None, "bulk confirm", user.username, seen=0)
            confirmed += 1
        except (VerdictError, VerdictConflict):
            skipped += 1
    message = f"confirmed {confirmed} part(s) as {cls}" + (
        f"; {skipped} skipped (a verdict was given on them meanwhile, or they are no longer predicted {cls})"
        if skipped else "")
    return RedirectResponse(back + "&" + urlencode(signed(message, "done")), status_code=303)


# ----- one part -----------------------------------------------------------------------------------------
@router.get("/parts/{result_id}", response_class=HTMLResponse)
def part_page(
    f: QueueFilters,
    user: Viewer,
    request: Request,
    station: StationDep,
    result_id: PartId,
    saved: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
):
    row = load_part(station, result_id)
    original = files.original_path(row)
    previous, following = queries.neighbours(station.store, result_id, f, station.good_classes)
    scores = queries.named_scores(row.get("scores"), station.class_names)
    saved_part = queries.part(station.store, saved) if saved else None
    saved_part = saved_part if saved_part and saved_part["history"] else None
    return render(
        request,
        "part.html",
        user,
        part=row,
        scores=scores,
        other_classes=overrule_choices(row["prediction_name"], scores, station.class_names,
                                       station.good_classes),
        prev_id=previous,
        next_id=following,
        qs=f.query_string(),
        verdicts=VERDICTS,
        saved=saved_part,
        part_name=_name(row["source_path"]),
        has_original=original is not None,
        file_now=display_path(original) if original is not None else None,
        size=files.picture_size(row) if original is not None else None,
        reference=_reference(station, row) if row["status"] == "done" else None,
        acknowledged=row["acknowledged"],
        empty_identity=EMPTY_IDENTITY_KEY,
        end=request.query_params.get("end"),
        seen=row["history"][-1]["id"] if row["history"] else 0,
    )


@router.post("/parts/{result_id}/review")
def review_form(
    user: Reviewer,
    request: Request,
    station: StationDep,
    result_id: PartId,
    verdict: Annotated[str, Form()],
    label: Annotated[str, Form()] = "",
    comment: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    qs: Annotated[str, Form()] = "",
    seen: Annotated[int, Form(ge=0, le=MAX_ID)] = 0,
):
    """A verdict from the part page. ``seen``: the newest verdict the page showed; when another was
    given since (a second reviewer, a second tab), nothing is recorded and the page says so."""
    if not csrf_ok(request, user, csrf_token):
        return _to_part(result_id, qs, **signed(STALE_FORM + ": give the verdict again"))
    row = load_part(station, result_id)
    # the next part is found before the verdict: with "unreviewed", this part leaves the list
    filters = read_filters(**_filter_args(qs))
    _, following = queries.neighbours(station.store, result_id, filters, station.good_classes)
    try:  # refused inside the store's transaction when another verdict was given since the page's
        record_verdict(station, row, verdict, label, comment, user.username, seen=seen)
    except (VerdictError, VerdictConflict) as e:
        return _to_part(result_id, qs, **signed(str(e)))
    if following is None:  # the end of the list: say so, and how many are still to review
        left = queries.counts(station.store)["unreviewed"]
        return _to_part(result_id, qs, saved=result_id, end=left)
    return _to_part(following, qs, saved=result_id)


@router.post("/parts/{result_id}/acknowledge")
def acknowledge_form(
    user: Reviewer,
    request: Request,
    station: StationDep,
    result_id: PartId,
    comment: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    qs: Annotated[str, Form()] = "",
    seen: Annotated[int, Form(ge=0, le=MAX_ID)] = 0,
):
    """A failed part: note that the reviewer saw why (recorded like a verdict), then the next part."""
    if not csrf_ok(request, user, csrf_token):
        return _to_part(result_id, qs, **signed(STALE_FORM))
    row = load_part(station, result_id)
    _, following = queries.neighbours(station.store, result_id, read_filters(**_filter_args(qs)),
                                      station.good_classes)
    try:
        acknowledge(station, row, user.username, comment, seen=seen)
    except (VerdictError, VerdictConflict) as e:
        return _to_part(result_id, qs, **signed(str(e)))
    return _to_part(following or result_id, qs, saved=result_id)


@router.post("/parts/{result_id}/explain-again")
def explain_again_form(
    user: Reviewer,
    request: Request,
    station: StationDep,
    result_id: PartId,
    csrf_token: Annotated[str, Form()] = "",
    qs: Annotated[str, Form()] = "",
):
    """A failed part: explain its image again from where the file is now; the page says what happened."""
    if not csrf_ok(request, user, csrf_token):
        return _to_part(result_id, qs, **signed(STALE_FORM))
    try:
        now_id, said = explain_again(station, load_part(station, result_id), user.username)
    except InspectorError as e:  # VerdictError, or the outputs could not be written (disk full)
        return _to_part(result_id, qs, **signed(str(e)))
    return _to_part(now_id, qs, **signed(said, "done"))


@router.post("/undo")
def undo_form(
    user: Reviewer,
    request: Request,
    station: StationDep,
    csrf_token: Annotated[str, Form()] = "",
    qs: Annotated[str, Form()] = "",
    back: Annotated[str, Form()] = "/queue",
):
    """Take back the reviewer's own last verdict (a new row; see Store.undo_review) and show that part."""
    back = safe_next(back)
    join = "&" if "?" in back else "?"
    if not csrf_ok(request, user, csrf_token):
        return RedirectResponse(back + join + urlencode(signed(STALE_FORM)), status_code=303)
    try:
        row = station.store.undo_review(user.username)
    except VerdictConflict as e:
        return RedirectResponse(back + join + urlencode(signed(f"nothing was undone: {e}")), status_code=303)
    station.poke()
    restored = row["restored"]
    now = (f"{restored['verdict']} -> {restored['label'] or 'inconclusive'} by {restored['reviewer']}"
           if restored else "no verdict: to review")
    undone = row["undone"]
    said = (f"undone: your verdict ({undone['verdict']} -> {undone['label'] or 'inconclusive'}) on part "
            f"#{row['result_id']}; it is now {now}")
    return _to_part(row["result_id"], qs, **signed(said, "done"))


@router.get("/parts/{result_id}/original")
def original(user: Viewer, station: StationDep, result_id: PartId):
    data = files.original_bytes(load_part(station, result_id))
    if data is None:
        raise HTTPException(404, "the original image is no longer where it was explained")
    try:
        body, kind = files.for_browser(data, station.config.preprocess.max_pixels)
    except InspectorError as e:
        raise HTTPException(415, f"the original image cannot be shown: {e}") from e
    return Response(body, media_type=kind, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/reference")
def reference(
    user: Viewer,
    station: StationDep,
    key: Annotated[str, Query(max_length=420)] = "",
    size: Annotated[str, Query(pattern=r"^(preview|full)$")] = "preview",
):
    """The golden image given with --reference for ``key`` (product/camera, product, or empty: any)."""
    if key not in dict(station.settings.reference):
        raise HTTPException(404, f"no reference image for {key or 'any part'} (inspector station "
                            "--reference [PRODUCT[/CAMERA]=]IMAGE)")
    try:
        body = station.reference_picture(key, size)
    except InspectorError as e:
        raise HTTPException(404, str(e)) from e
    return Response(body, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})


@router.get("/parts/{result_id}/picture")
def picture(
    user: Viewer,
    station: StationDep,
    result_id: PartId,
    what: Annotated[str, Query(pattern=r"^(original|overlay(\.[1-9][0-9]{0,3})?)$")] = "original",
    size: Annotated[str, Query(pattern=r"^(thumb|preview|full)$")] = "preview",
):
    """A part's original or overlay (``overlay.<k>``: a detector's detection k alone) cut to the image,
    as a thumbnail, a preview, or at full resolution (see files.picture)."""
    row = load_part(station, result_id)
    try:
        body, kind = files.picture(station.store, row, what, size, station.config.preprocess.max_pixels)
    except (LookupError, OSError, InspectorError) as e:
        raise HTTPException(404, str(e)) from e
    return Response(body, media_type=kind, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/artifacts/{result_id}/{kind}")
def artifact(user: Viewer, station: StationDep, result_id: PartId, kind: str):
    path = files.artifact_file(station.store, load_part(station, result_id), kind)
    if path is None:
        raise HTTPException(404, f"part {result_id} has no {kind} file in its folder")
    try:
        body = read_regular(path, ARTIFACT_LIMIT, what="result file")
    except OSError as e:
        raise HTTPException(404, f"part {result_id}'s {kind} file cannot be read ({e.strerror})") from e
    return Response(
        body, media_type=files.media_type(path), headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get("/static/station.css")
def stylesheet():
    """The project's one stylesheet (inspector/common/documents), also inlined in report.html and the demo."""
    return Response(documents.stylesheet(), media_type="text/css", headers={"Cache-Control": "max-age=3600"})


@router.get("/favicon.ico")
def favicon():
    return Response(status_code=204, headers={"Cache-Control": "max-age=86400"})


@router.get("/colourbar.png")
def colour_bar(station: StationDep):
    return Response(
        files.colour_bar(station.config.visuals.colormap),
        media_type="image/png",
        headers={"Cache-Control": "max-age=86400"},
    )


# ----- shift --------------------------------------------------------------------------------------------
@router.get("/shift", response_class=HTMLResponse)
def shift_page(user: Viewer, request: Request, station: StationDep, at: str | None = None):
    moment = parse_local(at, "at") or datetime.now(timezone.utc)
    start, end = shift_of(moment, parse_shifts(",".join(station.settings.shifts)))
    rows = queries.shift_rows(station.store, start.astimezone(timezone.utc), end.astimezone(timezone.utc))
    figures = shift_figures(rows, start, end, station.class_names, station.good_classes)
    previous = start - timedelta(minutes=1)
    return render(
        request,
        "shift.html",
        user,
        start=start,
        end=end,
        s=figures,
        prev_at=previous.strftime("%Y-%m-%dT%H:%M"),
        next_at=end.strftime("%Y-%m-%dT%H:%M"),
        is_current=start <= datetime.now(timezone.utc) < end,
    )


# ----- export -------------------------------------------------------------------------------------------
@router.get("/export.zip")
def export(user: Admin, station: StationDep):
    stamp = datetime.now().strftime("%Y%m%d-%H%M")
    return StreamingResponse(
        dataset_zip(station.store, f"sise-reviewed-{stamp}"),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="sise-reviewed-{stamp}.zip"'},
    )


# ----- helpers ------------------------------------------------------------------------------------------
def local_time(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A template filter: a stored time on the station's local clock."""
    return value.astimezone().strftime(fmt) if value is not None else ""


def _to_part(result_id: int, qs: str, **extra) -> RedirectResponse:
    """Back to a part page with the queue's filters ``qs`` and ``extra`` (a signed message, saved=...)."""
    return RedirectResponse(f"/parts/{result_id}?{_qs(qs, **extra)}", status_code=303)


def _qs(qs: str, **extra) -> str:
    items = dict(parse_qsl(qs))
    items.update({k: str(v) for k, v in extra.items()})
    return urlencode(items)


def _filter_args(qs: str) -> dict:
    items = dict(parse_qsl(qs))
    keys = ("cls", "flagged", "unreviewed", "since", "until", "order", "failed", "serial", "line", "camera",
            "product")
    return {k: items.get(k) for k in keys}


def _reference(station, row: dict) -> dict | None:
    """What key r shows beside a part: the golden image given for its product and camera (--reference),
    else the part a reviewer most recently labelled good of the same product and camera whose image is
    still where it was (None when there is neither)."""
    newest = row["parts"][-1] if row.get("parts") else {}
    product, camera = newest.get("product"), newest.get("camera")
    key = station.golden_key(product, camera)
    if key is not None:
        url = "/reference?" + urlencode({"key": key}) + "&size="
        return {"url": url + "preview", "full": url + "full",
                "caption": f"golden image {_name(dict(station.settings.reference)[key])}"
                           + (f" ({key})" if key else "")}
    for other in queries.confirmed_good(station.store, station.good_classes, exclude=row["id"],
                                        product=product, camera=camera):
        if files.original_path(other) is not None:
            url = f"/parts/{other['id']}/picture?what=original&size="
            return {"url": url + "preview", "full": url + "full",
                    "caption": f"part #{other['id']}, labelled {other['label']} by {other['reviewer']} at "
                               f"{local_time(other['reviewed_at'], '%Y-%m-%d %H:%M')}"}
    return None


def _name(source_path: str) -> str:
    return os.path.basename(source_path) or source_path


def shift_figures(rows: list[dict], start: datetime, end: datetime, classes, good_classes) -> dict:
    done = [r for r in rows if r["status"] == "done"]
    reviewed = [r for r in done if r["verdict"] is not None]
    overruled = [r for r in reviewed if r["verdict"] == "overrule"]
    per_class = {c: 0 for c in classes}
    for r in done:
        per_class[r["prediction_name"]] = per_class.get(r["prediction_name"], 0) + 1
    for r in reviewed:  # a label no configured class has (the classes changed, a shared store) still counts
        if r["review_label"] is not None:
            per_class.setdefault(r["review_label"], 0)
    labels = list(per_class) + ["inconclusive"]
    confusion = {m: {lab: 0 for lab in labels} for m in per_class}
    for r in reviewed:
        label = r["review_label"] if r["review_label"] is not None else "inconclusive"
        confusion[r["prediction_name"]][label] += 1
    hours = max(1, round((end - start).total_seconds() / 3600))
    per_hour = [0] * hours
    for r in rows:
        k = int((r["finished_at"] - start).total_seconds() // 3600)
        if 0 <= k < hours:
            per_hour[k] += 1
    return {
        "total": len(rows),
        "done": len(done),
        "failed": len(rows) - len(done),
        "per_class": per_class,
        "rejects": sum(v for c, v in per_class.items() if c not in good_classes),
        "reviewed": len(reviewed),
        "reviewed_share": len(reviewed) / len(done) if done else None,
        "overruled": len(overruled),
        "overrule_rate": len(overruled) / len(reviewed) if reviewed else None,
        "labels": labels,
        "confusion": confusion,
        "per_hour": [
            ((start + timedelta(hours=k)).astimezone().strftime("%H:%M"), n) for k, n in enumerate(per_hour)
        ],
    }
