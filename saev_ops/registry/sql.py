"""Read-only SQL over the registry (``saev-ops sql``).

Read-only is enforced by the database connection, not by inspecting the text:
- SQLite: the connection runs ``PRAGMA query_only=ON`` before the statement; the sqlite3 driver executes one statement
  per call, so the pragma cannot be switched off in the same call.
- PostgreSQL: the statement runs in a ``READ ONLY`` transaction and is sent as a prepared statement, which the server
  accepts only as a single statement (so ``COMMIT; DELETE ...`` cannot escape the transaction).
"""

from __future__ import annotations

import dataclasses
from typing import Any


from saev_ops import errors
from saev_ops.registry.store import Registry

VIEWS = ("run_table", "metric_history", "inference_lineage")


@dataclasses.dataclass(frozen=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def run_read_only(registry: Registry, statement: str, *, max_rows: int | None = None) -> QueryResult:
    """Run one SQL statement with a read-only connection. Any write is refused by the database."""
    if not statement.strip():
        raise errors.QueryError("empty SQL statement")
    raw = registry.engine.raw_connection()
    try:
        if registry.dialect == "sqlite":
            return _sqlite(raw, statement, max_rows)
        return _postgres(raw, statement, max_rows)
    finally:
        raw.close()


def _fetch(cur: Any, max_rows: int | None) -> QueryResult:
    if cur.description is None:
        return QueryResult((), [])
    cols = tuple(d[0] for d in cur.description)
    rows = cur.fetchall() if max_rows is None else cur.fetchmany(max_rows)
    return QueryResult(cols, [tuple(r) for r in rows])


def _sqlite(raw: Any, statement: str, max_rows: int | None) -> QueryResult:
    import sqlite3

    dbapi = raw.driver_connection
    cur = dbapi.cursor()
    try:
        cur.execute("PRAGMA query_only=ON")
        cur.execute(statement)
        return _fetch(cur, max_rows)
    except sqlite3.Error as exc:
        raise errors.QueryError(_explain(str(exc))) from None
    finally:
        cur.close()
        if dbapi.in_transaction:
            dbapi.rollback()
        dbapi.execute("PRAGMA query_only=OFF")  # the connection goes back to the pool


def _postgres(raw: Any, statement: str, max_rows: int | None) -> QueryResult:
    import psycopg

    dbapi = raw.driver_connection
    dbapi.rollback()
    cur = dbapi.cursor()
    try:
        cur.execute("SET TRANSACTION READ ONLY")  # opens the transaction the statement runs in
        cur.execute(statement, prepare=True)
        return _fetch(cur, max_rows)
    except psycopg.Error as exc:
        raise errors.QueryError(_explain(str(exc).strip().splitlines()[0])) from None
    finally:
        cur.close()
        dbapi.rollback()


def _explain(message: str) -> str:
    low = message.lower()
    if "readonly" in low or "read-only" in low or "read only" in low:
        return f"refused: `saev-ops sql` is read-only ({message})"
    return f"SQL error: {message}"
