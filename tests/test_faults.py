"""Fault injection: corrupt files, non-finite data, registry outages, torn and growing journals, cancels, bad input.

Each case ended, before its fix, in an answer that looked right and was not (a `completed` run with NaN weights, `ok`
from verify, duplicated metric points, a run left `queued` or `running`, a traceback instead of a message).
docs/reliability.md lists them with what happens now.
"""

from __future__ import annotations

import json
import pathlib
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from click.testing import CliRunner

from saev_ops import errors
from saev_ops.cli import cli
from saev_ops.registry import Registry, RunQuery
from saev_ops.registry.engine import create_registry_engine
from saev_ops.runconfig import run_config
from saev_ops.shards import ShardReader
from saev_ops.shards.format import Metadata, read_json
from saev_ops.shards.verify import verify
from saev_ops.train import RunSpec, TrainJobSpec, TrainSettings, run_train_job
from saev_ops.train.journal import Journal, sync_file
from saev_ops.train.trainer import Trainer
from tests.helpers import make_dataset
from tests.shard_helpers import write_dataset

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"


# -- helpers -------------------------------------------------------------------------------------------------------------
def _dataset(tmp_path: pathlib.Path, reg: Registry, name: str = "tiny") -> pathlib.Path:
    path = write_dataset(tmp_path / "data", n_examples=40, layers=(3, 7), n_patches=16, d_model=32, patch_labels=True)
    sidecar = read_json(path / "saev_ops.json")
    make_dataset(reg, name=name, path=str(path), d_model=32, layers=[3, 7], tokens_per_example=17, n_examples=40,
                 status="complete", content_hash=sidecar["content_hash"])
    return path


def _spec(reg: Registry, url: str, path: pathlib.Path, root: pathlib.Path, *, n_runs: int = 2,
          n_tokens: int = 1280) -> TrainJobSpec:
    from saev_ops.sae import SAEConfig

    settings = TrainSettings(batch_size=64, n_tokens=n_tokens, log_every=5, ckpt_every=5, lr_warmup_steps=2,
                             sparsity_warmup_steps=2, buffer_mb=0.2, heartbeat_s=0.0)
    saes = [SAEConfig.of(arch="topk", d_model=32, d_sae=64, k=4), SAEConfig.of(arch="relu", d_model=32, d_sae=48)][:n_runs]
    configs = [run_config(s.to_dict(), 1e-3, i, 7, "patches", settings) for i, s in enumerate(saes)]
    added = reg.add_runs("tiny", configs)
    return TrainJobSpec(db_url=url, dataset="tiny", dataset_path=str(path), dataset_hash="h", layer=7,
                        tokens="patches", settings=settings, runs_root=str(root), registry_id=reg.registry_id,
                        runs=tuple(RunSpec(run_id=r.id, sae=s, lr=1e-3, seed=i, identity=r.config_hash)
                                   for i, ((r, _), s) in enumerate(zip(added, saes))))


def _poke(path: pathlib.Path, example: int, value: float) -> None:
    """Overwrite one activation of ``example`` (layer 7, a patch token) in its shard file."""
    md = Metadata.from_json_dict(read_json(path / "metadata.json"))
    shard, row = divmod(example, md.examples_per_shard)
    offset = ((row * md.n_layers + 1) * md.tokens_per_example + 3) * md.d_model + 5
    with open(path / f"acts{shard:06d}.bin", "r+b") as fh:
        fh.seek(offset * 4)
        fh.write(np.float32(value).tobytes())


@pytest.fixture
def env(tmp_path: pathlib.Path) -> tuple[Registry, str, pathlib.Path]:
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    path = _dataset(tmp_path, reg)
    yield reg, url, path
    reg.close()


# -- corruptions that verify (quick) must name -----------------------------------------------------------------------------
def _problems(path: pathlib.Path) -> str:
    return "\n".join(str(p) for p in verify(path))


