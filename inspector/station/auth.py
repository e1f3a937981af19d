"""Users, passwords and login sessions of the review station, kept in the results store.

Passwords are hashed with scrypt (``hashlib.scrypt``, a memory-hard KDF) and a random salt per user; a
login session is a random token in an HttpOnly cookie of which the store keeps only the SHA-256, with its
own CSRF token that every form and every cookie-authenticated API call must send back.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from ..errors import InspectorError
from ..store import Store
from ..store.db import as_utc, utcnow
from ..store.schema import login_failures, sessions, users
from ..store.store import db_now

ROLES = ("viewer", "reviewer", "admin")  # each role may do what the ones before it may
SESSION_HOURS = 12.0  # a shift and a half: an operator logs in once per shift
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_USERNAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
MIN_PASSWORD = 8


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    csrf_token: str = ""  # of the login session the request came with (empty for HTTP Basic)

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), dklen=len(digest) // 2, n=int(n), r=int(r), p=int(p)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


_DUMMY_HASH = hash_password(secrets.token_hex(8))  # unknown users cost as much time as wrong passwords


def check_new_user(username: str, password: str, role: str) -> None:
    if not _USERNAME.fullmatch(username):
        raise InspectorError(f"user name {username!r}: use 1-64 letters, digits and . _ @ -")
    if role not in ROLES:
        raise InspectorError(f"--role {role}: choose one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise InspectorError(f"the password must have at least {MIN_PASSWORD} characters")


def add_user(store: Store, username: str, password: str, role: str, *, update: bool = False) -> None:
    check_new_user(username, password, role)
    row = {"password_hash": hash_password(password), "role": role, "disabled": False}
    with store.begin() as conn:
        exists = conn.execute(sa.select(users.c.id).where(users.c.username == username)).scalar()
        if exists is not None and not update:
            raise InspectorError(f"user {username} exists; add --update to change the password or role")
        if exists is None:
            conn.execute(sa.insert(users).values(username=username, created_at=utcnow(), **row))
        else:
            conn.execute(sa.update(users).where(users.c.id == exists).values(row))
            conn.execute(sa.delete(sessions).where(sessions.c.user_id == exists))  # log them out everywhere


def disable_user(store: Store, username: str) -> None:
    with store.begin() as conn:
        uid = conn.execute(sa.select(users.c.id).where(users.c.username == username)).scalar()
        if uid is None:
            raise InspectorError(f"no user {username}; `inspector station list-users` lists them")
        conn.execute(sa.update(users).where(users.c.id == uid).values(disabled=True))
        conn.execute(sa.delete(sessions).where(sessions.c.user_id == uid))


def list_users(store: Store) -> list[dict]:
    with store.read() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.select(users.c.username, users.c.role, users.c.disabled, users.c.created_at).order_by(
                    users.c.username
                )
            ).mappings()
        ]


class TooManyAttempts(InspectorError):
    """Too many wrong passwords for one user name in a short time."""


# Wrong passwords are rows of the store (``login_failures``, on the database's clock): every station on
# the store counts them, a restart keeps them, and no number of other names makes them forgotten.
FAILURES_ALLOWED, FAILURE_WINDOW, LOCK_SECONDS = 10, 600.0, 300.0  # per user name
ADDRESS_FAILURES_ALLOWED = 30  # per client address (any names), in the same window, locked as long


def clock(conn: sa.Connection) -> datetime:
    """The time failures are written and judged by: the database's (the tests replace it)."""
    return db_now(conn)


def _note_failure(store: Store, username: str, address: str | None) -> None:
    with store.begin() as conn:
        now = clock(conn)
        conn.execute(sa.delete(login_failures).where(
            login_failures.c.failed_at < now - timedelta(seconds=FAILURE_WINDOW)))
        conn.execute(sa.insert(login_failures).values(username=username[:200], address=address,
                                                      failed_at=now))


