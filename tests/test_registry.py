"""The registry contract, run against in-memory SQLite, an SQLite file and PostgreSQL."""

from __future__ import annotations

import pathlib
import pickle

import pytest

from saev_ops import errors
from saev_ops.registry import Registry, RunQuery
from tests.helpers import make_dataset


def test_dataset_roundtrip_and_uniqueness(registry: Registry) -> None:
    d = make_dataset(registry, extra={"images": {"n_files": 3}})
    assert registry.get_dataset("inat21") == d
    assert registry.find_dataset_by_hash(d.content_hash) == d
    assert d.layers == (6, 11) and d.status == "writing" and d.extra == {"images": {"n_files": 3}}
    with pytest.raises(errors.DuplicateError, match="name 'inat21'"):
        make_dataset(registry)
    with pytest.raises(errors.DuplicateError, match="content hash"):
        make_dataset(registry, name="other", content_hash=d.content_hash)
    done = registry.update_dataset("inat21", status="complete", n_examples=5)
    assert done.status == "complete" and done.completed_at is not None and done.n_examples == 5
    assert [x.name for x in registry.list_datasets()] == ["inat21"]


def test_unknown_names_list_known_ones(registry: Registry) -> None:
    make_dataset(registry, name="a")
    with pytest.raises(errors.NotFoundError, match="no dataset named 'zzz'.*Known datasets: a"):
        registry.get_dataset("zzz")
    with pytest.raises(errors.NotFoundError, match="no sweep named 'nope'"):
        registry.get_sweep("nope")
    with pytest.raises(errors.NotFoundError, match="no run with id 99"):
        registry.get_run(99)


def test_runs_are_identified_by_config_hash(registry: Registry) -> None:
    make_dataset(registry)
    registry.get_or_create_sweep("s", "grid: {}")
    first = registry.add_runs("inat21", [{"k": 32, "lr": 1e-3}, {"k": 64, "lr": 1e-3}], sweep="s")
    assert [c for _, c in first] == [True, True]
    again = registry.add_runs("inat21", [{"lr": 1e-3, "k": 32}, {"k": 128, "lr": 1e-3}], sweep="s")
    assert again[0] == (first[0][0], False)  # same config, key order irrelevant
    assert again[1][1] is True
    assert len(registry.list_runs(RunQuery(sweep="s"))) == 3


def test_run_state_machine(registry: Registry) -> None:
    make_dataset(registry)
    (run, _), = registry.add_runs("inat21", [{"k": 1}])
    assert run.status == "queued" and run.attempts == 0
    r = registry.transition_run(run.id, "running", host="node1", executor="local")
    assert r.attempts == 1 and r.started_at is not None and r.heartbeat_at is not None and r.host == "node1"
    r = registry.transition_run(run.id, "failed", error="Traceback ...\nValueError: boom")
    assert r.ended_at is not None and "boom" in r.error
    with pytest.raises(errors.InvalidTransitionError, match="cannot go from failed to completed"):
        registry.transition_run(run.id, "completed")
    r = registry.transition_run(run.id, "queued")
    r = registry.transition_run(run.id, "running")
    assert r.attempts == 2 and r.error is None and r.ended_at is None
    r = registry.transition_run(run.id, "completed", checkpoint_path="/ckpt")
    assert r.status == "completed" and r.checkpoint_path == "/ckpt"
    with pytest.raises(errors.InvalidTransitionError):
        registry.transition_run(run.id, "queued")
    with pytest.raises(errors.ConfigError, match="run status must be one of"):
        registry.transition_run(run.id, "exploded")


def test_heartbeat_staleness_uses_database_clock(registry: Registry) -> None:
    make_dataset(registry)
    (run, _), = registry.add_runs("inat21", [{"k": 1}])
    registry.transition_run(run.id, "running")
    registry.heartbeat([run.id])
    assert registry.stale_running_runs(grace_s=3600) == []
    assert [r.id for r in registry.stale_running_runs(grace_s=-5)] == [run.id]


def test_metrics_history_and_summary_take_highest_step(registry: Registry) -> None:
    make_dataset(registry)
    (run, _), = registry.add_runs("inat21", [{"k": 1}])
    registry.log_metrics(run.id, [("nmse", 10, 0.5), ("l0", 10, 40.0)])
    registry.log_metrics(run.id, [("nmse", 20, 0.3), ("nmse", 15, 0.4)])
    registry.log_metrics(run.id, [("nmse", 5, 0.9)])  # a late, older point must not replace the summary
    assert registry.summary(run.id) == {"nmse": 0.3, "l0": 40.0}
    hist = registry.metric_history(run.id, "nmse")
    assert [(p.step, p.value) for p in hist] == [(5, 0.9), (10, 0.5), (15, 0.4), (20, 0.3)]
    assert registry.log_metrics(run.id, [("loss", 1, float("nan"))]) == 0
    with pytest.raises(errors.NotFoundError):
        registry.log_metrics(12345, [("nmse", 1, 0.1)])


