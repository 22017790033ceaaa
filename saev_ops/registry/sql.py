"""Read-only SQL over the registry (``saev-ops sql``), safe with a privileged registry role.

The registry URL may name a superuser, so "read-only" is not left to a READ ONLY transaction (which still lets
``COPY ... TO PROGRAM``, ``pg_read_file`` or ``pg_terminate_backend`` through) nor to inspecting the text:

- PostgreSQL: the query runs inside ``saev_ops_read(query, max_rows)``, a SECURITY DEFINER function owned by the NOLOGIN
  role ``saev_ops_reader`` (migration 0003), which may only read saev-ops' tables and views. Inside such a function
  PostgreSQL refuses every role change, so ``set_config('role', ...)`` cannot climb back to the session's superuser
  (a plain ``SET ROLE`` would allow that). The function wraps the text as a subquery, so only one query (SELECT, WITH,
  VALUES, TABLE) runs, in a READ ONLY transaction with a statement timeout; rows come through a server-side cursor, so
  ``max_rows`` bounds memory on both sides. Without that function, or with one owned by a privileged role, the command
  refuses and says how to set it up.
- SQLite: an authorizer callback allows only reads (SELECT, column reads, functions, recursive CTEs and a list of
  introspection pragmas) and refuses everything else, ATTACH (and VACUUM INTO, which attaches), pragma writes such as
  ``journal_mode`` or ``foreign_keys`` and transactions included. So no state set by user SQL can outlive the statement
  on the pooled connection. A progress handler enforces the timeout; rows are fetched in chunks up to ``max_rows``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from saev_ops import errors
from saev_ops.registry.schema import READ_FUNCTION, READER_ROLE
from saev_ops.registry.store import Registry

VIEWS = ("run_table", "metric_history", "inference_lineage")
DEFAULT_TIMEOUT_S = 60.0
# A statement's closing semicolons, each followed only by blanks or "--" comments (the query becomes a subquery).
_TRAILING_END = re.compile(r"(;\s*(--[^\n]*\s*)*)+$")
_CHUNK = 1000

# SQLite: what user SQL may do. Everything else is refused by the authorizer.
_SQLITE_ALLOWED = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
)
_SQLITE_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list",
     "collation_list", "function_list", "pragma_list", "compile_options"}
)
# Names of the authorizer's action codes, for messages (several error codes share these numbers, so a fixed table).
_SQLITE_ACTIONS = {
    1: "CREATE INDEX", 2: "CREATE TABLE", 3: "CREATE TEMP INDEX", 4: "CREATE TEMP TABLE", 5: "CREATE TEMP TRIGGER",
    6: "CREATE TEMP VIEW", 7: "CREATE TRIGGER", 8: "CREATE VIEW", 9: "DELETE", 10: "DROP INDEX", 11: "DROP TABLE",
    12: "DROP TEMP INDEX", 13: "DROP TEMP TABLE", 14: "DROP TEMP TRIGGER", 15: "DROP TEMP VIEW", 16: "DROP TRIGGER",
    17: "DROP VIEW", 18: "INSERT", 19: "PRAGMA", 22: "a transaction", 23: "UPDATE", 24: "ATTACH (or VACUUM)",
    25: "DETACH", 26: "ALTER TABLE", 27: "REINDEX", 28: "ANALYZE", 29: "CREATE VIRTUAL TABLE",
    30: "DROP VIRTUAL TABLE", 32: "SAVEPOINT",
}
# PostgreSQL: memberships that would let the reader role reach the server's files, programs or other sessions.
_PG_DANGEROUS_ROLES = (
    "pg_read_server_files", "pg_write_server_files", "pg_execute_server_program", "pg_signal_backend",
)


@dataclasses.dataclass(frozen=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    truncated: bool = False
    """True when the statement had more rows than ``max_rows`` (only the first ``max_rows`` are in ``rows``)."""


def run_read_only(
    registry: Registry, statement: str, *, max_rows: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> QueryResult:
    """Run one SQL query with read-only rights; at most ``max_rows`` rows are fetched, and the statement is stopped
    after ``timeout_s`` seconds.

    Raises:
        QueryError: empty, malformed, refused (a write, a file or program, another session, a setting), timed out,
            or (PostgreSQL) the registry has no usable reader role.
    """
    if not statement.strip():
        raise errors.QueryError("empty SQL statement")
    if max_rows is not None and max_rows < 0:
        raise errors.QueryError(f"--max-rows must be >= 0, got {max_rows}")
    if not timeout_s > 0:
        raise errors.QueryError(f"--timeout must be > 0 seconds, got {timeout_s}")
    raw = registry.engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        if dbapi is None:
            raise errors.RegistryUnavailableError("the registry connection was closed")
        if registry.dialect == "sqlite":
            return _sqlite(dbapi, statement, max_rows, timeout_s)
        return _postgres(dbapi, statement, max_rows, timeout_s)
    finally:
        raw.close()


def _collect(columns: tuple[str, ...], rows: Iterator[tuple[Any, ...]], max_rows: int | None) -> QueryResult:
    """Take at most ``max_rows`` rows (one more is read to tell whether there were more)."""
    out: list[tuple[Any, ...]] = []
    for row in rows:
        if max_rows is not None and len(out) >= max_rows:
            return QueryResult(columns, out, truncated=True)
        out.append(row)
    return QueryResult(columns, out)


# -- SQLite ------------------------------------------------------------------------------------------------------------
def _sqlite(dbapi: sqlite3.Connection, statement: str, max_rows: int | None, timeout_s: float) -> QueryResult:
    denied: list[str] = []

    def authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
        if action in _SQLITE_ALLOWED:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and arg1 is not None and arg1.lower() in _SQLITE_PRAGMAS:
            return sqlite3.SQLITE_OK
        what = _SQLITE_ACTIONS.get(action, f"action {action}")
        if action == sqlite3.SQLITE_PRAGMA:
            what = f"PRAGMA {arg1}" + (f"={arg2}" if arg2 is not None else "")
        denied.append(what)
        return sqlite3.SQLITE_DENY

    deadline = time.monotonic() + timeout_s
    dbapi.set_authorizer(authorize)
    dbapi.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    cur = dbapi.cursor()
    try:
        cur.execute(statement)
        columns = tuple(d[0] for d in cur.description) if cur.description else ()

        def rows() -> Iterator[tuple[Any, ...]]:
            while chunk := cur.fetchmany(_CHUNK):
                yield from (tuple(r) for r in chunk)

        return _collect(columns, rows(), max_rows) if columns else QueryResult((), [])
    except sqlite3.Error as exc:
        message = str(exc)
        if denied:
            raise errors.QueryError(
                f"refused: `saev-ops sql` is read-only and may not run {denied[0]} ({message})"
            ) from None
        if "interrupted" in message:
            raise errors.QueryError(f"the statement ran past --timeout {timeout_s:g} s and was stopped") from None
        raise errors.QueryError(f"SQL error: {message}") from None
    except sqlite3.Warning as exc:  # e.g. "You can only execute one statement at a time."
        raise errors.QueryError(f"SQL error: {exc}") from None
    finally:
        cur.close()
        dbapi.set_authorizer(None)
        dbapi.set_progress_handler(None, 0)
        if dbapi.in_transaction:
            dbapi.rollback()


# -- PostgreSQL --------------------------------------------------------------------------------------------------------
def _postgres(dbapi: Any, statement: str, max_rows: int | None, timeout_s: float) -> QueryResult:
    import psycopg

    query = _TRAILING_END.sub("", statement.strip())
    dbapi.rollback()
    try:
        _check_reader(dbapi)
        columns = _describe(dbapi, query)
        with dbapi.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute("SELECT set_config('statement_timeout', %s, true)", [str(max(1, int(timeout_s * 1000)))])
        limit = None if max_rows is None else max_rows + 1
        with dbapi.cursor(name="saev_ops_sql") as cur:
            cur.itersize = _CHUNK
            cur.execute(f"SELECT r::text FROM {READ_FUNCTION}(%s, %s) AS r", [query, limit])

            def rows() -> Iterator[tuple[Any, ...]]:
                while chunk := cur.fetchmany(_CHUNK):
                    for (text,) in chunk:
                        pairs = json.loads(text, object_pairs_hook=list)
                        yield tuple(v for _, v in pairs)

            return _collect(columns, rows(), max_rows)
    except psycopg.errors.QueryCanceled:
        raise errors.QueryError(f"the statement ran past --timeout {timeout_s:g} s and was stopped") from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise errors.QueryError(
            f"refused: `saev-ops sql` runs as the read-only role {READER_ROLE} ({_first_line(exc)})"
        ) from None
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise errors.QueryError(f"refused: `saev-ops sql` is read-only ({_first_line(exc)})") from None
    except psycopg.Error as exc:
        raise errors.QueryError(f"SQL error: {_first_line(exc)}") from None
    finally:
        dbapi.rollback()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_reader(dbapi: Any) -> None:
    """Refuse unless this schema's read function exists, runs as its owner, and that owner holds no privilege that
    reaches beyond reading (superuser, server files, programs, signalling other sessions)."""
    dangerous = " OR ".join(f"pg_has_role(p.proowner, '{r}', 'USAGE')" for r in _PG_DANGEROUS_ROLES)
    with dbapi.cursor() as cur:
        cur.execute(
            f"SELECT r.rolname, p.prosecdef, r.rolsuper OR {dangerous}, current_schema() "
            "FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner "
            "WHERE p.proname = %s AND p.pronamespace = current_schema()::regnamespace",
            [READ_FUNCTION],
        )
        found = cur.fetchone()
    dbapi.rollback()
    how = "run `saev-ops db reader-setup` (README, 'SQL on PostgreSQL')"
    if found is None:
        raise errors.QueryError(
            f"refused: `saev-ops sql` runs user SQL as the read-only role {READER_ROLE} through the function "
            f"{READ_FUNCTION}(), and this registry has none (the role that migrated it could not create the role); "
            + how
        )
    owner, secdef, privileged, schema = found
    if owner != READER_ROLE or not secdef or privileged:
        raise errors.QueryError(
            f"refused: {schema}.{READ_FUNCTION}() must be SECURITY DEFINER and owned by {READER_ROLE}, a role without "
            f"superuser or server-file rights (found owner {owner!r}, security definer {secdef}, privileged "
            f"{privileged}); " + how
        )


def _describe(dbapi: Any, query: str) -> tuple[str, ...]:
    """The query's column names, from parsing it (nothing is executed). A statement that parses alone but not as a
    subquery (a write, DDL, COPY, a second statement) is refused as not read-only."""
    from psycopg import pq

    def prepare(text: str) -> Any:
        res = dbapi.pgconn.prepare(b"", text.encode())
        ok = res.status == pq.ExecStatus.COMMAND_OK
        message = (res.error_message or b"").decode(errors="replace").strip()
        return ok, message.removeprefix("ERROR:").strip().splitlines()[0] if message else ""

    ok, message = prepare(f"SELECT * FROM (\n{query}\n) AS t")
    if not ok:
        alone, own = prepare(query)
        if alone:
            raise errors.QueryError(
                "refused: `saev-ops sql` is read-only and takes one query (SELECT, WITH, VALUES or TABLE); "
                f"this statement is not one ({message})"
            )
        raise errors.QueryError(f"SQL error: {own or message}")
    desc = dbapi.pgconn.describe_prepared(b"")
    return tuple((desc.fname(i) or b"?column?").decode() for i in range(desc.nfields))
