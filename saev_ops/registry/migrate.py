"""Migration glue: check a database's schema when it is opened, upgrade a new one under a lock, and drive Alembic.

Alembic is imported only inside the functions that run migrations; checking the schema reads the version table directly.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import importlib.resources
import pathlib
import zlib
from collections.abc import Iterator

import sqlalchemy as sa

from saev_ops import errors
from saev_ops.registry.engine import BEGIN_MODE_OPTION, is_memory_sqlite, safe_url
from saev_ops.registry.schema_version import HEAD_REVISION, KNOWN_REVISIONS, VERSION_TABLE

_PG_LOCK_KEY = zlib.crc32(b"saev-ops schema migration")


class SchemaState(enum.Enum):
    EMPTY = "empty"  # no tables at all: safe to create ours
    CURRENT = "current"
    OUTDATED = "outdated"  # a known, older revision
    NEWER = "newer"  # a revision this code does not know (written by a newer saev-ops)
    FOREIGN = "foreign"  # tables, but no saev-ops version table


def current_revision(conn: sa.Connection) -> str | None:
    """The revision stamped in the version table, or None when there is none."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def schema_state(conn: sa.Connection) -> tuple[SchemaState, str | None]:
    inspector = sa.inspect(conn)
    if not inspector.has_table(VERSION_TABLE):
        tables = inspector.get_table_names()
        return (SchemaState.FOREIGN if tables else SchemaState.EMPTY), None
    revision = current_revision(conn)
    if revision is None:
        return SchemaState.EMPTY, None  # an interrupted first migration left an empty version table
    if revision == HEAD_REVISION:
        return SchemaState.CURRENT, revision
    if revision in KNOWN_REVISIONS:
        return SchemaState.OUTDATED, revision
    return SchemaState.NEWER, revision


def ensure_schema(engine: sa.Engine, *, create: bool = True) -> None:
    """Check the schema of ``engine``'s database; create it if the database is empty (with ``create``; without, an
    empty database is a RegistryUnavailableError saying nothing was registered there yet).

    Raises:
        RegistryUnavailableError: the database cannot be reached.
        NotASaevOpsDatabaseError: it holds other tables and no saev-ops version table.
        SchemaOutdatedError: its schema is older or newer than this code.
    """
    state, revision = _read_state(engine)
    if state in (SchemaState.EMPTY, SchemaState.OUTDATED):
        # Another process may be creating the schema right now (its version table passes through the older revisions):
        # judge only under the migration lock, once it is done.
        with migration_lock(engine):
            state, revision = _read_state(engine)
            if state is SchemaState.EMPTY and create:
                _run(engine, "upgrade", "head")  # already under the lock; run_upgrade would wait on ourselves
                state, revision = _read_state(engine)
    if state is SchemaState.EMPTY:
        raise errors.RegistryUnavailableError(_no_registry_yet(safe_url(engine.url)))
    url = safe_url(engine.url)
    if state is SchemaState.CURRENT:
        return
    if state is SchemaState.FOREIGN:
        raise errors.NotASaevOpsDatabaseError(
            f"{url} is not a saev-ops registry: it has tables but no {VERSION_TABLE} table. "
            "Point --db / SAEV_OPS_DB_URL at a saev-ops database or an empty one."
        )
    if state is SchemaState.OUTDATED:
        raise errors.SchemaOutdatedError(
            f"the registry at {url} has schema {revision}, this saev-ops needs {HEAD_REVISION}. "
            f"Back up the database, then run `saev-ops db upgrade --db {url}`."
        )
    raise errors.SchemaOutdatedError(
        f"the registry at {url} has schema {revision}, which this saev-ops (head {HEAD_REVISION}) does not know: "
        "it was written by a newer saev-ops. Upgrade saev-ops."
    )


def _no_registry_yet(url: str) -> str:
    return (f"no saev-ops registry at {url} yet: nothing was recorded or submitted with it. Is this the registry you "
            "meant? It comes from --db, else $SAEV_OPS_DB_URL, else $SAEV_OPS_HOME/registry.sqlite (the quickstart's "
            "is .quickstart/registry.sqlite: export SAEV_OPS_HOME=$PWD/.quickstart)")


def _read_state(engine: sa.Engine) -> tuple[SchemaState, str | None]:
    try:
        with engine.connect() as conn:
            return schema_state(conn)
    except sa.exc.OperationalError as exc:
        raise errors.RegistryUnavailableError(
            f"cannot open the registry database {safe_url(engine.url)}: {_first_line(exc.orig or exc)}"
        ) from None
    except sa.exc.DatabaseError as exc:
        raise errors.NotASaevOpsDatabaseError(
            f"cannot read {safe_url(engine.url)} as a registry database: {_first_line(exc.orig or exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def migration_lock(engine: sa.Engine) -> Iterator[None]:
    """Serialise schema creation across processes: a file lock beside an SQLite file, an advisory lock on Postgres.

    MLflow is known to race here (two processes both see an empty database and both create tables); with the lock the
    second one waits, re-reads the state and finds the schema in place.
    """
    url = engine.url
    if url.get_backend_name() == "sqlite":
        if is_memory_sqlite(url):
            yield
            return
        database = str(url.database)  # a file: in-memory SQLite returned above
        lock_path = pathlib.Path(database).expanduser().with_name(pathlib.Path(database).name + ".lock")
        with open(lock_path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
            conn.commit()


def _alembic_config(conn: sa.Connection):  # alembic.config.Config, imported lazily
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(importlib.resources.files("saev_ops._migrations")))
    cfg.attributes["connection"] = conn
    return cfg


def _run(engine: sa.Engine, fn_name: str, revision: str) -> None:
    from alembic import command

    with engine.connect() as conn:
        conn = conn.execution_options(**{BEGIN_MODE_OPTION: "IMMEDIATE"})
        notices: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if engine.dialect.name == "postgresql":
            from saev_ops.registry.reader_setup import forward_warnings

            notices = forward_warnings(conn.connection.driver_connection)
        with notices:
            getattr(command, fn_name)(_alembic_config(conn), revision)
        conn.commit()


def run_upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Upgrade to ``revision`` (default: the head)."""
    with migration_lock(engine):
        _run(engine, "upgrade", revision)


def run_downgrade(engine: sa.Engine, revision: str) -> None:
    """Downgrade to ``revision`` (``base`` removes every saev-ops table)."""
    if revision != "base" and revision not in KNOWN_REVISIONS and not revision.startswith("-"):
        raise errors.ConfigError(
            f"unknown revision {revision!r}: expected one of {', '.join(KNOWN_REVISIONS)}, 'base' or '-N'"
        )
    with migration_lock(engine):
        _run(engine, "downgrade", revision)


def heads() -> list[str]:
    """The heads of the migration scripts (exactly one, enforced by a test)."""
    from alembic.script import ScriptDirectory

    return list(ScriptDirectory(str(importlib.resources.files("saev_ops._migrations"))).get_heads())