def _fill(registry: Registry) -> list[int]:
    make_dataset(registry, name="a")
    make_dataset(registry, name="b")
    registry.get_or_create_sweep("s1")
    ids = []
    for i in range(12):
        ds = "a" if i % 3 else "b"
        (run, _), = registry.add_runs(ds, [{"i": i}], sweep="s1" if i < 8 else None)
        registry.log_metrics(run.id, [("nmse", 1, 0.05 * i), ("l0", 1, float(10 * i))])
        ids.append(run.id)
    registry.transition_run(ids[4], "running")
    return ids


def test_list_runs_filters_and_sorts(registry: Registry) -> None:
    ids = _fill(registry)
    rows = registry.list_runs(RunQuery(dataset="a", where=("nmse<0.4", "l0>=20"), sort="-nmse"))
    got = [r.run.id for r in rows]
    expected = [ids[i] for i in (7, 5, 4, 2)]  # dataset a = i%3 != 0, nmse<0.4 -> i<8, l0>=20 -> i>=2
    assert got == expected
    assert rows[0].summary == {"nmse": pytest.approx(0.35), "l0": 70.0} and rows[0].dataset == "a"
    assert [r.run.id for r in registry.list_runs(RunQuery(sort="nmse", limit=3))] == ids[:3]
    assert [r.run.id for r in registry.list_runs(RunQuery(statuses=("running",)))] == [ids[4]]
    assert [r.run.id for r in registry.list_runs(RunQuery(where=("status=running",)))] == [ids[4]]
    assert len(registry.list_runs(RunQuery(sweep="s1"))) == 8
    assert [r.run.id for r in registry.list_runs(RunQuery(where=(f"id>{ids[9]}",), sort="-id"))] == [ids[11], ids[10]]


@pytest.mark.parametrize(
    "where, message",
    [
        ("nmse<<0.2", "bad --where expression"),
        ("nmse<abc", "must be a number"),
        ("bogus<1", "no run has a metric named 'bogus'"),
        ("status=happy", "status must be one of"),
        ("attempts>x", "integer column"),
        ("nmse", "expected KEY OP VALUE"),
    ],
)
def test_list_runs_bad_where(registry: Registry, where: str, message: str) -> None:
    _fill(registry)
    with pytest.raises(errors.QueryError, match=message):
        registry.list_runs(RunQuery(where=(where,)))


def test_outputs_and_lineage(registry: Registry) -> None:
    make_dataset(registry, name="train")
    make_dataset(registry, name="eval")
    (run, _), = registry.add_runs("train", [{"k": 1}])
    out = registry.add_output(run_id=run.id, dataset="eval", path="/o.npz", n_rows=10, n_cols=64, nnz=33)
    assert out.shape == (10, 64)
    with pytest.raises(errors.DuplicateError, match="already has an inference output"):
        registry.add_output(run_id=run.id, dataset="eval", path="/o.npz", n_rows=10, n_cols=64, nnz=33)
    replaced = registry.add_output(run_id=run.id, dataset="eval", path="/o2.npz", n_rows=10, n_cols=64, nnz=40,
                                   replace=True)
    assert replaced.id == out.id and replaced.nnz == 40
    detail = registry.run_detail(run.id)
    assert detail.dataset.name == "train" and [o.path for o in detail.outputs] == ["/o2.npz"]
    with pytest.raises(errors.HasDependentsError, match="depend on it"):
        registry.delete_dataset("train")
    assert registry.delete_dataset("train", force=True) == 1
    assert registry.list_outputs() == []


def test_registry_pickles_as_url(tmp_path) -> None:  # noqa: ANN001
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    make_dataset(reg)
    clone = pickle.loads(pickle.dumps(reg))
    assert clone.get_dataset("inat21").name == "inat21"
    assert "engine" not in reg.__getstate__()


def test_every_sqlalchemy_error_is_a_registry_error(sqlite_registry, monkeypatch) -> None:  # noqa: ANN001
    import sqlalchemy as sa

    def exhausted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - what a full connection pool raises
        raise sa.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached")

    sqlite_registry.engine.dispose()
    monkeypatch.setattr(sqlite_registry.engine.pool, "connect", exhausted)
    with pytest.raises(errors.RegistryUnavailableError, match="QueuePool limit"):
        sqlite_registry.list_datasets()
    with pytest.raises(errors.RegistryUnavailableError, match="registry write failed.*QueuePool limit"):
        sqlite_registry.get_or_create_sweep("s")


