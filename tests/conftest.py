"""Shared fixtures: registries on every backend, each test isolated in its own SQLite file or Postgres schema.

PostgreSQL comes from ``SAEV_OPS_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``). When it is not
reachable the Postgres cases skip, unless ``SAEV_OPS_REQUIRE_SERVICES=1`` (set by .ci/run), which turns that into a
failure.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.helpers import PG_URL, REQUIRE_SERVICES


def _pg_available() -> str | None:
    import sqlalchemy as sa

    from saev_ops.registry.engine import create_registry_engine

    try:
        engine = create_registry_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return str(exc).splitlines()[0]


def require_postgres() -> None:
    reason = _pg_available()
    if reason is not None:
        if REQUIRE_SERVICES:
            pytest.fail(f"PostgreSQL at {PG_URL} is required (SAEV_OPS_REQUIRE_SERVICES=1) but unreachable: {reason}")
        pytest.skip(f"PostgreSQL at {PG_URL} unreachable: {reason}")


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema, dropped afterwards."""
    require_postgres()
    import sqlalchemy as sa

    from saev_ops.registry.engine import create_registry_engine

    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_registry_engine(PG_URL)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        conn.commit()
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        drop_registry_schema(admin, schema)
        admin.dispose()


def drop_registry_schema(admin, schema: str) -> None:  # noqa: ANN001 - an SQLAlchemy engine
    """Drop a test registry's schema and its own reader role (roles are server-wide: they would pile up)."""
    import sqlalchemy as sa

    from saev_ops.registry.schema_version import reader_role

    with admin.connect() as conn:
        try:
            rid = conn.execute(sa.text(f"SELECT id FROM {schema}.registry_identity")).scalar()
        except sa.exc.DBAPIError:
            rid = None
        conn.rollback()
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        if rid is not None:
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {reader_role(str(rid))}"))
        conn.commit()


@pytest.fixture(params=["sqlite-memory", "sqlite-file", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:  # noqa: ANN001
    if request.param == "sqlite-memory":
        return "sqlite://"
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'registry.sqlite'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture(params=["sqlite-file", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_db_url(request: pytest.FixtureRequest, tmp_path) -> str:  # noqa: ANN001
    """A database that several processes can open (no in-memory SQLite)."""
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'registry.sqlite'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def registry(db_url: str):  # noqa: ANN201
    from saev_ops.registry import Registry

    reg = Registry(db_url)
    yield reg
    reg.close()


@pytest.fixture
def sqlite_registry(tmp_path):  # noqa: ANN001, ANN201
    from saev_ops.registry import Registry

    reg = Registry(f"sqlite:///{tmp_path / 'registry.sqlite'}")
    yield reg
    reg.close()
