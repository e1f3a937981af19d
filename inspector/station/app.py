"""The review station's web app (FastAPI): server-rendered pages for operators, a versioned API for the
line, health and metrics. All state is in the results store; the app keeps none of its own.

Pages (log-in needed): ``/queue``, ``/parts/{id}``, ``/shift``, ``/export.zip`` (admin).
API: ``/api/v1/...`` (session cookie + ``X-CSRF-Token`` header, or HTTP Basic). Open: ``/healthz``,
``/metrics``, ``/login``, ``/docs`` (OpenAPI, served from local files).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import ipaddress
import os
import secrets
import time
from datetime import datetime, timedelta, timezone
from importlib.resources import files as package_files
from typing import Annotated
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as FastPath
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..common.reading import ARTIFACT_LIMIT, read_regular
from ..common.version import __version__
from ..errors import InspectorError
from ..store import StoreError, display_path
from . import auth, files, queries
from .export import dataset_zip
from .metrics import prometheus_text
from .service import Station, UploadRefused
from .shifts import parse_shifts, shift_of
from .verdicts import VERDICTS, VerdictError, label_for

COOKIE = "sise_session"
LOGIN_COOKIE = "sise_login"  # double-submit token of the login form (no session exists yet)
HERE = package_files("inspector.station")
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class ReviewBody(BaseModel):
    """A verdict sent by the line or a script."""

    model_config = ConfigDict(extra="forbid")
    verdict: str = Field(description="one of " + ", ".join(VERDICTS))
    label: str | None = Field(None, max_length=200, description="the class, for overrule")
    comment: str | None = Field(None, max_length=2000)


class LoginNeeded(Exception):
    def __init__(self, path: str):
        self.path = path


# ----- who is asking ------------------------------------------------------------------------------------
def current_user(request: Request) -> auth.User | None:
    store = request.app.state.station.store
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            name, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        try:
            return auth.check_password(store, name, password, client_address(request))
        except auth.TooManyAttempts as e:
            raise HTTPException(429, str(e)) from e
    return auth.session_user(store, request.cookies.get(COOKIE))


def client_address(request: Request) -> str | None:
    """The peer's address, for the lock-out by address; None for this machine (a reverse proxy on it
    would make every client one address, and one guesser would lock everybody out)."""
    host = request.client.host if request.client else None
    try:
        return None if host is None or ipaddress.ip_address(host).is_loopback else host
    except ValueError:
        return host


def csrf_ok(request: Request, user: auth.User, sent: str | None) -> bool:
    if request.headers.get("authorization", "").lower().startswith("basic "):
        return True  # browsers never send Basic credentials on their own: the station never asks for them
    return bool(sent) and hmac.compare_digest(sent, user.csrf_token)


class PageUser:
    """A logged-in user with at least ``role``; others are sent to the log-in page (403 for a lower role)."""

    def __init__(self, role: str):
        self.role = role

    def __call__(self, request: Request) -> auth.User:
        user = current_user(request)
        if user is None:
            if request.method == "GET":
                raise LoginNeeded(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
            raise LoginNeeded(_same_site_referer(request) or "/queue")  # a form's page, not its POST target
        if not user.may(self.role):
            raise HTTPException(403, f"this needs the {self.role} role; you are {user.role}")
        return user


class ApiUser:
    """As :class:`PageUser` for the API: 401 without credentials; a POST with the session cookie must
    carry the session's ``X-CSRF-Token``."""

    def __init__(self, role: str):
        self.role = role

    def __call__(self, request: Request) -> auth.User:
        user = current_user(request)
        if user is None:
            raise HTTPException(401, "log in: HTTP Basic with a station user, or the session cookie")
        if not user.may(self.role):
            raise HTTPException(403, f"this needs the {self.role} role; you are {user.role}")
        if request.method == "POST" and not csrf_ok(request, user, request.headers.get("x-csrf-token")):
            raise HTTPException(403, "missing or wrong X-CSRF-Token header (see the page's csrf meta tag)")
        return user


