"""The routes for whoever runs the station, open without a log-in: /healthz (can results be recorded?),
/metrics (Prometheus) and /docs (the API's OpenAPI page, served from local files)."""

from __future__ import annotations

import os

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response

from ..common.version import __version__
from ..store import StoreError, display_path
from .deps import StationDep
from .metrics import prometheus_text

router = APIRouter(tags=["ops"])


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz")
def healthz(station: StationDep):
    """200 when the store answers, results can be recorded (the station's folder writable with 16 MiB
    free, no claim waiting to be given back) and (with --watch) the folder is watched and its images
    recorded; 503 with the problems otherwise."""
    problems = []
    store = station.store
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


@router.get("/metrics", response_class=Response)
def metrics(station: StationDep):
    """Prometheus text format."""
    return Response(prometheus_text(station), media_type="text/plain; version=0.0.4")


@router.get("/docs", include_in_schema=False)
def docs():
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="SISE Inspector station API",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js",
        swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/docs-assets/favicon-32x32.png",
    )
