"""Read-only SQL over the registry (``saev-ops sql``), safe with a privileged registry role.

The registry URL may name a superuser, so "read-only" is not left to a READ ONLY transaction (which still lets
``COPY ... TO PROGRAM``, ``pg_read_file`` or ``pg_terminate_backend`` through) nor to inspecting the text:

- PostgreSQL: the text is parsed first (pglast, PostgreSQL's own parser): it must be one query (SELECT, WITH, VALUES,
  TABLE) with no data-modifying WITH, no SELECT INTO and no row locks, and it may call no volatile function (one that
  can change something that outlives the statement: WAL messages, sequences, large objects, notifications, advisory
  locks, settings) beyond a short allow-list (:data:`_PG_VOLATILE_ALLOWED`). Text that would close the subquery early
  does not parse alone and is refused here. The query then runs inside ``saev_ops_read(query, max_rows, max_bytes)``,
  a SECURITY DEFINER function owned by this registry's own NOLOGIN reader role (migration 0006), which may only read
  this schema. Inside such a function PostgreSQL refuses every role change, so ``set_config('role', ...)`` cannot
  climb back to the session's superuser. Before each query the function is checked against what the migration made:
  its owner (this registry's reader, without superuser or server-file rights), SECURITY DEFINER, its settings (the
  pinned ``search_path``), its ACL (no EXECUTE for PUBLIC) and its body; anything else is refused with the fix. The
  function stops after ``max_rows`` rows and refuses a result past ``max_bytes`` before it reaches the client; the
  transaction is READ ONLY with a statement timeout and (where the registry's role may set it) a ``temp_file_limit``
  of ``max_bytes``; advisory locks are released after every query.
- SQLite: an authorizer callback allows only reads (SELECT, column reads, recursive CTEs, a list of introspection
  pragmas, and functions from an allow-list, so ``fts3_tokenizer()`` and ``load_extension()`` are refused) and refuses
  everything else, ATTACH (and VACUUM INTO, which attaches), pragma writes such as ``journal_mode`` or
  ``foreign_keys`` and transactions included. So no state set by user SQL can outlive the statement on the pooled
  connection. The connection's length limit is ``max_bytes`` while the query runs (``randomblob(200000000)`` fails
  before it allocates), a progress handler enforces the timeout, and rows are fetched in chunks up to ``max_rows`` and
  ``max_bytes``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from saev_ops import errors
from saev_ops.registry.reader_setup import READ_BODY
from saev_ops.registry.schema_version import READ_FUNCTION, reader_role
from saev_ops.registry.store import Registry

log = logging.getLogger(__name__)

VIEWS = ("run_table", "metric_history", "inference_lineage")
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_BYTES = 64 << 20
"""What a query may return at most (values' sizes added up as rows stream): ``sql --max-bytes``."""
# A statement's closing semicolons, each followed only by blanks or "--" comments (the query becomes a subquery).
_TRAILING_END = re.compile(r"(;\s*(--[^\n]*\s*)*)+$")
_CHUNK = 1000

# SQLite: what user SQL may do. Everything else is refused by the authorizer.
_SQLITE_ALLOWED = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
)
# The functions user SQL may call on SQLite: SQLite's core scalar, aggregate, window, date, math and JSON functions.
# Anything else (fts3_tokenizer, load_extension, functions an extension or the application registered) is refused.
_SQLITE_FUNCTIONS = frozenset({
    "abs", "changes", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex", "ifnull", "iif", "instr",
    "last_insert_rowid", "length", "like", "likelihood", "likely", "lower", "ltrim", "max", "min", "nullif",
    "octet_length", "printf", "quote", "random", "randomblob", "replace", "round", "rtrim", "sign", "soundex",
    "sqlite_version", "substr", "substring", "total_changes", "trim", "typeof", "unhex", "unicode", "unlikely", "upper",
    "zeroblob",
    "avg", "count", "group_concat", "string_agg", "sum", "total", "median", "percentile", "percentile_cont",
    "percentile_disc",
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead", "first_value",
    "last_value", "nth_value",
    "date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff",
    "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos", "cosh", "degrees", "exp",
    "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow", "power", "radians", "sin", "sinh", "sqrt", "tan",
    "tanh", "trunc",
    "json", "jsonb", "json_array", "json_array_length", "json_extract", "json_insert", "json_object", "json_patch",
    "json_remove", "json_replace", "json_set", "json_type", "json_valid", "json_quote", "json_group_array",
    "json_group_object", "json_each", "json_tree", "json_error_position", "json_pretty",
})
# PostgreSQL: volatile functions user SQL may call (they change nothing that outlives the statement).
_PG_VOLATILE_ALLOWED = frozenset({"random", "random_normal", "clock_timestamp", "timeofday", "gen_random_uuid",
                                  "pg_sleep", "pg_sleep_for", "pg_sleep_until"})