def _check_not_locked(conn: sa.Connection, username: str, address: str | None) -> None:
    now = clock(conn)
    since = now - timedelta(seconds=FAILURE_WINDOW)
    checks = [(login_failures.c.username == username[:200], FAILURES_ALLOWED, f"for {username}")]
    if address:
        checks.append((login_failures.c.address == address, ADDRESS_FAILURES_ALLOWED, f"from {address}"))
    for where, allowed, who in checks:
        count, newest = conn.execute(sa.select(sa.func.count(), sa.func.max(login_failures.c.failed_at))
                                     .where(where, login_failures.c.failed_at >= since)).one()
        if count >= allowed:
            waited = (as_utc(now) - as_utc(newest)).total_seconds()
            if waited < LOCK_SECONDS:
                raise TooManyAttempts(f"too many wrong passwords {who}; try again in "
                                      f"{int(LOCK_SECONDS - waited) + 1} s")


_VERIFIED: dict[str, float] = {}  # keyed HMACs of (user, password, stored hash) checked lately -> until
_CACHE_KEY = secrets.token_bytes(32)  # never leaves this process
VERIFIED_SECONDS = 300.0
time_source = time.monotonic


def _verified_key(username: str, password: str, stored: str) -> str:
    return hmac.new(_CACHE_KEY, f"{username}\x00{password}\x00{stored}".encode(), "sha256").hexdigest()


def check_password(store: Store, username: str, password: str, address: str | None = None) -> User | None:
    """The user, when the name and password are right and the user is not disabled. After ten wrong
    passwords in ten minutes a user name is refused for five minutes, and so is a client address after
    thirty (:class:`TooManyAttempts`). A line client sends HTTP Basic credentials with every call: a pair
    checked in the last five minutes is not run through scrypt again (35 ms); a changed password or a
    disabled user takes effect at once, since the stored hash and the disabled flag are read for every
    call."""
    now = time_source()
    with store.read() as conn:
        _check_not_locked(conn, username, address)
        row = conn.execute(sa.select(users).where(users.c.username == username)).mappings().first()
    if row is None:
        verify_password(password, _DUMMY_HASH)
        _note_failure(store, username, address)
        return None
    key = _verified_key(username, password, row["password_hash"])
    if _VERIFIED.get(key, 0.0) < now:
        if not verify_password(password, row["password_hash"]):
            _note_failure(store, username, address)
            return None
        if len(_VERIFIED) > 1000:
            _VERIFIED.clear()
        _VERIFIED[key] = now + VERIFIED_SECONDS
    if row["disabled"]:
        return None
    return User(row["id"], row["username"], row["role"])


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(store: Store, user: User) -> str:
    """A new login session for ``user``; returns the cookie's token."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with store.begin() as conn:
        conn.execute(sa.delete(sessions).where(sessions.c.expires_at < now))
        conn.execute(
            sa.insert(sessions).values(
                token_sha256=_token_hash(token),
                user_id=user.id,
                csrf_token=secrets.token_urlsafe(32),
                created_at=now,
                expires_at=now + timedelta(hours=SESSION_HOURS),
            )
        )
    return token


def session_user(store: Store, token: str | None) -> User | None:
    if not token:
        return None
    with store.read() as conn:
        row = (
            conn.execute(
                sa.select(
                    users.c.id,
                    users.c.username,
                    users.c.role,
                    users.c.disabled,
                    sessions.c.csrf_token,
                    sessions.c.expires_at,
                )
                .select_from(sessions.join(users, users.c.id == sessions.c.user_id))
                .where(sessions.c.token_sha256 == _token_hash(token))
            )
            .mappings()
            .first()
        )
    if row is None or row["disabled"] or as_utc(row["expires_at"]) < utcnow():
        return None
    return User(row["id"], row["username"], row["role"], row["csrf_token"])


def close_session(store: Store, token: str | None) -> None:
    if token:
        with store.begin() as conn:
            conn.execute(sa.delete(sessions).where(sessions.c.token_sha256 == _token_hash(token)))