def _sweep_of_configs(registry: Registry) -> list[int]:
    """Six runs whose hyperparameters differ, with a decayed lr metric that disagrees with the configured lr."""
    make_dataset(registry, name="hp")
    configs = [
        {"sae": {"arch": "topk", "d_model": 768, "d_sae": 4096, "k": 32}, "lr": 3e-4, "seed": 0, "layer": 11,
         "tokens": "patches", "train": {"batch_size": 4096, "n_tokens": 10_000_000}},
        {"sae": {"arch": "topk", "d_model": 768, "d_sae": 16384, "k": 64}, "lr": 1e-3, "seed": 1, "layer": 11,
         "tokens": "patches", "train": {"batch_size": 4096, "n_tokens": 10_000_000}},
        {"sae": {"arch": "relu", "d_model": 768, "d_sae": 8192, "k": 99, "l1_coeff": 4e-4}, "lr": 1e-4, "seed": 0,
         "layer": 6, "tokens": "cls", "train": {"batch_size": 4096, "n_tokens": 10_000_000, "grad_clip": 1.0}},
        {"sae": {"arch": "jumprelu", "d_model": 768, "d_sae": 512, "l0_coeff": 0.5}, "lr": 2e-3, "seed": 2,
         "layer": 11, "tokens": "patches", "train": {"batch_size": 4096, "n_tokens": 10_000_000}},
        {"sae": {"arch": "batchtopk", "d_model": 768, "d_sae": 65536, "k": 16}, "lr": 5e-4, "seed": 3, "layer": 11,
         "tokens": "all", "train": {"batch_size": 4096, "n_tokens": 10_000_000}},
        {"sae": {"arch": "topk", "d_model": 768, "d_sae": 4096, "k": 8}, "lr": 7e-4, "seed": 4, "layer": 6,
         "tokens": "patches", "train": {"batch_size": 4096, "n_tokens": 10_000_000}},
    ]
    ids = [r.id for r, _ in registry.add_runs("hp", configs)]
    for i, rid in enumerate(ids):  # the logged lr is the decayed one: its order is the reverse of the config's
        registry.log_metrics(rid, [("lr", 100, 1.0 - configs[i]["lr"] * 100), ("nmse", 100, 0.1 * (i + 1)),
                                   ("val/nmse", 100, 0.12 * (i + 1))])
    return ids


def test_runs_by_their_hyperparameters(registry: Registry) -> None:
    """`--where arch=topk`, `--where "d_sae>=4096"` were refused and `--sort lr` sorted by the decayed learning rate;
    on SQLite and PostgreSQL alike the configuration fields are typed columns now."""
    ids = _sweep_of_configs(registry)

    def q(*where: str, sort: str | None = None) -> list[int]:
        return [r.run.id for r in registry.list_runs(RunQuery(dataset="hp", where=where, sort=sort))]

    assert q("arch=topk") == [ids[0], ids[1], ids[5]]
    assert q("d_sae>=4096", sort="-d_sae") == [ids[4], ids[1], ids[2], ids[0], ids[5]]  # ties by id
    assert q("arch=topk", "k<64") == [ids[0], ids[5]]
    assert q("k=99") == []  # a ReLU does not read k: NULL, not 99
    assert q("layer=6", sort="lr") == [ids[2], ids[5]]
    assert q(sort="lr") == [ids[i] for i in (2, 0, 4, 5, 1, 3)]  # the configured lr
    assert q(sort="-l1_coeff")[:1] == [ids[2]]
    assert q("grad_clip>0") == [ids[2]] and q("grad_clip=0") == [ids[i] for i in (0, 1, 3, 4, 5)]
    assert q("tokens=cls") == [ids[2]]
    assert q("l0_coeff>=0.5", "val/nmse<1") == [ids[3]]
    assert q("arch=topk", sort="-val/nmse") == [ids[5], ids[1], ids[0]]
    row = registry.list_runs(RunQuery(dataset="hp", where=("arch=jumprelu",)))[0]
    assert row.params["l0_coeff"] == 0.5 and row.params["k"] is None and row.value("lr") == 2e-3
    with pytest.raises(errors.QueryError, match="d_sae is a hyperparameter of type int, got 'big'"):
        registry.list_runs(RunQuery(where=("d_sae>=big",)))


def test_lr_is_the_configured_rate_and_lr_final_the_last_steps(registry: Registry) -> None:
    """`runs list` showed the last step's scheduled lr (4.2e-07) in its `lr` column while `--sort lr` and
    `--columns lr` used the configured one: one name, one meaning."""
    ids = _sweep_of_configs(registry)
    registry.log_metrics(ids[0], [("lr", 500, 4.2e-7)])
    row = registry.list_runs(RunQuery(dataset="hp", where=("lr_final<1e-6",)))[0]
    assert row.run.id == ids[0] and "lr" not in row.summary
    assert row.summary["lr_final"] == pytest.approx(4.2e-7) and row.value("lr") == row.params["lr"] != 4.2e-7
    assert [r.run.id for r in registry.list_runs(RunQuery(dataset="hp", sort="lr_final"))][0] == ids[0]


