"""Alembic environment for the saev-ops registry.

Two ways in:
- from saev-ops (``saev_ops.registry.migrate``), which passes an open connection in ``config.attributes["connection"]``;
- from the ``alembic`` command in the repository root, which resolves the URL like saev-ops does
  (``-x db=URL``, else ``SAEV_OPS_DB_URL``, else the default SQLite file).
"""

from __future__ import annotations

from alembic import context

from saev_ops.registry import engine as engine_mod
from saev_ops.registry.models import Base
from saev_ops.registry.schema_version import VERSION_TABLE
from saev_ops.settings import resolve_db_url

config = context.config


def _configure_and_run(connection) -> None:  # noqa: ANN001 - alembic passes a SQLAlchemy Connection
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite needs batch mode for ALTER TABLE
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    url = resolve_db_url(context.get_x_argument(as_dictionary=True).get("db"))
    engine = engine_mod.create_registry_engine(url)
    with engine.connect() as conn:
        _configure_and_run(conn)
        conn.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("saev-ops migrations run online only: give a database URL with -x db=URL or SAEV_OPS_DB_URL")
run_migrations_online()
