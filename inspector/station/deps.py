"""What every route of the station may ask of a request, stated once as FastAPI dependencies: who is
asking and with which role (pages send strangers to the log-in page, the API answers 401/403 and checks
the CSRF header of cookie sessions), which part, which queue filters and times, and the messages a page
may show."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import secrets
from datetime import datetime, timedelta, timezone
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Query, Request
from fastapi import Path as FastPath

from . import auth, queries
from .service import Station

COOKIE = "sise_session"
MAX_ID = 2**63 - 1  # the database's integer range: larger ids are no part, not a crash
Page = Annotated[int, Query(ge=0, le=10**6)]
PartId = Annotated[int, FastPath(ge=1, le=MAX_ID)]
_MESSAGE_KEY = secrets.token_bytes(32)


def station_of(request: Request) -> Station:
    return request.app.state.station


StationDep = Annotated[Station, Depends(station_of)]


class LoginNeeded(Exception):
    """A page asked for without a log-in: the app answers with a redirect to the log-in page."""

    def __init__(self, path: str):
        self.path = path


# ----- who is asking ------------------------------------------------------------------------------------
def current_user(request: Request) -> auth.User | None:
    store = station_of(request).store
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
            raise LoginNeeded(same_site_referer(request) or "/queue")  # a form's page, not its POST target
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


# ----- which part ---------------------------------------------------------------------------------------
def load_part(station: Station, result_id: int) -> dict:
    """The part with its history, or 404."""
    row = queries.part(station.store, result_id)
    if row is None:
        raise HTTPException(404, f"no part {result_id}")
    return row


# ----- messages a page shows ----------------------------------------------------------------------------
def signed(message: str, field: str = "error") -> dict:
    """Query parameters carrying a message the station wrote (under ``field``: "error", or "done" for a
    report of work done): pages show only messages whose signature holds, so a link cannot put words of
    its own into the station's alert box."""
    digest = hmac.new(_MESSAGE_KEY, f"{field}:{message}".encode(), "sha256").hexdigest()[:32]
    return {field: message, "sig" if field == "error" else f"{field}_sig": digest}


def shown_message(request: Request, field: str = "error") -> str | None:
    key = "sig" if field == "error" else f"{field}_sig"
    message, sig = request.query_params.get(field), request.query_params.get(key, "")
    if message and hmac.compare_digest(signed(message, field)[key], sig):
        return message
    return None


# ----- where to go after a form -------------------------------------------------------------------------
def same_site_referer(request: Request) -> str | None:
    parts = urlsplit(request.headers.get("referer", ""))
    if parts.netloc and parts.netloc == request.headers.get("host") and parts.path.startswith("/"):
        return safe_next(parts.path + (f"?{parts.query}" if parts.query else ""))
    return None


def safe_next(target: str) -> str:
    """Only a path on this station (never another site) after logging in."""
    return (
        target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/queue"
    )


# ----- times and the queue's filters --------------------------------------------------------------------
def parse_local(text: str | None, name: str) -> datetime | None:
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


def parse_utc(text: str | None, name: str) -> datetime | None:
    value = parse_local(text, name)
    return value.astimezone(timezone.utc) if value is not None else None


def read_filters(
    cls: str | None,
    flagged: str | None,
    unreviewed: str | None,
    since: str | None,
    until: str | None,
    order: str | None,
    failed: str | None = None,
    serial: str | None = None,
    line: str | None = None,
    camera: str | None = None,
    product: str | None = None,
) -> queries.Filters:
    return queries.Filters(
        serial=(serial or "").strip()[:200] or None,
        line=line or None,
        camera=camera or None,
        product=product or None,
        cls=cls or None,
        flagged=flagged == "1",
        unreviewed=unreviewed == "1",
        failed=failed == "1",
        since=parse_local(since, "since"),
        until=parse_local(until, "until"),
        rejects_first=order != "newest",
    )


def read_filter_query(
    cls: str | None = None,
    flagged: str | None = None,
    unreviewed: str | None = None,
    since: str | None = None,
    until: str | None = None,
    order: str | None = None,
    failed: str | None = None,
    serial: str | None = None,
    line: str | None = None,
    camera: str | None = None,
    product: str | None = None,
):
    return read_filters(cls, flagged, unreviewed, since, until, order, failed, serial, line, camera, product)


QueueFilters = Annotated[queries.Filters, Depends(read_filter_query)]