# PostgreSQL: stable functions that still change something lasting (they assign a transaction id).
_PG_REFUSED = frozenset({"txid_current", "pg_current_xact_id"})
_SQLITE_LIMIT_LENGTH = 0  # sqlite3.SQLITE_LIMIT_LENGTH (Python >= 3.11 names it)
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
    registry: Registry, statement: str, *, max_rows: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> QueryResult:
    """Run one SQL query with read-only rights; at most ``max_rows`` rows are fetched, a result past ``max_bytes``
    (its values' sizes added up) is refused before it is held, and the statement is stopped after ``timeout_s``
    seconds.

    Raises:
        QueryError: empty, malformed, refused (a write, a file or program, another session, a setting, a volatile
            function, a result too large), timed out, or (PostgreSQL) the registry has no usable reader role.
    """
    if not statement.strip():
        raise errors.QueryError("empty SQL statement")
    if max_rows is not None and max_rows < 0:
        raise errors.QueryError(f"--max-rows must be >= 0, got {max_rows}")
    if not timeout_s > 0:
        raise errors.QueryError(f"--timeout must be > 0 seconds, got {timeout_s}")
    if max_bytes < 1024:
        raise errors.QueryError(f"--max-bytes must be >= 1024, got {max_bytes}")
    raw = registry.engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        if dbapi is None:
            raise errors.RegistryUnavailableError("the registry connection was closed")
        if registry.dialect == "sqlite":
            return _sqlite(dbapi, statement, max_rows, timeout_s, max_bytes)
        return _postgres(dbapi, statement, max_rows, timeout_s, max_bytes)
    finally:
        raw.close()


def _too_large(max_bytes: int, row: int) -> errors.QueryError:
    return errors.QueryError(f"refused: the result passed --max-bytes {max_bytes:,} at row {row:,}; select fewer or "
                             "smaller columns, or raise --max-bytes")


def _size(value: Any) -> int:
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return len(value)
    return 8


def _collect(columns: tuple[str, ...], rows: Iterator[tuple[Any, ...]], max_rows: int | None,
             max_bytes: int) -> QueryResult:
    """Take at most ``max_rows`` rows (one more is read to tell whether there were more), refusing a result whose
    values add up to more than ``max_bytes``."""
    out: list[tuple[Any, ...]] = []
    total = 0
    for row in rows:
        if max_rows is not None and len(out) >= max_rows:
            return QueryResult(columns, out, truncated=True)
        total += sum(_size(v) for v in row)
        if total > max_bytes:
            raise _too_large(max_bytes, len(out) + 1)
        out.append(row)
    return QueryResult(columns, out)


