"""Integrity: one metric point per (run, key, step); each run's directory; the reader role behind `saev-ops sql`.

Revision ID: 0003_integrity
Revises: 0002_query_views
Create Date: 2026-12-02

- ``metric_points``: duplicates written by resumed jobs (they re-log the steps between their checkpoint and the crash)
  and by re-synced metric files are removed, keeping the newest row of each (run_id, key, step); the lookup index becomes
  a unique index, so logging the same point again updates it in place (upsert).
- ``runs.run_dir``: the directory a run's job writes (SAE, metrics buffer); `saev-ops train RUN` resumes there.
- ``runs.local_pid``: the process that runs a local-executor job, so `sweep cancel` can stop it.
- PostgreSQL only: the NOLOGIN role ``saev_ops_reader`` with SELECT on this schema's tables and views, and the function
  ``saev_ops_read(query, max_rows)`` owned by it. The function is SECURITY DEFINER, so user SQL runs as the reader and
  PostgreSQL refuses any role change inside it (``SET ROLE`` alone is not enough: a superuser session can switch back
  with ``set_config('role', ...)`` in the same statement). When the migrating role may not create or grant the role,
  nothing of it is created and `saev-ops sql` refuses with the commands an administrator runs (README).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_integrity"
down_revision = "0002_query_views"
branch_labels = None
depends_on = None

READER_ROLE = "saev_ops_reader"
READ_FUNCTION = "saev_ops_read"

# Everything is inside one DO block so a missing privilege rolls all of it back (no function owned by a superuser).
# The query text is placed between newlines so a trailing "-- comment" cannot swallow the closing parenthesis.
_PG_READER = r"""
DO $do$
DECLARE
  s text := current_schema();
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
    EXECUTE 'CREATE ROLE {role} NOLOGIN NOINHERIT';
  END IF;
  IF NOT pg_has_role(current_user, '{role}', 'MEMBER') THEN
    EXECUTE format('GRANT {role} TO %I', current_user);
  END IF;
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO {role}', s);
  EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {role}', s);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO {role}', s);
  EXECUTE format($f$
    CREATE FUNCTION %I.{fn}(query text, max_rows bigint) RETURNS SETOF json
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, %I, pg_temp AS $body$
    BEGIN
      IF max_rows IS NULL THEN
        RETURN QUERY EXECUTE 'SELECT row_to_json(t) FROM (' || chr(10) || query || chr(10) || ') AS t';
      ELSE
        RETURN QUERY EXECUTE 'SELECT row_to_json(t) FROM (' || chr(10) || query || chr(10) || ') AS t LIMIT '
          || max_rows::text;
      END IF;
    END
    $body$ $f$, s, s);
  EXECUTE format('REVOKE ALL ON FUNCTION %I.{fn}(text, bigint) FROM PUBLIC', s);
  EXECUTE format('GRANT EXECUTE ON FUNCTION %I.{fn}(text, bigint) TO %I', s, current_user);
  -- a new owner needs CREATE on the schema at the moment of the change only
  EXECUTE format('GRANT CREATE ON SCHEMA %I TO {role}', s);
  EXECUTE format('ALTER FUNCTION %I.{fn}(text, bigint) OWNER TO {role}', s);
  EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM {role}', s);
EXCEPTION WHEN insufficient_privilege THEN
  RAISE WARNING 'saev-ops: could not set up the reader role {role} (%); `saev-ops sql` will refuse until an '
    'administrator runs the commands in the README', SQLERRM;
END
$do$
""".format(role=READER_ROLE, fn=READ_FUNCTION)


def upgrade() -> None:
    bind = op.get_bind()
    op.execute(
        "DELETE FROM metric_points WHERE id NOT IN "
        "(SELECT max(id) FROM metric_points GROUP BY run_id, key, step)"
    )
    op.drop_index("ix_metric_points_run_key_step", table_name="metric_points")
    op.create_index("uq_metric_points_run_key_step", "metric_points", ["run_id", "key", "step"], unique=True)
    op.add_column("runs", sa.Column("run_dir", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("local_pid", sa.Integer(), nullable=True))
    if bind.dialect.name == "postgresql":
        op.execute(_PG_READER)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {READ_FUNCTION}(text, bigint)")
        op.execute(
            f"DO $do$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN "
            f"EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM {READER_ROLE}', current_schema()); "
            f"EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES FROM {READER_ROLE}', "
            f"current_schema()); "
            f"EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {READER_ROLE}', current_schema()); END IF; END $do$"
        )
    # plain ALTER TABLE (SQLite >= 3.35): batch mode would rebuild `runs` underneath the views that read it
    op.drop_column("runs", "local_pid")
    op.drop_column("runs", "run_dir")
    op.drop_index("uq_metric_points_run_key_step", table_name="metric_points")
    op.create_index("ix_metric_points_run_key_step", "metric_points", ["run_id", "key", "step"])
