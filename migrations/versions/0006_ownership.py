"""Ownership: every registry has an identity of its own.

Revision ID: 0006_ownership
Revises: 0005_judgement
Create Date: 2026-12-07

- ``registry_identity``: one row, a random id made when the registry is created (or upgraded to this revision).
  Journals (``metrics.jsonl``) name it on every line, and ``sweep sync`` refuses a journal of another registry, so a
  copied runs folder, or one synced with ``SAEV_OPS_DB_URL`` forgotten, never writes into the wrong runs.
- PostgreSQL only: this registry's own reader role ``saev_ops_reader_<id>`` (granted to the migrating role alone) and
  the function ``saev_ops_read(query, max_rows, max_bytes)`` owned by it, pinned to this schema
  (:mod:`saev_ops.registry.reader_setup`). The server-wide ``saev_ops_reader`` that earlier versions shared between every
  registry loses its grants on this schema, so one registry's owner can no longer read another's. A migrating role
  that may not create roles gets a warning and no reader; `saev-ops sql` then refuses and names the fix. Downgrading
  removes the function and the role's grants (and the role where the current role may drop it); the earlier
  version's `db reader-setup` sets its shared reader up again.
"""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0006_ownership"
down_revision = "0005_judgement"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "registry_identity",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    op.bulk_insert(table, [{"id": uuid.uuid4().hex, "created_at": now}])
    if op.get_bind().dialect.name == "postgresql":
        from saev_ops.registry.reader_setup import setup_sql

        op.execute(setup_sql(strict=False))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        from saev_ops.registry.reader_setup import teardown_sql

        op.execute(teardown_sql())
    op.drop_table("registry_identity")