# -- SQLite ------------------------------------------------------------------------------------------------------------
def _sqlite(dbapi: sqlite3.Connection, statement: str, max_rows: int | None, timeout_s: float,
            max_bytes: int) -> QueryResult:
    denied: list[str] = []

    def authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
        if action == sqlite3.SQLITE_FUNCTION:
            if arg2 is not None and arg2.lower() in _SQLITE_FUNCTIONS:
                return sqlite3.SQLITE_OK
            denied.append(f"the function {arg2}()")
            return sqlite3.SQLITE_DENY
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
    # no value may be larger than the whole result (sqlite3's setlimit: Python >= 3.11; on 3.10 only rows are counted)
    setlimit = getattr(dbapi, "setlimit", None)
    length = setlimit(_SQLITE_LIMIT_LENGTH, max_bytes) if setlimit is not None else None
    cur = dbapi.cursor()
    try:
        cur.execute(statement)
        columns = tuple(d[0] for d in cur.description) if cur.description else ()

        def rows() -> Iterator[tuple[Any, ...]]:
            while chunk := cur.fetchmany(_CHUNK):
                yield from (tuple(r) for r in chunk)

        return _collect(columns, rows(), max_rows, max_bytes) if columns else QueryResult((), [])
    except sqlite3.Error as exc:
        message = str(exc)
        if denied:
            raise errors.QueryError(
                f"refused: `saev-ops sql` is read-only and may not run {denied[0]} ({message})"
            ) from None
        if "interrupted" in message:
            raise errors.QueryError(f"the statement ran past --timeout {timeout_s:g} s and was stopped") from None
        if "too big" in message:
            raise errors.QueryError(f"refused: a value of the result passed --max-bytes {max_bytes:,} ({message}); "
                                    "raise --max-bytes") from None
        raise errors.QueryError(f"SQL error: {message}") from None
    except sqlite3.Warning as exc:  # e.g. "You can only execute one statement at a time."
        raise errors.QueryError(f"SQL error: {exc}") from None
    finally:
        cur.close()
        if setlimit is not None:
            setlimit(_SQLITE_LIMIT_LENGTH, length)
        dbapi.set_authorizer(None)
        dbapi.set_progress_handler(None, 0)
        if dbapi.in_transaction:
            dbapi.rollback()


