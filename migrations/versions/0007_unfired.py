"""Three things were called dead_frac: the held-out and the inference figures are named apart.

Revision ID: 0007_unfired
Revises: 0006_ownership
Create Date: 2026-12-07

- ``dead_frac`` stays the training figure: latents that have not fired in the last ``dead_tokens`` training tokens
  (the window AuxK revives).
- ``val/unfired_frac`` (was ``val/dead_frac``): latents that never fire on the held-out sample (``val_tokens`` rows),
  logged only when the sample has at least four rows per latent; stored points are renamed.
- ``inference_outputs.unfired_frac`` (was ``dead_frac``): latents that never fire on any row of the output's dataset.
- The views follow: ``run_table.val_unfired_frac``, ``output_table.unfired_frac``.
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0007_unfired"
down_revision = "0006_ownership"
branch_labels = None
depends_on = None

_VIEWS = importlib.import_module("saev_ops._migrations.versions.0005_judgement")  # the views' builders, frozen there


def _renamed(names: tuple[str, ...], old: str, new: str) -> tuple[str, ...]:
    return tuple(new if n == old else n for n in names)


def _rename(old: str, new: str) -> None:
    op.execute("DROP VIEW output_table")
    op.execute("DROP VIEW run_table")
    op.execute(f"ALTER TABLE inference_outputs RENAME COLUMN {old} TO {new}")  # SQLite >= 3.25, PostgreSQL
    for table in ("metric_points", "metric_summaries"):
        op.execute(f"UPDATE {table} SET key = 'val/{new}' WHERE key = 'val/{old}'")
    op.execute(_VIEWS._run_table(with_params=True, val=_renamed(_VIEWS.RUN_TABLE_VAL, "dead_frac", new)))
    op.execute(_VIEWS._output_table(_renamed(_VIEWS.OUTPUT_METRICS, "dead_frac", new)))


def upgrade() -> None:
    _rename("dead_frac", "unfired_frac")


def downgrade() -> None:
    _rename("unfired_frac", "dead_frac")
