"""Connecting to the results store: database URLs, engines and transactions per dialect.

SQLite (a file, the embedded default) and PostgreSQL (``postgresql://``, through psycopg 3)
are supported. SQLite runs in WAL mode (readers never block the writer) with a busy timeout,
and write transactions start with ``BEGIN IMMEDIATE``: a transaction that reads and then
writes takes the write lock first, so two processes never both read a queued job and then
race to update it (SQLite's deferred transactions would fail such a race with "database is
locked" instead of waiting). PostgreSQL can put the tables in a schema of their own
(``search_path``), one per tenant or per test.

ARCHITECTURE.md section 2 (storage).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

# Seconds a SQLite connection waits for another writer before "database is locked": a batch
# of calls commits in milliseconds, a slow disk in well under this.
SQLITE_BUSY_TIMEOUT_S = 30.0
# The default SQLite file name when a directory or nothing more specific is given.
DEFAULT_SQLITE_FILE = "stirscope.db"
# PostgreSQL identifiers: letters, digits and underscores, at most 63 bytes (NAMEDATALEN - 1).
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_WRITE = "stirscope_write"


# Any error the database driver reports during use (connection lost, disk full...): callers
# that must not crash on it catch this without importing SQLAlchemy themselves.
DatabaseError = SQLAlchemyError


class StoreError(Exception):
    """The store cannot be opened or used as asked (bad URL, unreachable database...)."""


def database_url(text_or_path: str) -> URL:
    """The SQLAlchemy URL for a ``--db`` value: ``sqlite:///PATH``, ``postgresql://...``
    (mapped to the psycopg 3 driver) or a bare file path (an SQLite file)."""
    if "://" not in text_or_path:
        return URL.create("sqlite", database=text_or_path)
    try:
        url = make_url(text_or_path)
    except ArgumentError as exc:
        raise StoreError(f"bad database URL: {exc}") from exc
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if not url.database or url.database == ":memory:":
            raise StoreError("an SQLite store needs a file: sqlite:///PATH")
        return url.set(drivername="sqlite")
    raise StoreError(
        f"unsupported database {url.drivername!r}: use sqlite:///PATH or postgresql://"
    )


def dumps(document: object) -> str:
    """JSON for stored documents: UTF-8 as is; text PostgreSQL or the driver would refuse
    (NUL characters, lone surrogates from undecodable SIP bytes) is escaped first."""
    encoded = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    if "\\u0000" in encoded or not _is_utf8(encoded):
        encoded = json.dumps(clean(document), ensure_ascii=False, separators=(",", ":"))
    return encoded


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_text(value: str) -> str:
    """``value`` storable as text everywhere: lone surrogates (``surrogateescape`` bytes) and
    NUL become backslash escapes."""
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    if _is_utf8(value):
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def clean(value: object) -> object:
    """``clean_text`` applied to every string (keys too) of a JSON-ready value."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


class Database:
    """An engine with the store's transaction conventions (see the module docstring)."""

    def __init__(self, url: URL, *, schema: str | None = None, echo: bool = False) -> None:
        self.url = url
        self.schema = schema
        self.is_postgres = url.get_backend_name() == "postgresql"
        if schema is not None and not (self.is_postgres and _SCHEMA_NAME.fullmatch(schema)):
            raise StoreError(f"bad schema {schema!r} (PostgreSQL identifiers only)")
        if self.is_postgres:
            self.engine = _postgres_engine(url, schema, echo)
        else:
            self.engine = _sqlite_engine(url, echo)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction (a consistent snapshot on both dialects)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed at the end, rolled back on any exception."""
        with self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    def now(self) -> datetime:
        """The database server's clock (UTC): one clock for every instance sharing the store,
        so leases do not depend on each host's clock."""
        with self.engine.connect() as conn:
            if self.is_postgres:
                value = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
                assert isinstance(value, datetime)
                return value.astimezone(UTC)
            stamp = conn.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
        return datetime.fromisoformat(str(stamp)).replace(tzinfo=UTC)


def _sqlite_engine(url: URL, echo: bool) -> Engine:
    path = Path(url.database or "")
    if path.is_dir():
        path = path / DEFAULT_SQLITE_FILE
        url = url.set(database=str(path))
    if not path.parent.is_dir():
        raise StoreError(f"cannot create the SQLite store {path}: no directory {path.parent}")
    engine = create_engine(
        url,
        echo=echo,
        json_serializer=dumps,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below): pysqlite's own transaction handling
        # defers BEGIN and cannot start an IMMEDIATE transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _postgres_engine(url: URL, schema: str | None, echo: bool) -> Engine:
    connect_args: dict[str, object] = {}
    if schema is not None:
        connect_args["options"] = f"-csearch_path={schema}"
    return create_engine(
        url,
        echo=echo,
        json_serializer=dumps,
        pool_pre_ping=True,
        connect_args=connect_args,
    )