def test_run_table_carries_hyperparameters_as_typed_columns(registry: Registry) -> None:
    """Plain SQL over the view: no JSON functions, the same query and answer on both backends."""
    import sqlalchemy as sa

    ids = _sweep_of_configs(registry)
    with registry.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT run_id, arch, d_sae, k, lr, val_nmse FROM run_table WHERE d_sae >= 8192 AND arch <> 'relu' "
            "ORDER BY lr")).all()
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(ids[4], "batchtopk", 65536, 16), (ids[1], "topk", 16384, 64)]
    assert rows[0][4] == pytest.approx(5e-4) and rows[0][5] == pytest.approx(0.6)


MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
fs1:/export/home /home nfs4 rw,relatime,vers=4.2 0 0
10.0.0.5@tcp:/scratch /scratch lustre rw,flock 0 0
/dev/nvme0n1 /scratch/local xfs rw 0 0
"""


@pytest.mark.parametrize("path, kind, warns", [
    ("/home/ann/.saev-ops/registry.sqlite", "nfs4", True),
    ("/scratch/proj/registry.sqlite", "lustre", True),
    ("/scratch/local/registry.sqlite", "xfs", False),
    ("/tmp/registry.sqlite", "ext4", False),
])
def test_sqlite_on_a_network_file_system_warns(path: str, kind: str, warns: bool, caplog) -> None:  # noqa: ANN001
    from saev_ops.registry.filesystems import filesystem_of, warn_if_network

    assert filesystem_of(pathlib.Path(path).parent, MOUNTS)[1] == kind
    with caplog.at_level("WARNING"):
        assert warn_if_network(path, MOUNTS) is warns
    assert ("use PostgreSQL" in caplog.text) is warns


def test_opening_a_registry_checks_its_file_system(tmp_path: pathlib.Path, monkeypatch, caplog) -> None:  # noqa: ANN001
    from saev_ops.registry import filesystems

    fake = tmp_path / "mounts"
    fake.write_text(f"server:/export {tmp_path} nfs rw 0 0\n")
    monkeypatch.setattr(filesystems, "MOUNTS", fake)
    with caplog.at_level("WARNING"):
        Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    assert f"the SQLite registry {tmp_path / 'r.sqlite'} is on a network file system (nfs at {tmp_path})" in caplog.text


def test_a_job_registry_holds_no_connection_between_writes(pg_schema_url: str) -> None:
    import sqlalchemy as sa

    reg = Registry(pg_schema_url)
    make_dataset(reg, name="d")
    ((run, _),) = reg.add_runs("d", [{"a": 1}])
    job = pickle.loads(pickle.dumps(Registry(pg_schema_url, hold_connections=False)))  # as a job receives it
    assert isinstance(job.engine.pool, sa.pool.NullPool)
    with reg.engine.connect() as conn:
        count = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        before = conn.execute(sa.text(count)).scalar_one()
        job.log_metrics(run.id, [("nmse", 1, 0.5)])
        assert conn.execute(sa.text(count)).scalar_one() == before  # its connection closed with the transaction
    assert reg.metric_history(run.id, "nmse")[0].value == 0.5
    assert not isinstance(reg.engine.pool, sa.pool.NullPool)  # interactive use keeps its pool


def test_too_many_connections_is_retried() -> None:
    import sqlalchemy as sa

    from saev_ops.registry.store import _is_transient

    class Refused(Exception):
        sqlstate = "53300"  # too_many_connections

    assert _is_transient(sa.exc.OperationalError("connect", {}, Refused("sorry, too many clients already")))


def test_each_record_has_a_field_for_each_column_of_its_table() -> None:
    """Records are built from their rows by field name (records.from_columns): a column without a field, or a field
    without a column, is caught here rather than by a reader missing a value."""
    import dataclasses

    import sqlalchemy as sa

    from saev_ops.registry import models, records

    pairs = [(records.DatasetRecord, models.DatasetModel), (records.SweepRecord, models.SweepModel),
             (records.RunRecord, models.RunModel), (records.OutputRecord, models.InferenceOutputModel),
             (records.EvaluationRecord, models.EvaluationModel)]
    for record, model in pairs:
        columns = {c.key for c in sa.inspect(model).column_attrs}
        fields = {f.name for f in dataclasses.fields(record)}
        if record is records.OutputRecord:  # its metric columns are one field
            columns = columns - set(records.OUTPUT_METRICS) | {"metrics"}
        assert columns == fields, record.__name__
