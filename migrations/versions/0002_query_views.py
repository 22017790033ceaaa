"""Read-only query views for `saev-ops sql`: run_table, metric_history, inference_lineage.

Revision ID: 0002_query_views
Revises: 0001_initial
Create Date: 2026-11-26

The metric columns of run_table are frozen here on purpose (a view is schema): adding one is a new migration.
"""

from __future__ import annotations

from alembic import op

revision = "0002_query_views"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

RUN_TABLE_METRICS = ("loss", "mse", "nmse", "explained_variance", "l0", "dead_frac", "dense_frac")


def _metric_column(key: str) -> str:
    return f"(SELECT m.value FROM metric_summaries m WHERE m.run_id = r.id AND m.key = '{key}') AS {key}"


def upgrade() -> None:
    metric_columns = ",\n  ".join(_metric_column(k) for k in RUN_TABLE_METRICS)
    op.execute(
        f"""
CREATE VIEW run_table AS
SELECT
  r.id AS run_id, s.name AS sweep, d.name AS dataset, r.status, r.executor, r.slurm_job_id, r.slurm_array_index,
  r.attempts, r.host, r.config_hash, r.created_at, r.started_at, r.ended_at, r.heartbeat_at, r.checkpoint_path,
  r.error,
  {metric_columns}
FROM runs r
JOIN datasets d ON d.id = r.dataset_id
LEFT JOIN sweeps s ON s.id = r.sweep_id
"""
    )
    op.execute(
        """
CREATE VIEW metric_history AS
SELECT p.run_id, s.name AS sweep, d.name AS dataset, p.key, p.step, p.value, p.time
FROM metric_points p
JOIN runs r ON r.id = p.run_id
JOIN datasets d ON d.id = r.dataset_id
LEFT JOIN sweeps s ON s.id = r.sweep_id
"""
    )
    op.execute(
        """
CREATE VIEW inference_lineage AS
SELECT
  o.id AS output_id, o.path AS output_path, o.n_rows, o.n_cols, o.nnz, o.created_at AS output_created_at,
  o.run_id, s.name AS sweep, rd.name AS run_dataset, rd.source_path AS image_source,
  od.name AS output_dataset
FROM inference_outputs o
JOIN runs r ON r.id = o.run_id
JOIN datasets rd ON rd.id = r.dataset_id
JOIN datasets od ON od.id = o.dataset_id
LEFT JOIN sweeps s ON s.id = r.sweep_id
"""
    )


def downgrade() -> None:
    op.execute("DROP VIEW inference_lineage")
    op.execute("DROP VIEW metric_history")
    op.execute("DROP VIEW run_table")