def test_verify_catches_wrong_per_shard_counts(env) -> None:  # noqa: ANN001
    _, _, path = env
    listing = json.loads((path / "shards.json").read_text())
    listing[0]["n_examples"] -= 1
    listing[1]["n_examples"] += 1  # same total: the old check said ok
    (path / "shards.json").write_text(json.dumps(listing))
    assert "shards.json entry 0" in _problems(path) and "shards.json entry 1" in _problems(path)


def test_verify_and_readers_name_a_truncated_stats_file(env) -> None:  # noqa: ANN001
    _, _, path = env
    data = (path / "stats.npz").read_bytes()
    (path / "stats.npz").write_bytes(data[: len(data) // 2])
    assert "stats.npz" in _problems(path)
    with pytest.raises(errors.DataError, match=r"stats.npz: unreadable statistics"):
        ShardReader(path).stats()  # training used to die here with a BadZipFile traceback


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_verify_catches_labels(env, damage: str) -> None:  # noqa: ANN001
    _, _, path = env
    labels = path / "labels.bin"
    assert labels.exists()
    if damage == "missing":
        labels.unlink()
    else:
        labels.write_bytes(labels.read_bytes()[:-7])
    assert "labels.bin" in _problems(path)


def test_damaged_index_is_one_line_naming_it(env) -> None:  # noqa: ANN001
    reg, _, path = env
    data = path / "index.lmdb" / "data.mdb"
    raw = bytearray(data.read_bytes())
    raw[: 4096 * 2] = b"\xff" * (4096 * 2)  # both meta pages
    data.write_bytes(bytes(raw))
    assert "index.lmdb" in _problems(path)
    with pytest.raises(errors.DataError, match=r"index.lmdb: damaged LMDB index"):
        ShardReader(path).index.get(0)
    res = CliRunner().invoke(cli, ["--db", str(reg.url.database), "datasets", "verify", "tiny"])
    assert res.exit_code == 1 and "index.lmdb" in res.output and "Traceback" not in res.output


def test_quick_verify_uses_the_recorded_nonfinite_count(tmp_path: pathlib.Path) -> None:
    from saev_ops.shards import ShardWriter
    from tests.shard_helpers import make_metadata, synthetic_acts

    md, layout = make_metadata(n_examples=10)
    w = ShardWriter(tmp_path / "nan", md, layout)
    acts = synthetic_acts(0, 10, md.layers, md.tokens_per_example, md.d_model)
    acts[4, 0, 2, 9] = np.nan
    w.write(acts, None)
    w.finalize()
    assert "1 NaN/Inf values" in _problems(tmp_path / "nan")


# -- non-finite data never ends `completed` ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("value", [np.nan, np.inf, 1e30])
def test_nonfinite_activation_fails_training_naming_step_and_examples(env, tmp_path: pathlib.Path,
                                                                      value: float) -> None:  # noqa: ANN001
    reg, url, path = env
    _poke(path, 13, value)
    spec = _spec(reg, url, path, tmp_path / "runs")
    with pytest.raises(errors.DataError, match=r"in the batch of step \d+: 1 rows of examples 13 of dataset 'tiny'"):
        run_train_job(spec)
    for r in spec.runs:
        run = reg.get_run(r.run_id)
        assert run.status == "failed" and "examples 13" in run.error


def test_a_diverged_sae_fails_alone(env, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    reg, url, path = env
    spec = _spec(reg, url, path, tmp_path / "runs")
    trainer = Trainer(spec, reg)
    with torch.no_grad():
        trainer.saes[0].W_enc.fill_(float("inf"))  # as a learning rate far too high would leave it
    failed = trainer.train()
    assert list(failed) == [spec.runs[0].run_id] and "non-finite" in failed[spec.runs[0].run_id]


def test_inference_refuses_nonfinite_inputs_and_writes_nothing(env, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    from saev_ops.infer import InferSpec, run_inference

    reg, url, path = env
    spec = _spec(reg, url, path, tmp_path / "runs", n_runs=1)
    run_train_job(spec)
    _poke(path, 21, np.nan)
    out = tmp_path / "out"
    with pytest.raises(errors.DataError, match=r"non-finite activations in examples 21"):
        run_inference(InferSpec(db_url=url, run_ids=(spec.runs[0].run_id,), dataset="tiny", out_root=str(out),
                                batch_size=256))
    assert reg.list_outputs() == []
    assert not any(p for p in out.rglob("*") if p.is_dir() and p.name.endswith(".tmp"))


# -- metric points: once each -----------------------------------------------------------------------------------------------
def test_a_point_logged_twice_is_stored_once(registry: Registry) -> None:
    make_dataset(registry)
    (run, _), = registry.add_runs("inat21", [{"k": 1}])
    registry.log_metrics(run.id, [("nmse", 10, 0.5), ("nmse", 20, 0.4)])
    registry.log_metrics(run.id, [("nmse", 20, 0.3), ("nmse", 20, 0.35)])  # a resumed job re-logs step 20
    assert [(p.step, p.value) for p in registry.metric_history(run.id, "nmse")] == [(10, 0.5), (20, 0.35)]
    assert registry.summary(run.id) == {"nmse": 0.35}


def test_migration_removes_existing_duplicates(shared_db_url: str) -> None:
    from saev_ops.registry import migrate

    engine = create_registry_engine(shared_db_url)
    migrate.run_upgrade(engine, "0002_query_views")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO datasets (name, content_hash, path, status, model_family, model_ckpt, "
                             "layers, d_model, tokens_per_example, n_examples, dtype, extra, created_at) VALUES "
                             "('d', 'h', '/d', 'complete', 'clip', 'c', '[1]', 8, 2, 1, 'float32', '{}', "
                             "CURRENT_TIMESTAMP)"))
        conn.execute(sa.text("INSERT INTO runs (dataset_id, config, config_hash, status, attempts, created_at) "
                             "SELECT id, '{}', 'x', 'running', 1, CURRENT_TIMESTAMP FROM datasets"))
        for value in (0.5, 0.4, 0.3):
            conn.execute(sa.text("INSERT INTO metric_points (run_id, key, step, value, time) SELECT id, 'nmse', 7, "
                                 ":v, CURRENT_TIMESTAMP FROM runs"), {"v": value})
    migrate.run_upgrade(engine)
    reg = Registry(shared_db_url)
    (row,) = reg.list_runs()
    assert [(p.step, p.value) for p in reg.metric_history(row.run.id)] == [(7, 0.3)]  # the newest kept
    reg.close()
    engine.dispose()


# -- journals: growing, torn, replayed ---------------------------------------------------------------------------------------
def test_sync_while_a_job_appends_loses_nothing_and_stores_once(env, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    reg, _, _ = env
    (run, _), = reg.add_runs("tiny", [{"k": 2}])
    run_dir = tmp_path / "runs" / f"run-{run.id:06d}"
    run_dir.mkdir(parents=True)
    journal = Journal(None, {run.id: run_dir}, registry_id=reg.registry_id, identities={run.id: run.config_hash})
    n = 400
    done = threading.Event()

    def writer() -> None:
        for step in range(1, n + 1):
            journal.log(run.id, step, {"nmse": 1.0 / step, "l0": float(step)})
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    while not done.is_set():
        sync_file(reg, run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else time.sleep(0.001)
    t.join()
    sync_file(reg, run_dir / "metrics.jsonl")
    sync_file(reg, run_dir / "metrics.jsonl")  # and once more: nothing new, nothing doubled
    steps = [p.step for p in reg.metric_history(run.id, "nmse")]
    assert steps == list(range(1, n + 1))
    assert reg.summary(run.id)["l0"] == float(n)


def test_a_torn_last_line_waits_for_its_newline(env, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    reg, _, _ = env
    (run, _), = reg.add_runs("tiny", [{"k": 3}])
    f = tmp_path / "metrics.jsonl"
    good = [json.dumps({"registry": reg.registry_id, "run_id": run.id, "identity": run.config_hash, "step": s,
                        "values": {"nmse": 0.1 * s}}) for s in (1, 2, 3)]
    f.write_text(good[0] + "\n" + good[1] + "\n" + good[2][:17])  # killed mid-write
    assert sync_file(reg, f).points == 2
    with open(f, "a") as fh:
        fh.write(good[2][17:] + "\n")
    res = sync_file(reg, f)
    assert res.points == 1 and res.problems == ()
    assert [p.step for p in reg.metric_history(run.id, "nmse")] == [1, 2, 3]
    with open(f, "a") as fh:
        fh.write('{"run_id": garbage}\n')
    res = sync_file(reg, f)
    assert res.problems and "metrics.jsonl:4: not a journal record" in res.problems[0]


def test_registry_down_from_the_start_then_sync(env, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    reg, url, path = env
    spec = _spec(reg, UNREACHABLE, path, tmp_path / "runs")
    out = run_train_job(spec)  # trains on, journaling to files
    assert set(out) == {r.run_id for r in spec.runs}
    assert {reg.get_run(r.run_id).status for r in spec.runs} == {"queued"}
    res = CliRunner().invoke(cli, ["--db", url, "sweep", "sync", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert "status change(s)" in res.output
    for r in spec.runs:
        run = reg.get_run(r.run_id)
        assert run.status == "completed" and run.checkpoint_path == out[r.run_id] and run.attempts == 1
        assert "nmse" in reg.summary(r.run_id)


@pytest.mark.postgres
def test_registry_outage_mid_job_buffers_statuses_and_points(pg_schema_url: str, tmp_path: pathlib.Path) -> None:
    reg = Registry(pg_schema_url)
    _dataset(tmp_path, reg)
    (run, _), = reg.add_runs("tiny", [{"k": 5}])
    run_dir = tmp_path / "runs" / f"run-{run.id:06d}"
    run_dir.mkdir(parents=True)
    journal = Journal(reg, {run.id: run_dir}, registry_id=reg.registry_id, identities={run.id: run.config_hash})
    journal.transition(run.id, "running")
    journal.log(run.id, 5, {"nmse": 0.5})
    schema = pg_schema_url.rsplit("%3D", 1)[1]
    admin = create_registry_engine(pg_schema_url.split("?")[0])
    with admin.begin() as conn:
        conn.execute(sa.text(f"ALTER SCHEMA {schema} RENAME TO {schema}_off"))  # the registry is gone
    try:
        journal.log(run.id, 10, {"nmse": 0.4})
        journal.transition(run.id, "completed", checkpoint_path="/ckpt")
        assert journal.buffered == 2
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"ALTER SCHEMA {schema}_off RENAME TO {schema}"))
        admin.dispose()
    assert reg.get_run(run.id).status == "running"
    res = sync_file(reg, run_dir / "metrics.jsonl")
    assert (res.points, res.transitions) == (1, 1)
    assert reg.get_run(run.id).status == "completed" and reg.summary(run.id) == {"nmse": 0.4}
    reg.close()


# -- cancel, debug executor, train resumes where its sweep wrote ---------------------------------------------------------------
GRID = """\
name: {name}
dataset: tiny
executor: local
runs_root: {root}
train: {{batch_size: 64, n_tokens: 2000000, log_every: 5, ckpt_every: 50, lr_warmup_steps: 2, buffer_mb: 0.2}}
base: {{arch: topk, d_sae: 64, layer: 7, k: 4, lr: 0.001}}
"""


@pytest.mark.slow
def test_cancel_stops_local_training(env, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    from saev_ops.sweeps.status import _alive

    reg, url, _ = env
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID.format(name="long", root=tmp_path / "runs"))
    res = CliRunner().invoke(cli, ["--db", url, "sweep", "submit", str(grid)])
    assert res.exit_code == 0, res.output
    (row,) = reg.list_runs(RunQuery(sweep="long"))
    deadline = time.monotonic() + 120
    while reg.get_run(row.run.id).status != "running" or not reg.metric_history(row.run.id):
        assert time.monotonic() < deadline, "the local job did not start training"
        time.sleep(0.2)
    pid = reg.get_run(row.run.id).local_pid
    assert pid and _alive(pid)
    res = CliRunner().invoke(cli, ["--db", url, "sweep", "cancel", "long"])
    assert res.exit_code == 0 and f"local process(es) {pid} (killed)" in res.output, res.output
    assert not _alive(pid)
    n_points = len(reg.metric_history(row.run.id))
    time.sleep(2)
    run = reg.get_run(row.run.id)
    assert run.status == "cancelled" and len(reg.metric_history(row.run.id)) == n_points  # nothing trains on


def test_debug_executor_fails_with_a_message_not_a_prompt() -> None:
    from saev_ops.jobs import submit

    def boom() -> None:
        raise RuntimeError("kaput")

    with pytest.raises(errors.JobFailedError, match=r"job 1 of 1 \(t\) failed: RuntimeError: kaput"):
        submit("debug", pathlib.Path("/tmp/unused-saev-ops"), "t", [boom])


def test_train_command_uses_the_runs_own_directory(env, tmp_path: pathlib.Path, monkeypatch) -> None:  # noqa: ANN001
    reg, url, path = env
    monkeypatch.setenv("SAEV_OPS_HOME", str(tmp_path / "home"))
    spec = _spec(reg, url, path, tmp_path / "sweep-root", n_runs=1)
    rid = spec.runs[0].run_id
    reg.get_or_create_sweep("named")
    reg.set_run_fields(rid, run_dir=str(tmp_path / "sweep-root" / f"run-{rid:06d}"))
    res = CliRunner().invoke(cli, ["--db", url, "train", str(rid)])
    assert res.exit_code == 0, res.output
    assert str(tmp_path / "sweep-root" / f"run-{rid:06d}" / "sae") in res.output
    assert not (tmp_path / "home" / "runs").exists()


# -- recordings end in an honest state ---------------------------------------------------------------------------------------
def test_recording_outcomes(tmp_path: pathlib.Path) -> None:
    from saev_ops.record import RecordSpec, record_dataset
    from saev_ops.record.images import generate_images

    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"x{i}.png").write_bytes(b"not an image")
    spec = RecordSpec(name="allbad", images=str(bad), model="builtin:tiny", data_root=str(tmp_path / "data"))
    with pytest.raises(errors.DataError, match="no readable images"):
        record_dataset(reg, spec)
    assert reg.get_dataset("allbad").status == "failed"
    with pytest.raises(errors.DataError, match="drop --strict"):
        record_dataset(reg, RecordSpec(**{**spec.__dict__, "strict": True}))
    assert reg.get_dataset("allbad").status == "failed"

    root = tmp_path / "imgs"
    generate_images(root, 6, size=32, n_classes=2)
    (root / "class0" / "garbage.png").write_bytes(b"nope")
    spec = RecordSpec(name="d", images=str(root), model="builtin:tiny", data_root=str(tmp_path / "data"))
    d = record_dataset(reg, spec)
    assert d.extra["n_bad_images"] == 1
    with pytest.raises(errors.DataError, match=r"skipping 1 unreadable image.*--strict refuses"):
        record_dataset(reg, RecordSpec(**{**spec.__dict__, "strict": True}))
    res = CliRunner().invoke(cli, ["--db", str(reg.url.database), "datasets", "record", "--images", str(root),
                                   "--model", "builtin:tiny", "--name", "other", "--data-root",
                                   str(tmp_path / "data")])
    assert res.exit_code == 1 and "registered as dataset 'd'" in res.output, res.output
    with pytest.raises(errors.NotFoundError):
        reg.get_dataset("other")
    reg.close()


# -- user input: timestamps, integers, names, images ------------------------------------------------------------------------------
def test_where_compares_timestamps_as_timestamps(registry: Registry) -> None:
    make_dataset(registry)
    registry.add_runs("inat21", [{"k": 1}, {"k": 2}])
    assert registry.list_runs(RunQuery(where=("created_at>2030",))) == []
    assert len(registry.list_runs(RunQuery(where=("created_at>2020-01-01",)))) == 2
    assert len(registry.list_runs(RunQuery(where=("created_at<2100-01-01 00:00:00",)))) == 2
    for bad, message in [("created_at>yesterday", "UTC timestamp"), ("id>99999999999999999999", "64-bit"),
                         ("attempts<-99999999999999999999", "64-bit")]:
        with pytest.raises(errors.QueryError, match=message):
            registry.list_runs(RunQuery(where=(bad,)))


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "two words", "x" * 201, "-lead", "tab\there"])
def test_dataset_and_sweep_names_are_validated(registry: Registry, name: str) -> None:
    with pytest.raises(errors.ConfigError, match="name"):
        make_dataset(registry, name=name)
    with pytest.raises(errors.ConfigError, match="name"):
        registry.get_or_create_sweep(name)
    assert registry.list_datasets() == []


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "CMYK", "P", "RGBA", "LA", "L", "1"])
def test_image_modes_become_the_right_rgb(tmp_path: pathlib.Path, mode: str) -> None:
    from PIL import Image

    from saev_ops.record.preprocess import to_rgb

    grey8 = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (64, 1))
    if mode == "I;16":
        im = Image.fromarray((grey8.astype(np.uint16) * 257))  # 16-bit greyscale, as a 16-bit PNG opens
        im.save(tmp_path / "g16.png")
        im = Image.open(tmp_path / "g16.png")
        assert im.mode == "I;16"
    elif mode == "I":
        im = Image.fromarray(grey8.astype(np.int32) * 257, mode="I")
    elif mode == "F":
        im = Image.fromarray(grey8.astype(np.float32) / 255.0, mode="F")
    else:
        im = Image.fromarray(grey8, mode="L").convert(mode)
    rgb = np.asarray(to_rgb(im))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    if mode in ("I;16", "I", "F", "L", "LA", "P", "RGBA"):
        assert np.abs(rgb[..., 0].astype(int) - grey8).max() <= 1  # not clipped to white
    if mode == "CMYK":
        assert np.abs(rgb.astype(int) - np.asarray(im.convert("RGB")).astype(int)).max() == 0


def test_a_running_run_whose_local_process_is_gone_is_lost(env) -> None:  # noqa: ANN001
    import socket
    import subprocess
    import sys

    from saev_ops.sweeps.status import reconcile

    reg, _, _ = env
    reg.get_or_create_sweep("gone")
    ((run, _),) = reg.add_runs("tiny", [{"k": 9}], sweep="gone")
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    reg.set_run_fields(run.id, executor="local", local_pid=ended.pid)
    reg.transition_run(run.id, "running", host=socket.gethostname())
    changes = reconcile(reg, "gone", grace_s=3600)  # the heartbeat is fresh: only the process says it died
    assert [(c.run_id, c.new) for c in changes] == [(run.id, "lost")]
    assert f"process {ended.pid}" in reg.get_run(run.id).error


def test_a_job_never_revives_a_cancelled_run(env, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    """A Slurm task that starts as its sweep is cancelled used to requeue and train the run (cancelled -> queued ->
    running); now it trains nothing and the runs stay as they were. Asking for a rerun explicitly still works."""
    reg, url, path = env
    spec = _spec(reg, url, path, tmp_path / "runs")
    first, second = (r.run_id for r in spec.runs)
    reg.transition_run(second, "cancelled")
    assert run_train_job(spec) == {}
    assert reg.get_run(first).status == "queued" and reg.get_run(second).status == "cancelled"
    assert reg.metric_history(first) == [] and reg.get_run(second).attempts == 0
    reg.transition_run(first, "cancelled")
    res = CliRunner().invoke(cli, ["--db", url, "train", str(first), str(second)])
    assert res.exit_code == 0, res.output
    assert {reg.get_run(first).status, reg.get_run(second).status} == {"completed"}