Viewer = Annotated[auth.User, Depends(PageUser("viewer"))]
Reviewer = Annotated[auth.User, Depends(PageUser("reviewer"))]
Admin = Annotated[auth.User, Depends(PageUser("admin"))]
ApiViewer = Annotated[auth.User, Depends(ApiUser("viewer"))]
ApiReviewer = Annotated[auth.User, Depends(ApiUser("reviewer"))]
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
MAX_ID = 2**63 - 1  # the database's integer range: larger ids are no part, not a crash
Page = Annotated[int, Query(ge=0, le=10**6)]
PartId = Annotated[int, FastPath(ge=1, le=MAX_ID)]
_MESSAGE_KEY = secrets.token_bytes(32)


def signed(message: str) -> dict:
    """Query parameters carrying a message the station wrote: pages show only messages whose signature
    holds, so a link cannot put words of its own into the station's alert box."""
    return {"error": message, "sig": hmac.new(_MESSAGE_KEY, message.encode(), "sha256").hexdigest()[:32]}


def shown_message(request: Request) -> str | None:
    message, sig = request.query_params.get("error"), request.query_params.get("sig", "")
    if message and hmac.compare_digest(signed(message)["sig"], sig):
        return message
    return None


def read_filters(
    cls: str | None,
    flagged: str | None,
    unreviewed: str | None,
    since: str | None,
    until: str | None,
    order: str | None,
) -> queries.Filters:
    return queries.Filters(
        cls=cls or None,
        flagged=flagged == "1",
        unreviewed=unreviewed == "1",
        since=_parse_local(since, "since"),
        until=_parse_local(until, "until"),
        rejects_first=order != "newest",
    )


def read_filter_query(
    cls: str | None = None,
    flagged: str | None = None,
    unreviewed: str | None = None,
    since: str | None = None,
    until: str | None = None,
    order: str | None = None,
):
    return read_filters(cls, flagged, unreviewed, since, until, order)


QueueFilters = Annotated[queries.Filters, Depends(read_filter_query)]


