"""Opening a store: the engine for a URL (SQLite tuned for several processes, or PostgreSQL), errors as one
line, and creating or upgrading the schema."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from urllib.parse import quote

import sqlalchemy as sa

from ..errors import InspectorError
from .schema import SCHEMA_VERSION, UPGRADES, metadata, schema_version

STORE_FILE = "results.db"
_PG_LOCK = 0x5153E  # advisory lock key serialising schema changes on PostgreSQL


class StoreError(InspectorError):
    """The results store cannot be opened, read or written."""


def default_url(out_dir: str) -> str:
    """The embedded store of an output folder: ``<out>/results.db`` (URL-quoted, so that ``?``, ``#`` or
    ``%`` in a folder name stay part of the path)."""
    return sa.URL.create("sqlite",
                         database=os.path.abspath(os.path.join(out_dir, STORE_FILE))).render_as_string()


def display_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without a zone; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _sqlite_engine(url: sa.URL, readonly: bool) -> sa.Engine:
    path = url.database or ""
    if not path or path == ":memory:":
        raise StoreError(f"{url}: give a file path, e.g. sqlite:////data/line3/results.db")
    if readonly:
        if not os.path.isfile(path):
            raise StoreError(f"{path}: no results store here")
        # On a read-only file system nobody can be writing, and SQLite could not create the WAL index:
        # read the file as immutable there.
        writable = os.access(os.path.dirname(os.path.abspath(path)), os.W_OK)
        mode = "mode=ro" if writable else "mode=ro&immutable=1"
        url = url.set(database=f"file:{quote(os.path.abspath(path))}?{mode}", query={"uri": "true"})
    else:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise StoreError(f"{path}: the folder {folder} does not exist")
    engine = sa.create_engine(url, connect_args={"timeout": 120})

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
        cursor = dbapi_connection.cursor()
        if not readonly:
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=FULL")  # a committed result survives a power cut
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection):
        # IMMEDIATE takes the write lock up front: two processes cannot both read, then both try to write
        # (which SQLite would answer with 'database is locked' instead of waiting).
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


def make_engine(url: str, *, readonly: bool = False) -> sa.Engine:
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as e:
        raise StoreError(f"--store {url!r}: not a database URL (sqlite:///PATH or "
                         "postgresql+psycopg://USER@HOST:PORT/DB)") from e
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, readonly)
    if parsed.get_backend_name() != "postgresql":
        raise StoreError(f"--store {display_url(url)}: only SQLite and PostgreSQL stores are supported")
    try:
        return sa.create_engine(parsed, pool_pre_ping=True)
    except ModuleNotFoundError as e:
        raise StoreError(f"--store {display_url(url)}: the PostgreSQL driver is missing ({e.name}); "
                         "install it with pip install 'sise-inspector[postgres]'") from e
    except sa.exc.NoSuchModuleError as e:
        raise StoreError(f"--store {display_url(url)}: unknown database driver; use postgresql+psycopg://"
                         "USER@HOST:PORT/DB") from e


def _upgrade(conn: sa.Connection, url: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
    existing = set(sa.inspect(conn).get_table_names())
    if "schema_version" not in existing:
        if existing & set(metadata.tables):
            raise StoreError(f"{display_url(url)}: holds tables named like a results store's but no "
                             "schema_version; point --store at a new database")
        metadata.create_all(conn)
        conn.execute(sa.insert(schema_version).values(version=SCHEMA_VERSION))
        return
    version = conn.execute(sa.select(schema_version.c.version)).scalar_one()
    if version > SCHEMA_VERSION:
        raise StoreError(f"{display_url(url)}: made by a newer sise-inspector (schema {version}, this one "
                         f"knows {SCHEMA_VERSION}); upgrade sise-inspector")
    for step in UPGRADES[version - 1:]:
        step(conn)
    if version != SCHEMA_VERSION:
        conn.execute(sa.update(schema_version).values(version=SCHEMA_VERSION))


def check_version(conn: sa.Connection, url: str) -> None:
    """For a store opened read-only: it must be at this code's version."""
    if "schema_version" not in sa.inspect(conn).get_table_names():
        raise StoreError(f"{display_url(url)}: not a results store (no schema_version table)")
    version = conn.execute(sa.select(schema_version.c.version)).scalar_one()
    if version != SCHEMA_VERSION:
        raise StoreError(f"{display_url(url)}: schema version {version}, this sise-inspector reads "
                         f"{SCHEMA_VERSION}; open it once for writing with the newer of the two "
                         "to upgrade it")


def open_engine(url: str, *, readonly: bool = False) -> sa.Engine:
    """An engine on a store that exists and is at the current schema version (created or upgraded unless
    ``readonly``)."""
    engine = make_engine(url, readonly=readonly)
    try:
        with engine.begin() as conn:
            (check_version if readonly else _upgrade)(conn, url)
    except sa.exc.SQLAlchemyError as e:
        engine.dispose()
        raise StoreError(f"{display_url(url)}: cannot open the results store ({describe(e)})") from e
    except BaseException:
        engine.dispose()
        raise
    return engine


def describe(error: sa.exc.SQLAlchemyError) -> str:
    """The database's own words, on one line."""
    original = getattr(error, "orig", None) or error
    return " ".join(str(original).split())[:300]
