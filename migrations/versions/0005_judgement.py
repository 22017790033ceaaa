"""Judgement: runs' hyperparameters as typed columns, outputs' reconstruction metrics, downstream evaluations.

Revision ID: 0005_judgement
Revises: 0004_run_identity
Create Date: 2026-12-02

- ``run_params``: one row per run, its hyperparameters typed (the list frozen here as schema; the code's is
  :data:`saev_ops.registry.params.PARAMS`, kept equal by a test). Existing runs are filled from their config JSON with
  :func:`saev_ops.registry.params.params_of`.
- ``inference_outputs``: nmse, explained_variance, l0, dead_frac, dense_frac, cosine, shrinkage (NULL for older
  outputs).
- ``evaluations``: ``saev-ops eval`` results (fidelity of the SAE spliced into its model, KL, probe accuracies).
- Views: ``run_table`` gains the typed parameters, the held-out metrics (``val_*``) and ``fidelity``; ``output_table``
  is ``inference_lineage`` with the outputs' metrics.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0005_judgement"
down_revision = "0004_run_identity"
branch_labels = None
depends_on = None

PARAMS = {
    "arch": "str", "d_model": "int", "d_sae": "int", "k": "int", "l1_coeff": "float", "l0_coeff": "float",
    "aux_k": "int", "aux_coeff": "float", "dead_tokens": "int", "lr": "float", "seed": "int", "layer": "int",
    "tokens": "str", "batch_size": "int", "n_tokens": "int", "grad_clip": "float", "data_init_blend": "float",
}
_SQL = {"str": sa.String(64), "int": sa.BigInteger(), "float": sa.Float()}
OUTPUT_METRICS = ("nmse", "explained_variance", "l0", "dead_frac", "dense_frac", "cosine", "shrinkage")
RUN_TABLE_METRICS = ("loss", "mse", "nmse", "explained_variance", "l0", "dead_frac", "dense_frac")
RUN_TABLE_VAL = ("nmse", "explained_variance", "l0", "dead_frac", "dense_frac", "cosine", "shrinkage")
RUN_TABLE_EVAL = ("fidelity",)


def _metric(key: str, alias: str) -> str:
    return f"(SELECT m.value FROM metric_summaries m WHERE m.run_id = r.id AND m.key = '{key}') AS {alias}"


def _run_table(with_params: bool, val: tuple[str, ...] = RUN_TABLE_VAL) -> str:
    """The run_table view (``val``: its held-out metrics; migration 0007 renames one)."""
    metrics = [_metric(k, k) for k in RUN_TABLE_METRICS]
    params = ""
    joins = ""
    if with_params:
        metrics += [_metric(f"val/{k}", f"val_{k}") for k in val] + [_metric(k, k) for k in RUN_TABLE_EVAL]
        params = "".join(f"p.{name} AS {name}, " for name in PARAMS)
        joins = "LEFT JOIN run_params p ON p.run_id = r.id"
    cols = ",\n  ".join(metrics)
    return f"""
CREATE VIEW run_table AS
SELECT
  r.id AS run_id, s.name AS sweep, d.name AS dataset, r.status, r.executor, r.slurm_job_id, r.slurm_array_index,
  r.attempts, r.host, r.config_hash, r.created_at, r.started_at, r.ended_at, r.heartbeat_at, r.checkpoint_path,
  r.error, {params}
  {cols}
FROM runs r
JOIN datasets d ON d.id = r.dataset_id
LEFT JOIN sweeps s ON s.id = r.sweep_id
{joins}
"""


def upgrade() -> None:
    from saev_ops.registry.params import params_of

    op.create_table(
        "run_params",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        *[sa.Column(name, _SQL[kind], nullable=True) for name, kind in PARAMS.items()],
    )
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("config", sa.JSON))
    params = sa.table("run_params", sa.column("run_id", sa.Integer), *[sa.column(n) for n in PARAMS])
    bind = op.get_bind()
    batch = []
    for run_id, config in bind.execute(sa.select(runs.c.id, runs.c.config).order_by(runs.c.id)):
        config = json.loads(config) if isinstance(config, str) else (config or {})
        batch.append({"run_id": run_id, **params_of(config)})
        if len(batch) >= 1000:
            bind.execute(params.insert(), batch)
            batch = []
    if batch:
        bind.execute(params.insert(), batch)
    for name in OUTPUT_METRICS:  # plain ADD COLUMN on both backends (a batch rebuild would trip over the views)
        op.add_column("inference_outputs", sa.Column(name, sa.Float, nullable=True))
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="RESTRICT"), nullable=False,
                  index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("n_images", sa.Integer, nullable=False),
        *[sa.Column(n, sa.Float, nullable=True) for n in ("fidelity", "kl", "probe_clean", "probe_spliced")],
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("run_id", "dataset_id", "kind", name="uq_evaluations_run_dataset_kind"),
    )
    op.execute("DROP VIEW run_table")
    op.execute(_run_table(with_params=True))
    op.execute(_output_table(OUTPUT_METRICS))


def _output_table(metrics: tuple[str, ...]) -> str:
    """The output_table view over these metric columns of inference_outputs (migration 0007 renames one)."""
    metric_cols = ", ".join(f"o.{m}" for m in metrics)
    return f"""
CREATE VIEW output_table AS
SELECT
  o.id AS output_id, o.run_id, s.name AS sweep, rd.name AS run_dataset, od.name AS output_dataset, o.n_rows, o.n_cols,
  o.nnz, {metric_cols}, o.path AS output_path, o.created_at AS output_created_at
FROM inference_outputs o
JOIN runs r ON r.id = o.run_id
JOIN datasets rd ON rd.id = r.dataset_id
JOIN datasets od ON od.id = o.dataset_id
LEFT JOIN sweeps s ON s.id = r.sweep_id
"""


def downgrade() -> None:
    op.execute("DROP VIEW output_table")
    op.execute("DROP VIEW run_table")
    op.execute(_run_table(with_params=False))
    op.drop_table("evaluations")
    for name in OUTPUT_METRICS:  # DROP COLUMN: PostgreSQL, and SQLite since 3.35
        op.execute(f"ALTER TABLE inference_outputs DROP COLUMN {name}")
    op.drop_table("run_params")