def create_app(station: Station) -> FastAPI:
    """The app around a :class:`Station`; the station is started and stopped with the app."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        station.start()
        try:
            yield
        finally:
            station.stop()

    app = FastAPI(
        title="SISE Inspector review station",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Explanations of a defect classifier's verdicts, operator verdicts on them, and "
        "the line's API. Authenticate with HTTP Basic (a station user) or a session "
        "cookie plus the X-CSRF-Token header.",
    )
    app.state.station = station
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["local"] = _local
    templates.env.filters["q"] = lambda s: quote(str(s), safe="")
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    with contextlib.suppress(ImportError):
        import swagger_ui_bundle

        app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")
    shift_starts = parse_shifts(",".join(station.settings.shifts))
    store = station.store

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        refused = _refuse_body(request, station.settings.max_upload_bytes)
        response = refused if refused is not None else await call_next(request)
        if not request.url.path.startswith("/docs"):
            response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(LoginNeeded)
    async def to_login(_request: Request, exc: LoginNeeded):
        return RedirectResponse("/login?" + urlencode({"next": exc.path}), status_code=303)

    @app.exception_handler(StoreError)
    async def store_down(request: Request, exc: StoreError):
        return error_page(request, 503, f"the results store failed: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_page(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        if _is_api(request):
            return JSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)
        wrong = ", ".join(".".join(str(p) for p in e["loc"][1:]) for e in exc.errors())
        return error_page(request, 422, f"this address has a value the station cannot use ({wrong})")

    def error_page(request: Request, status: int, message: str, headers=None):
        """JSON for the API; for the operator's pages, a page with the message and a way back."""
        if _is_api(request):
            return JSONResponse({"detail": message}, status_code=status, headers=headers)
        context = {"user": None, "version": __version__, "status": status, "message": message}
        response = templates.TemplateResponse(request, "error.html", context, status_code=status)
        for key, value in (headers or {}).items():
            response.headers[key] = value
        return response

    def render(request: Request, name: str, user: auth.User | None, **context):
        context.update(
            user=user,
            version=__version__,
            classes=station.class_names,
            good_classes=station.good_classes,
            watching=station.settings.watch_dir is not None,
        )
        return templates.TemplateResponse(request, name, context)

    # ----- log-in ---------------------------------------------------------------------------------------
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def home():
        return RedirectResponse("/queue", status_code=303)

    @app.get("/login", include_in_schema=False)
    def login_page(request: Request, next: str = "/queue"):
        token = secrets.token_urlsafe(24)
        response = render(
            request, "login.html", None, next=_safe_next(next), token=token, error=shown_message(request)
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

    @app.post("/login", include_in_schema=False)
    def login(
        request: Request,
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
            user = auth.check_password(store, username, password, client_address(request))
        except auth.TooManyAttempts as e:
            return RedirectResponse("/login?" + urlencode({"next": next, **signed(str(e))}), status_code=303)
        if user is None:
            return RedirectResponse(
                "/login?" + urlencode({"next": next, **signed("wrong user name or password")}),
                status_code=303,
            )
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(
            COOKIE,
            auth.open_session(store, user),
            httponly=True,
            samesite="lax",  # links from the line's other systems open the part; forms carry CSRF tokens
            secure=station.settings.secure_cookies,
            max_age=int(auth.SESSION_HOURS * 3600),
        )
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(user: Viewer, request: Request, csrf_token: Annotated[str, Form()] = ""):
        if not csrf_ok(request, user, csrf_token):
            raise HTTPException(403, "missing or wrong CSRF token; reload the page")
        auth.close_session(store, request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    # ----- queue ----------------------------------------------------------------------------------------
    @app.get("/queue", response_class=HTMLResponse, include_in_schema=False)
    def queue_page(f: QueueFilters, user: Viewer, request: Request, page: Page = 0):
        rows, total = queries.queue(store, f, station.good_classes, page)
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
            failed_total=queries.counts(store)["by_status"].get("failed", 0),
            waiting=station.waiting_files(),
        )

    @app.get("/queue/rows", response_class=HTMLResponse, include_in_schema=False)
    def queue_rows(f: QueueFilters, user: Viewer, request: Request, page: Page = 0):
        rows, total = queries.queue(store, f, station.good_classes, page)
        response = render(request, "queue_rows.html", user, rows=rows, qs=f.query_string())
        response.headers["X-Queue-Total"] = str(total)
        response.headers["X-Queue-Waiting"] = str(station.waiting_files())
        return response

    # ----- one part -------------------------------------------------------------------------------------
    def load_part(result_id: int) -> dict:
        row = queries.part(store, result_id)
        if row is None:
            raise HTTPException(404, f"no part {result_id}")
        return row

    @app.get("/parts/{result_id}", response_class=HTMLResponse, include_in_schema=False)
    def part_page(
        f: QueueFilters,
        user: Viewer,
        request: Request,
        result_id: PartId,
        saved: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    ):
        row = load_part(result_id)
        previous, following = queries.neighbours(store, result_id, f, station.good_classes)
        scores = _named_scores(row.get("scores"), station.class_names)
        saved_part = queries.part(store, saved) if saved else None
        saved_part = saved_part if saved_part and saved_part["history"] else None
        return render(
            request,
            "part.html",
            user,
            part=row,
            scores=scores,
            prev_id=previous,
            next_id=following,
            qs=f.query_string(),
            verdicts=VERDICTS,
            saved=saved_part,
            part_name=_name(row["source_path"]),
            has_original=files.original_path(row) is not None,
            error=shown_message(request),
            end=request.query_params.get("end"),
            seen=row["history"][-1]["id"] if row["history"] else 0,
        )

    @app.post("/parts/{result_id}/review", include_in_schema=False)
    def review_form(
        user: Reviewer,
        request: Request,
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
        back = f"/parts/{result_id}?"
        if not csrf_ok(request, user, csrf_token):
            message = (
                "the page was out of date (logged in again elsewhere?); nothing was recorded: "
                "give the verdict again"
            )
            return RedirectResponse(back + _qs(qs, **signed(message)), status_code=303)
        row = load_part(result_id)
        newest = row["history"][-1] if row["history"] else None
        if (newest["id"] if newest else 0) != seen:
            message = (
                f"{newest['reviewer']} gave a verdict ({newest['verdict']} -> "
                f"{newest['label'] or 'inconclusive'}) while this page was open; nothing was recorded: "
                "look again and give yours"
            )
            return RedirectResponse(back + _qs(qs, **signed(message)), status_code=303)
        # the next part is found before the verdict: with "unreviewed", this part leaves the list
        filters = read_filters(**_filter_args(qs))
        _, following = queries.neighbours(store, result_id, filters, station.good_classes)
        try:
            record_verdict(row, verdict, label, comment, user)
        except VerdictError as e:
            return RedirectResponse(back + _qs(qs, **signed(str(e))), status_code=303)
        if following is None:  # the end of the list: say so, and how many are still to review
            left = queries.counts(store)["unreviewed"]
            return RedirectResponse(
                f"/parts/{result_id}?{_qs(qs, saved=result_id, end=left)}", status_code=303
            )
        return RedirectResponse(f"/parts/{following}?{_qs(qs, saved=result_id)}", status_code=303)

    def record_verdict(row: dict, verdict: str, label: str | None, comment: str | None, user: auth.User):
        if row["status"] != "done":
            raise VerdictError(f"part {row['id']} has no explanation (it failed); nothing to review")
        stored, new_label = label_for(
            verdict, row["prediction_name"], label or None, station.class_names, station.good_classes
        )
        note = (comment or "").strip()[:2000] or None
        return store.add_review(row["id"], verdict=stored, label=new_label, reviewer=user.username, note=note)

    @app.get("/parts/{result_id}/original", include_in_schema=False)
    def original(user: Viewer, result_id: PartId):
        data = files.original_bytes(load_part(result_id))
        if data is None:
            raise HTTPException(404, "the original image is no longer where it was explained")
        try:
            body, kind = files.for_browser(data, station.config.preprocess.max_pixels)
        except InspectorError as e:
            raise HTTPException(415, f"the original image cannot be shown: {e}") from e
        return Response(body, media_type=kind, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/parts/{result_id}/overlay-cut", include_in_schema=False)
    def overlay_cut(user: Viewer, result_id: PartId):
        row = load_part(result_id)
        path = files.artifact_file(store, row, "overlay")
        data = files.original_bytes(row)
        if path is None or data is None:
            raise HTTPException(404, "the overlay or the original image is missing")
        try:
            body = files.overlay_cut(path, data, station.config.preprocess.max_pixels)
        except (OSError, InspectorError) as e:
            raise HTTPException(404, str(e)) from e
        return Response(body, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/artifacts/{result_id}/{kind}", include_in_schema=False)
    def artifact(user: Viewer, result_id: PartId, kind: str):
        path = files.artifact_file(store, load_part(result_id), kind)
        if path is None:
            raise HTTPException(404, f"part {result_id} has no {kind} file in its folder")
        try:
            body = read_regular(path, ARTIFACT_LIMIT, what="result file")
        except OSError as e:
            raise HTTPException(404, f"part {result_id}'s {kind} file cannot be read ({e.strerror})") from e
        return Response(
            body, media_type=files.media_type(path), headers={"Cache-Control": "private, max-age=3600"}
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204, headers={"Cache-Control": "max-age=86400"})

    @app.get("/colourbar.png", include_in_schema=False)
    def colour_bar():
        return Response(
            files.colour_bar(station.config.visuals.colormap),
            media_type="image/png",
            headers={"Cache-Control": "max-age=86400"},
        )

    # ----- shift ----------------------------------------------------------------------------------------
    @app.get("/shift", response_class=HTMLResponse, include_in_schema=False)
    def shift_page(user: Viewer, request: Request, at: str | None = None):
        moment = _parse_local(at, "at") or datetime.now(timezone.utc)
        start, end = shift_of(moment, shift_starts)
        rows = queries.shift_rows(store, start.astimezone(timezone.utc), end.astimezone(timezone.utc))
        figures = _shift_figures(rows, start, end, station.class_names, station.good_classes)
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

    # ----- export ---------------------------------------------------------------------------------------
    @app.get("/export.zip", include_in_schema=False)
    def export(user: Admin):
        stamp = datetime.now().strftime("%Y%m%d-%H%M")
        return StreamingResponse(
            dataset_zip(store, f"sise-reviewed-{stamp}"),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="sise-reviewed-{stamp}.zip"'},
        )

    # ----- the line's API -------------------------------------------------------------------------------
    @app.post("/api/v1/explain", status_code=201, tags=["line"], responses=EXPLAIN_RESPONSES)
    def api_explain(
        user: ApiReviewer,
        image: Annotated[UploadFile, File(description="the part's image file")],
        wait: Annotated[
            float,
            Query(ge=0, le=MAX_WAIT, description="seconds to wait for an image that another station or "
                  "audit is explaining at this moment, before answering 202"),
        ] = DEFAULT_WAIT,
    ):
        """Explain one image (PNG, JPEG, BMP, TIFF, WebP, PNM) and record it; the same image sent again
        returns the stored result. Every 200 and 201 carries the result. An image that another process
        is explaining right now is waited for up to ``wait`` seconds, then answered ``202 Accepted`` with
        a ``Location`` to poll (``GET /api/v1/results/{id}``: 202 while it runs, 200 with the result).
        411/413/401 (before the body is read: see ``_refuse_body``), 413: too many bytes or pixels, 415:
        a format whose size no header check reads, 422: a damaged image (recorded as a failed part),
        503: the result cannot be recorded now (the store or the disk)."""
        data = image.file.read(station.settings.max_upload_bytes + 1)
        deadline = time.monotonic() + wait
        for _ in range(5):  # an image given back unfinished by the other process is explained here
            try:
                outcome = station.explain_upload(data, image.filename)
            except UploadRefused as e:
                raise HTTPException(e.status, str(e)) from e
            except InspectorError as e:
                raise HTTPException(503, str(e)) from e
            if outcome.state != "busy":
                break
            row = wait_until_finished(outcome.result_id, deadline)
            if row is not None:
                return still_running(row) if row["status"] == "running" else done_elsewhere(row)
        else:
            raise HTTPException(503, "the image was claimed and given back by other processes several "
                                "times in a row; send it again")
        row = load_part(outcome.result_id)
        body = _api_result(row, station.class_names)
        body["state"] = outcome.state
        if row["status"] == "failed":
            return JSONResponse(body, status_code=422)
        return JSONResponse(body, status_code=201 if outcome.state == "explained" else 200)

    def wait_until_finished(result_id: int, deadline: float) -> dict | None:
        """The result's row once it is no longer running, or at the deadline; None once it is gone."""
        while True:
            row = queries.part(store, result_id)
            if row is None or row["status"] != "running" or time.monotonic() >= deadline:
                return row
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def done_elsewhere(row: dict) -> JSONResponse:
        """The result another process finished while this request waited (as for an image sent again)."""
        body = _api_result(load_part(row["id"]), station.class_names)
        body["state"] = "done" if row["status"] == "done" else "skipped_failed"
        return JSONResponse(body, status_code=422 if row["status"] == "failed" else 200)

    def still_running(row: dict) -> JSONResponse:
        location = f"/api/v1/results/{row['id']}"
        body = {"result_id": row["id"], "image_sha256": row["image_sha256"], "status": "running",
                "state": "busy", "location": location,
                "detail": "another station or audit is explaining this image now; GET the location until "
                          "it answers 200 with the result"}
        return JSONResponse(body, status_code=202, headers={"Location": location, "Retry-After": "1"})

    @app.get("/api/v1/results", tags=["line"])
    def api_results(
        user: ApiViewer,
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
    ):
        """Finished results in the order they finished, each with its newest verdict; follow ``next``."""
        moment = _parse_utc(since, "since")
        rows = queries.results_since(store, moment, after_id, limit)
        kinds = queries.artifact_kinds(store, [r["id"] for r in rows])
        items = [_api_result({**r, "artifacts": kinds.get(r["id"], [])}, station.class_names) for r in rows]
        following = None
        if len(rows) == limit:
            last = rows[-1]
            following = "/api/v1/results?" + urlencode(
                {"since": last["finished_at"].isoformat(), "after_id": last["id"], "limit": limit}
            )
        return {"results": items, "next": following}

    @app.get("/api/v1/results/{result_id}", tags=["line"], responses=RESULT_RESPONSES)
    def api_result(user: ApiViewer, result_id: PartId):
        """One result with its verdict history; 202 with ``Location`` while it is still being explained,
        404 when there is no such result (an explanation given up unfinished leaves none: send the image
        again)."""
        row = load_part(result_id)
        if row["status"] == "running":
            return still_running(row)
        body = _api_result(row, station.class_names)
        body["history"] = [_api_review(h) for h in row["history"]]
        return body

    @app.post("/api/v1/results/{result_id}/review", status_code=201, tags=["line"])
    def api_review(user: ApiReviewer, result_id: PartId, body: ReviewBody):
        """Append a verdict (nothing is ever changed in place): ``confirm`` (the model's label),
        ``overrule_good`` (the first of good_classes), ``overrule`` (to ``label``), ``inconclusive``."""
        row = load_part(result_id)
        try:
            review = record_verdict(row, body.verdict, body.label, body.comment, user)
        except VerdictError as e:
            raise HTTPException(422, str(e)) from e
        return _api_review(review)

    @app.get("/api/v1/reviews", tags=["line"])
    def api_reviews(
        user: ApiViewer,
        after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ):
        """Verdicts in the order they were given, after ``after_id``."""
        return {
            "reviews": [
                {**_api_review(r), "image_sha256": r["image_sha256"], "model_label": r["prediction_name"]}
                for r in queries.reviews_after(store, after_id, limit)
            ]
        }

    @app.head("/healthz", include_in_schema=False)
    @app.get("/healthz", tags=["ops"])
    def healthz():
        """200 when the store answers, results can be recorded (the station's folder writable with 16 MiB
        free, no claim waiting to be given back) and (with --watch) the folder is watched and its images
        recorded; 503 with the problems otherwise."""
        problems = []
        try:
            with store.read() as conn:  # also fails when an SQLite store's file was deleted or replaced
                conn.execute(sa.text("SELECT 1"))
        except StoreError as e:
            problems.append(f"store: {e}")
        for place in store.writable_places():
            if not os.access(place, os.W_OK):
                problems.append(f"store: {display_path(place)} cannot be written (permissions, read-only?)")
        problems += station.output_problems()
        if station.settings.watch_dir and not station.watching:
            problems.append(f"watch: {station.watch_error or 'not running'}")
        body = {
            "status": "ok" if not problems else "failing",
            "problems": problems,
            "version": __version__,
            "provider": station.insp.sessions.provider,
        }
        return JSONResponse(body, status_code=200 if not problems else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics():
        """Prometheus text format."""
        return Response(prometheus_text(station), media_type="text/plain; version=0.0.4")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="SISE Inspector station API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    return app


# ----- helpers ----------------------------------------------------------------------------------------------
def _local(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return value.astimezone().strftime(fmt) if value is not None else ""


def _parse_local(text: str | None, name: str) -> datetime | None:
    """A time from a form (``YYYY-MM-DDTHH:MM``, the station's local clock) as an aware datetime."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
        value = value.astimezone() if value.tzinfo is None else value
        (value.astimezone(timezone.utc) + timedelta(days=2)) - timedelta(days=4)  # room for a shift around it
    except (ValueError, OverflowError) as e:
        raise HTTPException(422, f"{name}={text!r}: not a time like 2026-11-27T06:00") from e
    return value


def _parse_utc(text: str | None, name: str) -> datetime | None:
    value = _parse_local(text, name)
    return value.astimezone(timezone.utc) if value is not None else None


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/healthz", "/metrics", "/openapi.json"))


FORM_BYTES = 64 * 1024  # the largest log-in or verdict form


def _refuse_body(request: Request, max_upload: int) -> Response | None:
    """Refuse a request body before any of it is read (no one fills the disk through an upload's
    temporary file): uploads need a Content-Length within the limit and credentials; other POSTs are
    small forms."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    declared = request.headers.get("content-length")
    upload = request.url.path == "/api/v1/explain"
    if declared is None or not declared.isdigit():
        if not upload and request.headers.get("transfer-encoding") is None:
            return None  # no body at all
        return JSONResponse({"detail": "send a Content-Length header"}, status_code=411)
    limit = max_upload + FORM_BYTES if upload else FORM_BYTES
    if int(declared) > limit:
        return JSONResponse(
            {"detail": f"a body of {declared} bytes is over the limit of {limit} bytes"}, status_code=413
        )
    if upload and "authorization" not in request.headers and COOKIE not in request.cookies:
        return JSONResponse(
            {"detail": "log in: HTTP Basic with a station user, or the session cookie"}, status_code=401
        )
    return None


def _same_site_referer(request: Request) -> str | None:
    from urllib.parse import urlsplit

    parts = urlsplit(request.headers.get("referer", ""))
    if parts.netloc and parts.netloc == request.headers.get("host") and parts.path.startswith("/"):
        return _safe_next(parts.path + (f"?{parts.query}" if parts.query else ""))
    return None


def _safe_next(target: str) -> str:
    """Only a path on this station (never another site) after logging in."""
    return (
        target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/queue"
    )


def _qs(qs: str, **extra) -> str:
    from urllib.parse import parse_qsl

    items = dict(parse_qsl(qs))
    items.update({k: str(v) for k, v in extra.items()})
    return urlencode(items)


def _filter_args(qs: str) -> dict:
    from urllib.parse import parse_qsl

    items = dict(parse_qsl(qs))
    return {k: items.get(k) for k in ("cls", "flagged", "unreviewed", "since", "until", "order")}


def _name(source_path: str) -> str:
    return os.path.basename(source_path) or source_path


def _named_scores(scores, classes) -> list[tuple[str, float | None]]:
    if not scores:
        return []
    return [(classes[i] if i < len(classes) else str(i), s) for i, s in enumerate(scores)]


def _api_result(row: dict, classes) -> dict:
    rid = row["id"]
    return {
        "result_id": rid,
        "image_sha256": row["image_sha256"],
        "status": row["status"],
        "source": display_path(row["source_path"]),
        "prediction": row["prediction_name"],
        "confidence": row["confidence"],
        "scores": dict(_named_scores(row.get("scores"), classes)),
        "regions": row.get("regions") or [],
        "flagged": row.get("flagged"),
        "roi_inside": row.get("roi_inside"),
        "error": row.get("error"),
        "finished_at": row["finished_at"].isoformat() if row.get("finished_at") else None,
        "verdict": row.get("verdict"),
        "review_label": row.get("review_label"),
        "part_url": f"/parts/{rid}",
        "artifacts": {kind: f"/artifacts/{rid}/{kind}" for kind in row.get("artifacts", {})},
    }


def _api_review(r: dict) -> dict:
    return {
        "review_id": r["id"],
        "result_id": r["result_id"],
        "verdict": r["verdict"],
        "label": r["label"],
        "previous_label": r["previous_label"],
        "reviewer": r["reviewer"],
        "comment": r["note"],
        "created_at": r["created_at"].isoformat(),
    }


def _shift_figures(rows: list[dict], start: datetime, end: datetime, classes, good_classes) -> dict:
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
        confusion[r["prediction_name"]][
            r["review_label"] if r["review_label"] is not None else "inconclusive"
        ] += 1
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
