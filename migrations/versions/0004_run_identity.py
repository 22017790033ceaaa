"""Run identity: a run's config_hash covers only what determines its result.

Revision ID: 0004_run_identity
Revises: 0003_integrity
Create Date: 2026-12-02

Before, the hash covered the whole config: `device`, `log_every`, `ckpt_every`, `heartbeat_s` and SAE fields an
architecture does not read (a ReLU's `k`) made new runs of the same sweep resubmitted on another device. Every stored
hash is recomputed from :func:`saev_ops.runconfig.run_identity` (imported: the identity rule is the code's, and a
later change to it comes with a migration of its own). When two existing runs now have one identity, the earliest
takes the new hash and the others keep their old one (they stay, and a new submission finds the earliest).
Downgrade recomputes the full-config hashes, which are the ones written before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004_run_identity"
down_revision = "0003_integrity"
branch_labels = None
depends_on = None

_runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("dataset_id", sa.Integer),
                 sa.column("config", sa.JSON), sa.column("config_hash", sa.String))
_datasets = sa.table("datasets", sa.column("id", sa.Integer), sa.column("content_hash", sa.String))


def _hash(dataset_hash: str, config: dict[str, Any]) -> str:
    payload = json.dumps({"dataset": dataset_hash, "config": config}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _rehash(identity: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_runs.c.id, _runs.c.config, _runs.c.config_hash, _datasets.c.content_hash)
        .join(_datasets, _datasets.c.id == _runs.c.dataset_id)
        .order_by(_runs.c.id)
    ).all()
    taken = {row.config_hash for row in rows}
    for run_id, config, old, dataset_hash in rows:
        config = json.loads(config) if isinstance(config, str) else config
        new = _hash(dataset_hash, identity(config))
        if new == old or new in taken:
            continue  # unchanged, or an earlier run has this identity: this one keeps its hash
        bind.execute(sa.update(_runs).where(_runs.c.id == run_id).values(config_hash=new))
        taken.discard(old)
        taken.add(new)


def upgrade() -> None:
    from saev_ops.runconfig import run_identity

    _rehash(run_identity)


def downgrade() -> None:
    _rehash(lambda config: config)