# -- PostgreSQL --------------------------------------------------------------------------------------------------------
def _postgres(dbapi: Any, statement: str, max_rows: int | None, timeout_s: float, max_bytes: int) -> QueryResult:
    import psycopg
    from psycopg import sql

    query = _TRAILING_END.sub("", statement.strip())
    functions = _parse_pg(query)
    dbapi.rollback()
    try:
        schema = _check_reader(dbapi)
        _check_functions(dbapi, functions)
        columns = _describe(dbapi, query)
        with dbapi.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute("SELECT set_config('statement_timeout', %s, true)", [str(max(1, int(timeout_s * 1000)))])
        _limit_temp_files(dbapi, max_bytes)
        limit = None if max_rows is None else max_rows + 1
        with dbapi.cursor(name="saev_ops_sql") as cur:
            cur.itersize = _CHUNK
            cur.execute(sql.SQL("SELECT r FROM {}.{}(%s, %s, %s) AS r").format(
                sql.Identifier(schema), sql.Identifier(READ_FUNCTION)), [query, limit, max_bytes])

            def rows() -> Iterator[tuple[Any, ...]]:
                while chunk := cur.fetchmany(_CHUNK):
                    for (text,) in chunk:
                        pairs = json.loads(text, object_pairs_hook=list)
                        yield tuple(v for _, v in pairs)

            return _collect(columns, rows(), max_rows, max_bytes)
    except psycopg.errors.QueryCanceled:
        raise errors.QueryError(f"the statement ran past --timeout {timeout_s:g} s and was stopped") from None
    except psycopg.errors.ProgramLimitExceeded as exc:
        message = _first_line(exc)
        if message.startswith("saev-ops: the result passed"):
            raise errors.QueryError(f"refused: {message.removeprefix('saev-ops: ')} (--max-bytes); select fewer or "
                                    "smaller columns, or raise --max-bytes") from None
        raise errors.QueryError(f"SQL error: {message}") from None
    except psycopg.errors.ConfigurationLimitExceeded as exc:  # temp_file_limit
        raise errors.QueryError(f"refused: the query needed more server temporary files than --max-bytes "
                                f"{max_bytes:,} ({_first_line(exc)})") from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise errors.QueryError(
            f"refused: `saev-ops sql` runs as this registry's read-only role ({_first_line(exc)})"
        ) from None
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise errors.QueryError(f"refused: `saev-ops sql` is read-only ({_first_line(exc)})") from None
    except psycopg.Error as exc:
        raise errors.QueryError(f"SQL error: {_first_line(exc)}") from None
    finally:
        dbapi.rollback()
        _release_advisory_locks(dbapi)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _parse_pg(query: str) -> set[tuple[str, ...]]:
    """Parse ``query`` with PostgreSQL's own parser (nothing runs): it must be one read-only query. Returns the names
    of the functions it calls (schema-qualified where written so)."""
    import pglast
    from pglast import ast
    from pglast.visitors import Visitor

    try:
        stmts = pglast.parse_sql(query)
    except pglast.parser.ParseError as exc:
        raise errors.QueryError(f"SQL error: {exc} (`saev-ops sql` takes one query: SELECT, WITH, VALUES or "
                                "TABLE)") from None
    one_query = "refused: `saev-ops sql` is read-only and takes one query (SELECT, WITH, VALUES or TABLE)"
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.SelectStmt):
        found = f"{len(stmts)} statements" if len(stmts) != 1 else type(stmts[0].stmt).__name__
        raise errors.QueryError(f"{one_query}; found {found}")

    class Walk(Visitor):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[tuple[str, ...]] = set()
            self.refused: list[str] = []

        def visit_FuncCall(self, _ancestors: Any, node: Any) -> None:
            self.names.add(tuple(str(part.sval).lower() for part in node.funcname))

        def visit_CommonTableExpr(self, _ancestors: Any, node: Any) -> None:
            if not isinstance(node.ctequery, ast.SelectStmt):
                self.refused.append(f"a data-modifying WITH ({type(node.ctequery).__name__})")

        def visit_SelectStmt(self, _ancestors: Any, node: Any) -> None:
            if node.intoClause is not None:
                self.refused.append("SELECT INTO")
            if node.lockingClause:
                self.refused.append("a row lock (FOR UPDATE/SHARE)")

    walk = Walk()
    walk(stmts[0])
    if walk.refused:
        raise errors.QueryError(f"{one_query}; found {walk.refused[0]}")
    return walk.names


def _check_functions(dbapi: Any, names: set[tuple[str, ...]]) -> None:
    """Refuse a query that calls a volatile function (one that may change what outlives the statement) outside
    :data:`_PG_VOLATILE_ALLOWED`, or one of :data:`_PG_REFUSED`. Any function of that name counts, in any schema."""
    bare = sorted({n[-1] for n in names})
    if not bare:
        return
    with dbapi.cursor() as cur:
        cur.execute("SELECT DISTINCT proname FROM pg_catalog.pg_proc WHERE proname = ANY(%s) AND provolatile = 'v'",
                    [bare])
        volatile = {row[0] for row in cur.fetchall()}
    dbapi.rollback()
    refused = sorted((volatile - _PG_VOLATILE_ALLOWED) | (set(bare) & _PG_REFUSED))
    if refused:
        raise errors.QueryError(
            f"refused: `saev-ops sql` is read-only and may not call {', '.join(f'{n}()' for n in refused)}: a volatile "
            "function can change what outlives the query (WAL, sequences, large objects, notifications, locks, "
            f"settings); volatile functions allowed: {', '.join(sorted(_PG_VOLATILE_ALLOWED))}")


