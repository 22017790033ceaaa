"""`saev-ops sql` against hostile SQL, with the registry URL naming a privileged role (the CI's postgres superuser).

Each statement here did harm before the reader role and the SQLite authorizer: ran a shell command or wrote a file on
the database server, read server files, killed another session, reloaded the server's configuration, rewrote the SQLite
header, created files at any writable path, or left a pooled connection with foreign keys off.
"""

from __future__ import annotations

import pathlib
import time
import tracemalloc
import uuid

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from saev_ops import errors
from saev_ops.cli import cli
from saev_ops.registry import Registry
from saev_ops.registry.schema import READ_FUNCTION
from saev_ops.registry.sql import run_read_only
from tests.helpers import make_dataset


def _seeded(url: str) -> Registry:
    reg = Registry(url)
    make_dataset(reg)
    return reg


def _server_path() -> pathlib.Path:
    """A path the database server's own user could write (/tmp is world-writable), removed by the test."""
    return pathlib.Path("/tmp") / f"saev_ops_probe_{uuid.uuid4().hex}"


# -- PostgreSQL ----------------------------------------------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.parametrize(
    "template",
    [
        "COPY (SELECT 1) TO PROGRAM 'touch {path}'",
        "COPY (SELECT 1) TO '{path}'",
        "SELECT * FROM (SELECT 1) AS t; COPY (SELECT 1) TO PROGRAM 'touch {path}'",
        "SELECT 1) AS t; COPY (SELECT 1) TO PROGRAM 'touch {path}'; SELECT * FROM (SELECT 1",
    ],
)
def test_pg_copy_to_program_or_file_is_refused(pg_schema_url: str, template: str) -> None:
    reg = _seeded(pg_schema_url)
    path = _server_path()
    try:
        with pytest.raises(errors.QueryError):
            run_read_only(reg, template.format(path=path))
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)
        reg.close()


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT pg_read_file('/etc/hostname')",
        "SELECT pg_reload_conf()",
        "SELECT * FROM pg_authid",
        # a superuser session may switch back from SET ROLE inside one statement; not from the reader's function
        "SELECT set_config('role', 'postgres', true) AS r, "
        "query_to_xml('SELECT pg_read_file(''/etc/hostname'') AS f', true, false, '') AS x",
        "SET ROLE postgres",
        "RESET ROLE",
        "SELECT lo_import('/etc/hostname')",
    ],
)
def test_pg_server_files_settings_and_roles_are_refused(pg_schema_url: str, statement: str) -> None:
    reg = _seeded(pg_schema_url)
    try:
        with pytest.raises(errors.QueryError, match="refused|SQL error"):
            run_read_only(reg, statement)
        assert run_read_only(reg, "SELECT current_user AS u").rows == [("saev_ops_reader",)]
    finally:
        reg.close()


@pytest.mark.postgres
def test_pg_cannot_terminate_other_sessions(pg_schema_url: str) -> None:
    reg = _seeded(pg_schema_url)
    other = sa.create_engine(pg_schema_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with other.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
            with pytest.raises(errors.QueryError, match="refused"):
                run_read_only(reg, f"SELECT pg_terminate_backend({pid})")
            with pytest.raises(errors.QueryError, match="refused"):
                run_read_only(reg, f"SELECT pg_cancel_backend({pid})")
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1  # still alive
    finally:
        other.dispose()
        reg.close()


@pytest.mark.postgres
def test_pg_reads_views_as_the_reader(pg_schema_url: str) -> None:
    reg = _seeded(pg_schema_url)
    try:
        res = run_read_only(reg, "SELECT name, d_model, 1 AS one, 2 AS one FROM datasets;  -- trailing comment")
        assert res.columns == ("name", "d_model", "one", "one")
        assert res.rows == [("inat21", 768, 1, 2)]
        empty = run_read_only(reg, "SELECT run_id, nmse FROM run_table WHERE false")
        assert empty.columns == ("run_id", "nmse") and empty.rows == []
    finally:
        reg.close()


@pytest.mark.postgres
def test_pg_timeout_and_streaming(pg_schema_url: str) -> None:
    reg = _seeded(pg_schema_url)
    try:
        t0 = time.monotonic()
        with pytest.raises(errors.QueryError, match="--timeout"):
            run_read_only(reg, "SELECT pg_sleep(30)", timeout_s=0.5)
        assert time.monotonic() - t0 < 25  # stopped by the timeout, not by the sleep ending
        tracemalloc.start()
        res = run_read_only(reg, "SELECT g, repeat('x', 30) AS pad FROM generate_series(1, 10000000) AS g",
                            max_rows=5)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert res.rows == [(i, "x" * 30) for i in range(1, 6)] and res.truncated
        assert peak < 20 << 20, f"{peak / 2**20:.0f} MiB held for 5 rows"
    finally:
        reg.close()


@pytest.mark.postgres
def test_pg_refuses_without_a_usable_reader(pg_schema_url: str) -> None:
    reg = _seeded(pg_schema_url)
    try:
        with reg.engine.begin() as conn:
            conn.execute(sa.text(f"ALTER FUNCTION {READ_FUNCTION}(text, bigint) OWNER TO postgres"))
        with pytest.raises(errors.QueryError, match="owned by saev_ops_reader.*db reader-setup"):
            run_read_only(reg, "SELECT 1")
        with reg.engine.begin() as conn:
            conn.execute(sa.text(f"DROP FUNCTION {READ_FUNCTION}(text, bigint)"))
        with pytest.raises(errors.QueryError, match="has none.*db reader-setup"):
            run_read_only(reg, "SELECT 1")
        res = CliRunner().invoke(cli, ["--db", pg_schema_url, "db", "reader-setup"])
        assert res.exit_code == 0, res.output
        assert run_read_only(reg, "SELECT name FROM datasets").rows == [("inat21",)]
    finally:
        reg.close()


# -- SQLite ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def sqlite_file(tmp_path: pathlib.Path) -> tuple[Registry, pathlib.Path]:
    db = tmp_path / "registry.sqlite"
    reg = _seeded(f"sqlite:///{db}")
    yield reg, db
    reg.close()


@pytest.mark.parametrize(
    "statement, leftover",
    [
        ("ATTACH DATABASE '{tmp}/attached.db' AS x", "attached.db"),
        ("VACUUM INTO '{tmp}/copy.db'", "copy.db"),
        ("VACUUM", None),
        ("PRAGMA journal_mode=DELETE", None),
        ("PRAGMA foreign_keys=OFF", None),
        ("PRAGMA query_only=OFF", None),
        ("PRAGMA writable_schema=ON", None),
        ("BEGIN", None),
        ("CREATE TEMP TABLE t(x)", None),
    ],
)
def test_sqlite_state_and_file_changes_are_refused(sqlite_file, tmp_path: pathlib.Path, statement: str,
                                                   leftover: str | None) -> None:
    reg, db = sqlite_file
    header = db.read_bytes()[:100]
    with pytest.raises(errors.QueryError, match="refused"):
        run_read_only(reg, statement.format(tmp=tmp_path))
    assert db.read_bytes()[:100] == header  # journal mode (bytes 18-19) and the rest untouched
    if leftover:
        assert not (tmp_path / leftover).exists()
    # the pooled connection carries nothing over: foreign keys still hold for registry work
    with pytest.raises(errors.NotFoundError):
        reg.log_metrics(999, [("nmse", 1, 0.5)])
    with reg.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert {r[1] for r in conn.exec_driver_sql("PRAGMA database_list")} <= {"main", "temp"}


def test_sqlite_introspection_reads_work(sqlite_file) -> None:
    reg, _ = sqlite_file
    cols = [r[1] for r in run_read_only(reg, "PRAGMA table_info(datasets)").rows]
    assert "name" in cols and "content_hash" in cols
    res = run_read_only(reg, "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3) "
                             "SELECT i FROM c")
    assert res.rows == [(1,), (2,), (3,)]


def test_sqlite_timeout_and_streaming(sqlite_file) -> None:
    reg, _ = sqlite_file
    endless = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT max(i) FROM c"
    with pytest.raises(errors.QueryError, match="--timeout"):
        run_read_only(reg, endless, timeout_s=0.3)
    many = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT i, 'padding' AS p FROM c"
    tracemalloc.start()
    res = run_read_only(reg, many, max_rows=5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert res.rows == [(i, "padding") for i in range(1, 6)] and res.truncated
    assert peak < 20 << 20
    assert reg.get_dataset("inat21").name == "inat21"  # the connection is usable afterwards


@pytest.mark.postgres
def test_pg_role_that_cannot_create_roles_gets_a_refusal_not_a_privileged_function(pg_schema_url: str) -> None:
    """A registry migrated by a role without CREATEROLE: the migration warns and creates nothing of the reader;
    `sql` refuses with the fix; after an administrator creates and grants the role, `db reader-setup` completes it."""
    import uuid as _uuid

    from saev_ops.registry.engine import create_registry_engine

    schema = pg_schema_url.rsplit("%3D", 1)[1]
    owner = "saev_ops_owner_" + _uuid.uuid4().hex[:8]
    admin = create_registry_engine(pg_schema_url.split("?")[0])
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {owner} LOGIN NOCREATEROLE"))
        conn.execute(sa.text(f"ALTER SCHEMA {schema} OWNER TO {owner}"))
    url = pg_schema_url.replace("postgres@", f"{owner}@", 1)
    reg = Registry(url)
    try:
        exists = "SELECT count(*) FROM pg_proc WHERE proname = :f AND pronamespace = :s ::regnamespace"
        with admin.connect() as conn:
            owned = conn.execute(sa.text(exists), {"f": READ_FUNCTION, "s": schema}).scalar()
        if owned:  # the role exists already (created by an earlier test) and could not be granted to the owner
            pytest.fail("a function was created although the owner may not create or grant the reader role")
        with pytest.raises(errors.QueryError, match="db reader-setup"):
            run_read_only(reg, "SELECT 1")
        res = CliRunner().invoke(cli, ["--db", url, "db", "reader-setup"])
        assert res.exit_code == 1 and "CREATE ROLE saev_ops_reader" in res.output, res.output
        with admin.begin() as conn:
            conn.execute(sa.text("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'saev_ops_reader') "
                                 "THEN CREATE ROLE saev_ops_reader NOLOGIN NOINHERIT; END IF; END $$"))
            conn.execute(sa.text(f"GRANT saev_ops_reader TO {owner}"))
        res = CliRunner().invoke(cli, ["--db", url, "db", "reader-setup"])
        assert res.exit_code == 0, res.output
        assert run_read_only(reg, "SELECT current_user AS u").rows == [("saev_ops_reader",)]
    finally:
        reg.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))  # the fixture drops it again
            conn.execute(sa.text(f"DROP OWNED BY {owner}"))
            conn.execute(sa.text(f"DROP ROLE {owner}"))
        admin.dispose()
