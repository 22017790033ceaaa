"""Engine set-up: URL normalisation, SQLite pragmas (WAL, busy timeout, foreign keys) and explicit BEGIN modes.

SQLite write transactions start with ``BEGIN IMMEDIATE``: a deferred transaction that reads and then writes can fail
with "database is locked" at once (without waiting for the busy timeout) when another writer got there first. Taking
the write lock up front makes every writer queue on the busy timeout instead.
"""

from __future__ import annotations

import pathlib
import random
import re
import sqlite3
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from saev_ops import errors

SQLITE_BUSY_TIMEOUT_MS = 60_000
BEGIN_MODE_OPTION = "saev_ops_begin"  # execution option: "DEFERRED" (default) or "IMMEDIATE"


def normalise_url(url: str) -> URL:
    """Parse ``url``; ``postgresql://`` and ``postgres://`` go to psycopg 3 (the one Postgres driver shipped)."""
    try:
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise errors.ConfigError(f"not a database URL: {url!r} ({exc})") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise errors.ConfigError(
            f"unsupported database {parsed.get_backend_name()!r} in {safe_url(url)}: saev-ops supports sqlite and "
            "postgresql"
        )
    return parsed


def safe_url(url: str | URL) -> str:
    """The URL with any password masked, for messages."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_registry_engine(url: str | URL, **kwargs: Any) -> sa.Engine:
    """A SQLAlchemy engine with saev-ops' connection settings for ``url``."""
    parsed = url if isinstance(url, URL) else normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **kwargs)
    return sa.create_engine(parsed, pool_pre_ping=True, **kwargs)


def _set_wal(cur: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried within the busy timeout: SQLite answers it "database is locked" at once,
    without its busy handler, while another process holds a write lock (many jobs opening a brand-new registry while
    the first one creates the schema)."""

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            busy = code & 0xFF in (5, 6) if code is not None else "locked" in str(exc)  # SQLITE_BUSY, SQLITE_LOCKED
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.02 + random.random() * 0.08)


def _sqlite_engine(url: URL, **kwargs: Any) -> sa.Engine:
    if is_memory_sqlite(url):
        kwargs.setdefault("poolclass", StaticPool)
    else:
        path = pathlib.Path(url.database).expanduser()  # type: ignore[arg-type]  # set: not an in-memory URL
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.RegistryUnavailableError(
                f"cannot create the directory {path.parent} for the registry database {path}: {exc.strerror}"
            ) from None
        from saev_ops.registry.filesystems import warn_if_network

        warn_if_network(path)
    engine = sa.create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}, **kwargs
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own BEGIN handling is deferred-only).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not is_memory_sqlite(url):
            _set_wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get(BEGIN_MODE_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine
