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
from saev_ops.registry.schema_version import READ_FUNCTION, reader_role
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
        assert run_read_only(reg, "SELECT current_user AS u").rows == [(reader_role(reg.registry_id),)]
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
        tracemalloc.start()  # a set-returning function in the select list streams (in FROM it is materialised)
        res = run_read_only(reg, "SELECT generate_series(1, 10000000) AS g, repeat('x', 30) AS pad", max_rows=5)
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
            conn.execute(sa.text(f"ALTER FUNCTION {READ_FUNCTION}(text, bigint, bigint) OWNER TO postgres"))
        with pytest.raises(errors.QueryError, match="owner 'postgres', not 'saev_ops_reader_.*db reader-setup"):
            run_read_only(reg, "SELECT 1")
        with reg.engine.begin() as conn:
            conn.execute(sa.text(f"DROP FUNCTION {READ_FUNCTION}(text, bigint, bigint)"))
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
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "saev_ops", "--db", url, "db", "upgrade"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "could not set up this registry's reader role" in res.stderr and "db reader-setup" in res.stderr, \
        res.stderr
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
        role = reader_role(reg.registry_id)
        assert res.exit_code == 1 and f"CREATE ROLE {role} NOLOGIN NOINHERIT; GRANT {role} TO" in res.output, \
            res.output
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE ROLE {role} NOLOGIN NOINHERIT"))
            conn.execute(sa.text(f"GRANT {role} TO {owner}"))
        res = CliRunner().invoke(cli, ["--db", url, "db", "reader-setup"])
        assert res.exit_code == 0, res.output
        assert run_read_only(reg, "SELECT current_user AS u").rows == [(reader_role(reg.registry_id),)]
    finally:
        reg.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))  # the fixture drops it again
            conn.execute(sa.text(f"DROP OWNED BY {owner}"))
            conn.execute(sa.text(f"DROP ROLE {owner}"))
        admin.dispose()


# -- nothing persistent changes; bounded results; one registry cannot reach another ------------------------------------------
def _admin():  # noqa: ANN202 - an SQLAlchemy engine on the test server as its superuser
    from saev_ops.registry.engine import create_registry_engine
    from tests.helpers import PG_URL

    return create_registry_engine(PG_URL)


def _scalar(engine, sql: str):  # noqa: ANN001, ANN202
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


@pytest.mark.postgres
def test_pg_read_only_queries_change_nothing_that_lasts(pg_schema_url: str) -> None:
    """Each statement here changed something that outlives the query (46 MB of WAL, a sequence, a large object, a
    notification, a session lock or setting, a transaction id); volatile functions are refused before anything runs."""
    reg = _seeded(pg_schema_url)
    admin = _admin()
    schema = pg_schema_url.rsplit("%3D", 1)[1]
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SEQUENCE {schema}.probe_seq"))
    statements = [
        "SELECT count(pg_logical_emit_message(false, 'p', repeat('x', 1000000))) FROM generate_series(1, 50)",
        f"SELECT nextval('{schema}.probe_seq')",
        f"SELECT setval('{schema}.probe_seq', 1000)",
        "SELECT lo_from_bytea(0, 'x')",
        "SELECT lo_create(0)",
        "SELECT pg_notify('saev_ops_probe', 'x')",
        "SELECT pg_advisory_lock(424242)",
        "SELECT pg_try_advisory_lock(424242)",
        "SELECT set_config('work_mem', '1GB', false)",
        "SELECT txid_current()",
        "SELECT * FROM (SELECT pg_catalog.pg_logical_emit_message(true, 'p', 'x')) AS s",
        "WITH s AS (SELECT Pg_Logical_Emit_Message(false, 'p', 'x') AS m) SELECT * FROM s",
    ]
    temp_bytes = "SELECT temp_bytes FROM pg_stat_database WHERE datname = current_database()"
    try:
        wal0 = _scalar(admin, "SELECT pg_current_wal_lsn()")
        temp0 = _scalar(admin, temp_bytes)
        n_lo = _scalar(admin, "SELECT count(*) FROM pg_largeobject_metadata")
        for statement in statements:
            with pytest.raises(errors.QueryError, match="refused: `saev-ops sql` is read-only and may not call"):
                run_read_only(reg, statement)
        wal = _scalar(admin, f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal0}')")
        assert wal < 256 << 10, f"{wal} bytes of WAL"  # background writes only, not the 46 MB asked for
        time.sleep(1)  # statistics reach pg_stat_database shortly after a transaction
        assert _scalar(admin, temp_bytes) == temp0  # no server temporary files either
        assert _scalar(admin, f"SELECT last_value FROM {schema}.probe_seq") == 1
        assert _scalar(admin, "SELECT count(*) FROM pg_largeobject_metadata") == n_lo
        assert _scalar(admin, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 424242") == 0
        # harmless volatile functions stay allowed, and the connection is as it was
        assert run_read_only(reg, "SELECT random() < 2 AS ok").rows == [(True,)]
        assert reg.get_dataset("inat21").name == "inat21"
    finally:
        reg.close()
        admin.dispose()


@pytest.mark.postgres
def test_pg_advisory_locks_do_not_outlive_a_query_on_the_pool(pg_schema_url: str, monkeypatch) -> None:  # noqa: ANN001
    """Were a lock-taking function to get past the volatile-function check, the lock still ends with the query."""
    from saev_ops.registry import sql

    reg = _seeded(pg_schema_url)
    admin = _admin()
    try:
        monkeypatch.setattr(sql, "_check_functions", lambda *_: None)
        assert run_read_only(reg, "SELECT pg_try_advisory_lock(515151) AS got").rows == [(True,)]
        assert _scalar(admin, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 515151") == 0
    finally:
        reg.close()
        admin.dispose()


@pytest.mark.postgres
def test_pg_results_and_temp_files_are_bounded_in_bytes(pg_schema_url: str) -> None:
    reg = _seeded(pg_schema_url)
    admin = _admin()
    try:
        tracemalloc.start()
        with pytest.raises(errors.QueryError, match=r"refused: the result passed 1048576 bytes at row 1 \(--max-bytes"):
            run_read_only(reg, "SELECT repeat('x', 100000000) AS a, repeat('y', 100000000) AS b", max_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 20 << 20, f"{peak / 2**20:.0f} MiB held"

        def temp_bytes() -> int:
            return int(_scalar(admin, "SELECT temp_bytes FROM pg_stat_database WHERE datname = current_database()"))

        before = temp_bytes()
        with pytest.raises(errors.QueryError, match="server temporary files than --max-bytes 4,194,304"):
            run_read_only(reg, "SELECT * FROM generate_series(1, 1e8)", max_rows=5, max_bytes=4 << 20)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # statistics reach pg_stat_database shortly after the transaction
            time.sleep(0.2)
        assert temp_bytes() - before <= 8 << 20, "temporary files past the bound"
        res = CliRunner().invoke(cli, ["--db", pg_schema_url, "sql", "SELECT repeat('x', 5000) AS a",
                                       "--max-bytes", "2048"])
        assert res.exit_code == 1 and "--max-bytes" in res.output and "Traceback" not in res.output, res.output
    finally:
        reg.close()
        admin.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_pg_text_that_closes_the_subquery_is_refused_by_the_parser(pg_schema_url: str, fmt: str) -> None:
    reg = _seeded(pg_schema_url)
    try:
        for statement in ("SELECT 1 AS a) AS t, (SELECT 2 AS b", "SELECT name FROM datasets) x; SELECT (1",
                          "SELECT 1; SELECT 2", "WITH d AS (DELETE FROM datasets RETURNING 1) SELECT * FROM d",
                          "SELECT * INTO copy_of_runs FROM runs", "SELECT * FROM datasets FOR UPDATE"):
            res = CliRunner().invoke(cli, ["--db", pg_schema_url, "sql", statement, "--format", fmt])
            assert res.exit_code == 1 and res.output.startswith("Error: ") and "Traceback" not in res.output, \
                (statement, res.output)
        assert reg.get_dataset("inat21").name == "inat21"
    finally:
        reg.close()


@pytest.mark.postgres
def test_pg_a_read_function_not_as_the_migration_made_it_is_refused(pg_schema_url: str) -> None:
    reg = _seeded(pg_schema_url)
    fn = f"{READ_FUNCTION}(text, bigint, bigint)"
    changes = [
        (f"ALTER FUNCTION {fn} SET search_path = public, pg_temp", "settings"),
        (f"GRANT EXECUTE ON FUNCTION {fn} TO PUBLIC", "PUBLIC may execute it"),
        (f"ALTER FUNCTION {fn} SECURITY INVOKER", "not SECURITY DEFINER"),
        (f"CREATE OR REPLACE FUNCTION {READ_FUNCTION}(query text, max_rows bigint, max_bytes bigint) RETURNS SETOF text "
         "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT query $$", "body"),
    ]
    try:
        for change, why in changes:
            with reg.engine.begin() as conn:
                conn.execute(sa.text(change))
            with pytest.raises(errors.QueryError, match=f"not the function this registry's migration made.*{why}"):
                run_read_only(reg, "SELECT 1 AS one")
            res = CliRunner().invoke(cli, ["--db", pg_schema_url, "db", "reader-setup"])  # repairs it
            assert res.exit_code == 0, res.output
            assert run_read_only(reg, "SELECT 1 AS one").rows == [(1,)]
    finally:
        reg.close()


def _acls(engine, schema: str) -> list:  # noqa: ANN001
    """Everything that says who may read ``schema``: the schema's, its tables' and its function's ACLs, its default
    privileges."""
    with engine.connect() as conn:
        return [conn.execute(sa.text(q), {"s": schema}).all() for q in (
            "SELECT nspacl::text FROM pg_namespace WHERE nspname = :s",
            "SELECT relname, relacl::text FROM pg_class WHERE relnamespace = :s ::regnamespace ORDER BY relname",
            "SELECT proname, proacl::text, proowner::regrole::text FROM pg_proc WHERE pronamespace = :s ::regnamespace",
            "SELECT defaclacl::text FROM pg_default_acl WHERE defaclnamespace = :s ::regnamespace",
        )]


@pytest.mark.postgres
def test_pg_registries_on_one_server_cannot_read_or_redirect_each_other() -> None:
    """Two registries, each owned by its own login role (as two users of one server): each reads its own registry
    only, cannot take the other's reader role or re-point its function, and migrating the second changes nothing of
    the first's grants. The registry of an earlier version loses the server-wide reader's grants."""
    import subprocess
    import sys

    from saev_ops.registry.schema_version import LEGACY_READER_ROLE
    from tests.conftest import drop_registry_schema, require_postgres
    from tests.helpers import PG_URL

    require_postgres()
    admin = _admin()
    tag = uuid.uuid4().hex[:8]
    users = {x: (f"saev_ops_user_{x}_{tag}", f"t_{x}_{tag}") for x in ("a", "b")}
    sep = "&" if "?" in PG_URL else "?"
    urls = {x: f"{PG_URL.replace('postgres@', f'{u}@', 1)}{sep}options=-csearch_path%3D{s}"
            for x, (u, s) in users.items()}
    with admin.begin() as conn:
        for user, schema in users.values():
            conn.execute(sa.text(f"CREATE ROLE {user} LOGIN"))
            conn.execute(sa.text(f"CREATE SCHEMA {schema} AUTHORIZATION {user}"))
    regs: dict[str, Registry] = {}
    try:
        for x in ("a", "b"):
            if x == "b":
                before = _acls(admin, users["a"][1])
            # the owner may not create roles: the migration warns, an administrator creates the reader, reader-setup
            res = subprocess.run([sys.executable, "-m", "saev_ops", "--db", urls[x], "db", "upgrade"],
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0 and "could not set up this registry's reader role" in res.stderr, res.stderr
            regs[x] = _seeded(urls[x])
            role = reader_role(regs[x].registry_id)
            with admin.begin() as conn:
                conn.execute(sa.text(f"CREATE ROLE {role} NOLOGIN NOINHERIT"))
                conn.execute(sa.text(f"GRANT {role} TO {users[x][0]}"))
            res = CliRunner().invoke(cli, ["--db", urls[x], "db", "reader-setup"])
            assert res.exit_code == 0 and role in res.output, res.output
            if x == "b":
                assert _acls(admin, users["a"][1]) == before
        a, b = regs["a"], regs["b"]
        assert a.registry_id != b.registry_id
        assert run_read_only(a, "SELECT name FROM datasets").rows == [("inat21",)]
        other = users["b"][1]
        with pytest.raises(errors.QueryError, match="permission denied"):
            run_read_only(a, f"SELECT name FROM {other}.datasets")
        with a.engine.connect() as conn:  # as a's owner, in psql
            for attack in (f"SET ROLE {reader_role(b.registry_id)}",
                           f"ALTER FUNCTION {other}.{READ_FUNCTION}(text, bigint, bigint) SET search_path = public",
                           f"SELECT * FROM {other}.datasets"):
                with pytest.raises(sa.exc.DBAPIError, match="permission denied|must be owner"):
                    conn.execute(sa.text(attack))
                conn.rollback()
        # a registry set up by an earlier version: the server-wide reader had SELECT on it; reader-setup revokes it
        with admin.begin() as conn:
            conn.execute(sa.text(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                                 f"'{LEGACY_READER_ROLE}') THEN CREATE ROLE {LEGACY_READER_ROLE} NOLOGIN; END IF; "
                                 "END $$"))
            conn.execute(sa.text(f"GRANT USAGE ON SCHEMA {other} TO {LEGACY_READER_ROLE}"))
            conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA {other} TO {LEGACY_READER_ROLE}"))
        assert CliRunner().invoke(cli, ["--db", urls["b"], "db", "reader-setup"]).exit_code == 0
        assert _scalar(admin, f"SELECT has_schema_privilege('{LEGACY_READER_ROLE}', '{other}', 'USAGE')") is False
        assert _scalar(admin, f"SELECT has_table_privilege('{LEGACY_READER_ROLE}', '{other}.datasets', "
                              "'SELECT')") is False
    finally:
        for reg in regs.values():
            reg.close()
        for user, schema in users.values():
            drop_registry_schema(admin, schema)
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP OWNED BY {user}"))
                conn.execute(sa.text(f"DROP ROLE {user}"))
        admin.dispose()


# -- SQLite: functions from an allow-list, values bounded in bytes ------------------------------------------------------------
@pytest.mark.parametrize("statement, what", [
    ("SELECT fts3_tokenizer('simple')", "fts3_tokenizer"),
    ("SELECT fts3_tokenizer('simple', x'0000000000000000')", "fts3_tokenizer"),
    ("SELECT load_extension('/tmp/x.so')", "load_extension"),
])
def test_sqlite_functions_outside_the_allow_list_are_refused(sqlite_file, statement: str, what: str) -> None:  # noqa: ANN001
    reg, _ = sqlite_file
    with pytest.raises(errors.QueryError, match=f"refused: .* may not run the function {what}"):
        run_read_only(reg, statement)
    assert run_read_only(reg, "SELECT upper(name) AS n, count(*) AS c FROM datasets").rows == [("INAT21", 1)]


def test_sqlite_results_are_bounded_in_bytes(sqlite_file) -> None:  # noqa: ANN001
    import resource
    import sys

    reg, _ = sqlite_file
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(errors.QueryError, match="--max-bytes"):
        run_read_only(reg, "SELECT randomblob(200000000) AS b")
    with pytest.raises(errors.QueryError, match=r"refused: the result passed --max-bytes 1,048,576 at row"):
        run_read_only(reg, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) "
                           "SELECT i, printf('%.100c', 'x') AS pad FROM n", max_bytes=1 << 20)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    if sys.version_info >= (3, 11):  # the connection's length limit needs sqlite3's setlimit
        assert grown_mb < 100, f"{grown_mb:.0f} MB"
    # every view still reads under the allow-list
    for view in ("run_table", "metric_history", "inference_lineage", "output_table"):
        run_read_only(reg, f"SELECT * FROM {view}")
