"""Ownership: every registry has an identity of its own.

Revision ID: 0006_ownership
Revises: 0005_judgement
Create Date: 2026-12-07

- ``registry_identity``: one row, a random id made when the registry is created (or upgraded to this revision).
  Journals (``metrics.jsonl``) name it on every line, and ``sweep sync`` refuses a journal of another registry, so a
  copied runs folder, or one synced with ``SAEV_OPS_DB_URL`` forgotten, never writes into the wrong runs.
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


def downgrade() -> None:
    op.drop_table("registry_identity")
