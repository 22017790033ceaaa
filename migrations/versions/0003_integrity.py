"""Integrity: one metric point per (run, key, step); each run's directory; the reader role behind `saev-ops sql`.

Revision ID: 0003_integrity
Revises: 0002_query_views
Create Date: 2026-12-02

- ``metric_points``: duplicates written by resumed jobs (they re-log the steps between their checkpoint and the crash)
  and by re-synced metric files are removed, keeping the newest row of each (run_id, key, step); the lookup index becomes
  a unique index, so logging the same point again updates it in place (upsert).
- ``runs.run_dir``: the directory a run's job writes (SAE, metrics buffer); `saev-ops train RUN` resumes there.
- ``runs.local_pid``: the process that runs a local-executor job, so `sweep cancel` can stop it.
- PostgreSQL only (until migration 0006, which replaces it with a role per registry): the NOLOGIN role
  ``saev_ops_reader`` with SELECT on this schema's tables and views, and the function
  ``saev_ops_read(query, max_rows)`` owned by it. The function is SECURITY DEFINER, so user SQL runs as the reader and
  PostgreSQL refuses any role change inside it (``SET ROLE`` alone is not enough: a superuser session can switch back
  with ``set_config('role', ...)`` in the same statement). When the migrating role may not create or grant the role,
  nothing of it is created and `saev-ops sql` refuses, pointing to `saev-ops db reader-setup` (README).
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


def upgrade() -> None:
    op.execute(
        "DELETE FROM metric_points WHERE id NOT IN "
        "(SELECT max(id) FROM metric_points GROUP BY run_id, key, step)"
    )
    op.drop_index("ix_metric_points_run_key_step", table_name="metric_points")
    op.create_index("uq_metric_points_run_key_step", "metric_points", ["run_id", "key", "step"], unique=True)
    op.add_column("runs", sa.Column("run_dir", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("local_pid", sa.Integer(), nullable=True))
    # PostgreSQL's reader role behind `saev-ops sql` was set up here, one role for every registry on the server;
    # migration 0006 sets up one per registry instead (registries migrated before keep what this made until then)


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
