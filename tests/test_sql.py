"""`saev-ops sql`: read-only enforced by the database connection; the documented views answer."""

from __future__ import annotations

import pytest

from saev_ops import errors
from saev_ops.registry import Registry
from saev_ops.registry.sql import run_read_only
from tests.helpers import make_dataset


def _seed(reg: Registry) -> int:
    make_dataset(reg)
    reg.get_or_create_sweep("s")
    (run, _), = reg.add_runs("inat21", [{"k": 8}], sweep="s")
    reg.log_metrics(run.id, [("nmse", 3, 0.25), ("l0", 3, 8.0), ("custom_metric", 3, 1.5)])
    reg.add_output(run_id=run.id, dataset="inat21", path="/out.npz", n_rows=4, n_cols=16, nnz=7)
    return run.id


def test_views(registry: Registry) -> None:
    run_id = _seed(registry)
    res = run_read_only(registry, "SELECT run_id, sweep, dataset, status, nmse, l0, dead_frac FROM run_table")
    assert res.columns == ("run_id", "sweep", "dataset", "status", "nmse", "l0", "dead_frac")
    assert res.rows == [(run_id, "s", "inat21", "queued", 0.25, 8.0, None)]
    res = run_read_only(registry, "SELECT key, step, value FROM metric_history ORDER BY key")
    assert res.rows == [("custom_metric", 3, 1.5), ("l0", 3, 8.0), ("nmse", 3, 0.25)]
    res = run_read_only(registry, "SELECT run_id, run_dataset, output_dataset, image_source, nnz FROM inference_lineage")
    assert res.rows == [(run_id, "inat21", "inat21", "/images/inat21", 7)]


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM runs",
        "UPDATE runs SET status = 'failed'",
        "INSERT INTO sweeps (name, grid_yaml, created_at) VALUES ('x', '', CURRENT_TIMESTAMP)",
        "DROP TABLE runs",
        "CREATE TABLE evil (x INTEGER)",
    ],
)
def test_writes_are_refused_by_the_connection(registry: Registry, statement: str) -> None:
    _seed(registry)
    with pytest.raises(errors.QueryError, match="read-only|read only|readonly"):
        run_read_only(registry, statement)
    assert run_read_only(registry, "SELECT count(*) FROM runs").rows == [(1,)]
    assert run_read_only(registry, "SELECT count(*) FROM sweeps").rows == [(1,)]
    # the pooled connection is usable for writes again afterwards
    registry.get_or_create_sweep("after")


def test_multiple_statements_cannot_escape(registry: Registry) -> None:
    _seed(registry)
    with pytest.raises(errors.QueryError):
        run_read_only(registry, "COMMIT; DELETE FROM runs")
    assert run_read_only(registry, "SELECT count(*) FROM runs").rows == [(1,)]


def test_bad_sql_is_a_query_error(registry: Registry) -> None:
    with pytest.raises(errors.QueryError, match="SQL error"):
        run_read_only(registry, "SELEC nonsense")
    with pytest.raises(errors.QueryError, match="empty"):
        run_read_only(registry, "  ")


def test_the_max_bytes_flag_defaults_to_the_library_limit() -> None:
    from saev_ops.cli.sql import group
    from saev_ops.registry.sql import DEFAULT_MAX_BYTES

    (opt,) = [p for p in group.params if p.name == "max_bytes"]
    assert opt.default == DEFAULT_MAX_BYTES
