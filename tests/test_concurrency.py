"""16 processes write metric points into one registry at once: every point lands, no lock error reaches the caller."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import sqlalchemy as sa

from saev_ops.registry import Registry, RunQuery
from tests.helpers import make_dataset

N_PROCS = 16
POINTS_PER_PROC = 2000
KEYS = ("loss", "mse", "nmse", "l0")  # 4 keys per step, 500 steps: one transaction per step, like a training loop


def _writer(url: str, run_id: int, barrier) -> int:  # noqa: ANN001
    reg = Registry(url)
    barrier.wait()
    written = 0
    for step in range(POINTS_PER_PROC // len(KEYS)):
        written += reg.log_metrics(run_id, [(k, step, step * 0.001 + i) for i, k in enumerate(KEYS)])
    reg.close()
    return written


@pytest.mark.slow
def test_sixteen_processes_write_concurrently(shared_db_url: str) -> None:
    reg = Registry(shared_db_url)
    make_dataset(reg)
    run_ids = [r.id for r, _ in reg.add_runs("inat21", [{"proc": i} for i in range(N_PROCS)])]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(N_PROCS)
        with ctx.Pool(N_PROCS) as pool:
            written = pool.starmap(_writer, [(shared_db_url, rid, barrier) for rid in run_ids])
    assert written == [POINTS_PER_PROC] * N_PROCS
    with reg.engine.connect() as conn:
        per_run = dict(conn.execute(sa.text("SELECT run_id, count(*) FROM metric_points GROUP BY run_id")).all())
    assert per_run == {rid: POINTS_PER_PROC for rid in run_ids}
    last_step = POINTS_PER_PROC // len(KEYS) - 1
    rows = reg.list_runs(RunQuery(where=(f"l0>={3 + last_step * 0.001 - 1e-9}",)))
    assert sorted(r.run.id for r in rows) == sorted(run_ids)
    reg.close()
