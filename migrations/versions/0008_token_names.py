"""One token vocabulary: the selection CLS + patches is called ``cls+patches`` at train time too (was ``no-registers``).

Revision ID: 0008_token_names
Revises: 0007_unfired
Create Date: 2026-12-07

Recording already called it ``cls+patches``. The typed ``run_params.tokens`` of runs registered with the old name
takes the new one, so ``runs list --where tokens=cls+patches`` finds them all. Stored run configs keep what they were
given (a run's identity hashes the old name for both: ``saev_ops.tokens.identity_name``).
"""

from __future__ import annotations

from alembic import op

revision = "0008_token_names"
down_revision = "0007_unfired"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE run_params SET tokens = 'cls+patches' WHERE tokens = 'no-registers'")


def downgrade() -> None:
    op.execute("UPDATE run_params SET tokens = 'no-registers' WHERE tokens = 'cls+patches'")
