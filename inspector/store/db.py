"""Opening a store: the engine for a URL (SQLite tuned for several processes, or PostgreSQL), errors as one
line, and creating or upgrading the schema."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from urllib.parse import quote, unquote_to_bytes

import sqlalchemy as sa

from ..errors import InspectorError
from .schema import SCHEMA_VERSION, UPGRADES, metadata, schema_version

STORE_FILE = "results.db"
_PG_LOCK = 0x5153E  # advisory lock key serialising schema changes on PostgreSQL


class StoreError(InspectorError):
    """The results store cannot be opened, read or written."""


def path_bytes(path: str | bytes) -> bytes:
    """A path exactly as the file system spells it (undecodable names included)."""
    return os.fsencode(path)


def display_path(path: str | bytes) -> str:
    """Printable text for a path; bytes that are not UTF-8 appear as ``\\xNN`` and a backslash as ``\\\\``
    (so no two names look alike)."""
    return path_bytes(path).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def default_url(out_dir: str) -> str:
    """The embedded store of an output folder: ``<out>/results.db``, the path's bytes percent-encoded (so
    that ``?``, ``#``, ``%`` and bytes that are not UTF-8 stay part of the path)."""
    return "sqlite:///" + quote(os.fsencode(os.path.abspath(os.path.join(out_dir, STORE_FILE))), safe="/")


def sqlite_path(url: str) -> str:
    """The file path of an ``sqlite:///`` URL, exactly (percent-escapes decoded to bytes, then to the
    file system's str form), or "" for an in-memory database."""
    rest = url.split(":///", 1)[1] if ":///" in url else ""
    return os.fsdecode(unquote_to_bytes(rest.split("?", 1)[0])) if rest else ""


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


def _read_only_uri(path: str) -> str:
    """``file:`` URI for reading a store. On a read-only file system nobody can be writing and SQLite
    cannot create the WAL index, so the file is read as immutable there, unless changes still sit in its
    WAL file (an audit killed before a checkpoint), which immutable reading would miss."""
    folder = os.path.dirname(os.path.abspath(path))
    mode = "mode=ro"
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        wal = path + "-wal"
        if os.path.exists(wal) and os.path.getsize(wal) > 0:
            raise StoreError(f"{display_path(path)}: its latest changes are in {os.path.basename(wal)} "
                             "and the file system is read-only; copy the folder somewhere writable and read "
                             "it there")
        mode += "&immutable=1"
    return f"file:{quote(os.fsencode(os.path.abspath(path)))}?{mode}"


def _sqlite_engine(url: str, readonly: bool) -> sa.Engine:
    path = sqlite_path(url)
    if not path or path == ":memory:":
        raise StoreError(f"{url}: give a file path, e.g. sqlite:////data/line3/results.db")
    if readonly and not os.path.isfile(path):
        raise StoreError(f"{display_path(path)}: no results store here")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StoreError(f"{display_path(path)}: the folder {display_path(folder)} does not exist")
    target = _read_only_uri(path) if readonly else os.fsencode(os.path.abspath(path))
    # the driver opens the exact path (bytes: any file name works); SQLAlchemy only sees the dialect
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.QueuePool, creator=lambda: sqlite3.connect(
        target, timeout=120, uri=readonly, check_same_thread=False))

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
        # (which SQLite would answer with 'database is locked' instead of waiting). Transactions opened
        # for reading only (``Store.read``) take no lock: in WAL mode they never wait for a writer.
        reading = readonly or connection.get_execution_options().get("read_only", False)
        connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

    return engine


def make_engine(url: str, *, readonly: bool = False) -> sa.Engine:
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as e:
        raise StoreError(f"--store {url!r}: not a database URL (sqlite:///PATH or "
                         "postgresql+psycopg://USER@HOST:PORT/DB)") from e
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, readonly)
    if parsed.get_backend_name() != "postgresql":
        raise StoreError(f"--store {display_url(url)}: only SQLite and PostgreSQL stores are supported")
    try:
        return sa.create_engine(parsed, pool_pre_ping=True)
    except ModuleNotFoundError as e:
        raise StoreError(f"--store {display_url(url)}: the PostgreSQL driver is missing ({e.name}); "
                         "install it with pip install 'psycopg[binary]>=3.1' (the [postgres] extra)") from e
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
    version = _version(conn, url)
    if version > SCHEMA_VERSION:
        raise StoreError(f"{display_url(url)}: made by a newer sise-inspector (schema {version}, this one "
                         f"knows {SCHEMA_VERSION}); upgrade sise-inspector")
    for step in UPGRADES[version - 1:]:
        step(conn)
    if version != SCHEMA_VERSION:
        conn.execute(sa.update(schema_version).values(version=SCHEMA_VERSION))


def _version(conn: sa.Connection, url: str) -> int:
    """The store's schema version: one row holding a whole number from 1 on (what else is there was not
    written by sise-inspector, and no upgrade step may run on it)."""
    values = [row[0] for row in conn.execute(sa.text("SELECT version FROM schema_version")).all()]
    version = values[0] if len(values) == 1 else None
    if isinstance(version, str) and version.strip().isdigit():
        version = int(version)  # SQLite keeps what it was given; a digit string is still that number
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        found = "no row" if not values else ", ".join(repr(v) for v in values[:3])
        raise StoreError(f"{display_url(url)}: its schema_version table holds {found}, not one version "
                         f"number from 1 to {SCHEMA_VERSION}; this is not a store sise-inspector wrote, or "
                         "it was edited by hand: restore it from a backup or point --store at a new "
                         "database")
    return version


def check_version(conn: sa.Connection, url: str) -> None:
    """For a store opened read-only: it must be at this code's version."""
    if "schema_version" not in sa.inspect(conn).get_table_names():
        raise StoreError(f"{display_url(url)}: not a results store (no schema_version table)")
    version = _version(conn, url)
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