def _limit_temp_files(dbapi: Any, max_bytes: int) -> None:
    """Bound the server's temporary files to ``max_bytes`` for this transaction (a set-returning function in FROM is
    materialised whatever LIMIT says). Only a role allowed to set ``temp_file_limit`` can; otherwise say so."""
    import psycopg

    try:
        with dbapi.cursor() as cur:
            cur.execute("SAVEPOINT saev_ops_temp")
            cur.execute("SELECT set_config('temp_file_limit', %s, true)", [f"{max(1, max_bytes // 1024)}kB"])
            cur.execute("RELEASE SAVEPOINT saev_ops_temp")
    except psycopg.errors.InsufficientPrivilege:
        with dbapi.cursor() as cur:
            cur.execute("ROLLBACK TO SAVEPOINT saev_ops_temp")
        log.warning("this registry's role may not set temp_file_limit, so a query's server temporary files are not "
                    "bounded (an administrator: GRANT SET ON PARAMETER temp_file_limit TO <this role>)")


def _release_advisory_locks(dbapi: Any) -> None:
    """Session advisory locks outlive the transaction on a pooled connection; none taken by user SQL may stay."""
    import psycopg

    try:
        with dbapi.cursor() as cur:
            cur.execute("SELECT pg_catalog.pg_advisory_unlock_all()")
        dbapi.rollback()
    except psycopg.Error:
        log.warning("could not release advisory locks after a `saev-ops sql` query; the connection is discarded")
        dbapi.close()


def _check_reader(dbapi: Any) -> str:
    """Refuse unless this schema's read function is what the migration made: owned by this registry's reader role (a
    role without superuser, login, or server-file rights), SECURITY DEFINER, pinned to this schema, not executable by
    PUBLIC, with :data:`~saev_ops.registry.reader_setup.READ_BODY` as its body. Returns the schema."""
    import psycopg

    dangerous = " OR ".join(f"pg_has_role(p.proowner, '{r}', 'USAGE')" for r in _PG_DANGEROUS_ROLES)
    how = "run `saev-ops db reader-setup` (docs/sql.md)"
    with dbapi.cursor() as cur:
        cur.execute("SELECT current_schema()")
        (schema,) = cur.fetchone()
        try:
            cur.execute("SELECT id FROM registry_identity")
            rid = cur.fetchone()
        except psycopg.Error:  # no such table: a schema older than migration 0006
            rid = None
        dbapi.rollback()
        if rid is None:
            raise errors.QueryError(f"refused: schema {schema} has no registry identity (an older schema?); run "
                                    "`saev-ops db upgrade`")
        role = reader_role(str(rid[0]))
        cur.execute(
            f"SELECT r.rolname, p.prosecdef, r.rolsuper OR r.rolcanlogin OR {dangerous}, p.proconfig, p.prosrc, "
            "EXISTS (SELECT FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
            "        WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'), "
            "format('search_path=pg_catalog, %%I, pg_temp', current_schema()) "
            "FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner "
            "WHERE p.oid = to_regprocedure(format('%%I.%%I(text, bigint, bigint)', current_schema(), %s::text))",
            [READ_FUNCTION],
        )
        found = cur.fetchone()
    dbapi.rollback()
    if found is None:
        raise errors.QueryError(
            f"refused: `saev-ops sql` runs user SQL as this registry's read-only role {role} through the function "
            f"{READ_FUNCTION}(), and this registry has none (the role that migrated it could not create the role); "
            + how
        )
    owner, secdef, privileged, config, body, public, pinned = found
    wrong = []
    if owner != role:
        wrong.append(f"owner {owner!r}, not {role!r}")
    if not secdef:
        wrong.append("not SECURITY DEFINER")
    if privileged:
        wrong.append("its owner may log in or has superuser or server-file rights")
    if list(config or []) != [pinned]:
        wrong.append(f"settings {list(config or [])}, not [{pinned!r}]")
    if public:
        wrong.append("PUBLIC may execute it")
    if body != READ_BODY:
        wrong.append("its body was changed")
    if wrong:
        raise errors.QueryError(f"refused: {schema}.{READ_FUNCTION}() is not the function this registry's migration "
                                f"made ({'; '.join(wrong)}); " + how)
    return str(schema)


def _describe(dbapi: Any, query: str) -> tuple[str, ...]:
    """The query's column names, from parsing it (nothing is executed). A statement that parses alone but not as a
    subquery is refused as not read-only."""
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
