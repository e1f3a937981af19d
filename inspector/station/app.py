"""The review station's web app (FastAPI), assembled: server-rendered pages for operators (pages.py), a
versioned API for the line (api.py), health, metrics and the API's page (ops.py); who may call what is
stated once, as dependencies (deps.py). This module adds what is common to all of them: the station's
life, security headers, bodies refused before they are read, and errors as pages or JSON. All state is in
the results store; the app keeps none of its own.

Pages (log-in needed): ``/queue``, ``/parts/{id}``, ``/shift``, ``/export.zip`` (admin).
API: ``/api/v1/...`` (session cookie + ``X-CSRF-Token`` header, or HTTP Basic). Open: ``/healthz``,
``/metrics``, ``/login``, ``/docs`` (OpenAPI, served from local files).
"""

from __future__ import annotations

import contextlib
from importlib.resources import files as package_files
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..common.version import __version__
from ..store import StoreError
from . import api, ops, pages
from .deps import COOKIE, LoginNeeded
from .service import Station

HERE = package_files("inspector.station")
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
FORM_BYTES = 64 * 1024  # the largest log-in or verdict form


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
    app.state.templates = templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["local"] = pages.local_time
    templates.env.filters["q"] = lambda s: quote(str(s), safe="")
    for router in (pages.router, api.router, ops.router):  # before /static: the stylesheet is a page route
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    with contextlib.suppress(ImportError):
        import swagger_ui_bundle

        app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        refused = refuse_body(request, station.settings.max_upload_bytes)
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
        if is_api(request):
            return JSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)
        wrong = ", ".join(".".join(str(p) for p in e["loc"][1:]) for e in exc.errors())
        return error_page(request, 422, f"this address has a value the station cannot use ({wrong})")

    def error_page(request: Request, status: int, message: str, headers=None):
        """JSON for the API; for the operator's pages, a page with the message and a way back."""
        if is_api(request):
            return JSONResponse({"detail": message}, status_code=status, headers=headers)
        context = {"user": None, "version": __version__, "status": status, "message": message}
        response = templates.TemplateResponse(request, "error.html", context, status_code=status)
        for key, value in (headers or {}).items():
            response.headers[key] = value
        return response

    return app


def is_api(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/healthz", "/metrics", "/openapi.json"))


def refuse_body(request: Request, max_upload: int) -> Response | None:
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
