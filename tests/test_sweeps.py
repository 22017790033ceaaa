"""grid.yaml validation, expansion, grouping, and sweeps on the debug and local executors."""

from __future__ import annotations

import pathlib
import time
from typing import Any

import pytest
from click.testing import CliRunner

from saev_ops import errors
from saev_ops.cli import cli
from saev_ops.registry import Registry, RunQuery
from saev_ops.sae.config import SAEConfig
from saev_ops.sweeps import parse_sweep, submit_sweep
from saev_ops.sweeps.submit import group_runs
from tests.helpers import make_dataset
from tests.shard_helpers import write_dataset

GRID = """\
name: {name}
dataset: tiny
executor: {executor}
runs_root: {root}
train: {{batch_size: 64, n_tokens: 640, log_every: 5, ckpt_every: 5, lr_warmup_steps: 2, buffer_mb: 0.2}}
base: {{arch: topk, d_sae: 64, layer: 7, dead_tokens: 640}}
grid: {{k: [4, 8]}}
zip: {{lr: [0.001, 0.002], seed: [0, 1]}}
runs: [{{}}, {{arch: relu, l1_coeff: 0.001, k: 1}}]
"""


@pytest.fixture
def env(tmp_path: pathlib.Path) -> tuple[Registry, str]:
    path = write_dataset(tmp_path / "data", n_examples=40, layers=(3, 7), n_patches=16, d_model=32)
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    make_dataset(reg, name="tiny", path=str(path), d_model=32, layers=[3, 7], tokens_per_example=17,
                 n_examples=40, status="complete")
    sidecar = __import__("json").loads((path / "saev_ops.json").read_text())
    reg.update_dataset("tiny", extra={"metadata_hash": sidecar["content_hash"], "token_layout": sidecar["token_layout"]})
    return reg, url


def grid(tmp_path: pathlib.Path, executor: str = "debug", name: str = "s1") -> str:
    return GRID.format(name=name, executor=executor, root=tmp_path / "runs")


def test_expansion_and_precedence(tmp_path: pathlib.Path) -> None:
    spec = parse_sweep(grid(tmp_path))
    assert len(spec.configs) == 2 * 2 * 2 - 2 + 0  # relu entry fixes k, so its grid over k collapses: 4 + 2
    relu = [c for c in spec.configs if c["arch"] == "relu"]
    assert len(relu) == 2 and all(c["k"] == 1 for c in relu)
    assert {(c["k"], c["lr"], c["seed"]) for c in spec.configs if c["arch"] == "topk"} == {
        (4, 0.001, 0), (4, 0.002, 1), (8, 0.001, 0), (8, 0.002, 1)}


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: s\ndataset: d\ntrain:\n  batch_sise: 3\nbase: {kk: 3}\n",
         r"grid.yaml:4: train.batch_sise: unknown key \(did you mean 'batch_size'\?\); valid: batch_size, buffer_mb"
         r".*\n.*grid.yaml:5: base.kk: unknown key; valid: apply_b_dec_to_input, arch"),
        ("name: s\ndataset: d\nexecuter: local\nresources: {gpu: 1}\n",
         r"grid.yaml:3: executer: unknown key \(did you mean 'executor'\?\); valid: base, dataset, executor, grid, "
         r"name, resources, runs, runs_root, train, val_dataset, zip\n.*grid.yaml:4: resources.gpu: unknown key "
         r"\(did you mean 'gpus'\?\); valid: account"),
        ("name: s\ndataset: d\nresources:\n  gpus: -1\n", r"grid.yaml:4: resources.gpus: .*greater than or equal to 0"),
        ("name: s\ndataset: d\nbase: {d_sae: 64}\ngrid: {k: [4, 8000]}\n", r"grid.yaml:4: grid\.k: must be in 1\.\.d_sae \(64\), got 8000"),
        ("name: s\ndataset: d\nzip: {k: [1, 2], lr: [0.1]}\n", r"grid.yaml:3: zip: lists must have the same length"),
        ("name: s\ndataset: d\nexecutor: kubernetes\n", r"grid.yaml:3: executor: Input should be 'local', 'debug'"),
        ("name: s\n  dataset: [\n", r"grid.yaml:2: not valid YAML"),
        ("- 1\n- 2\n", r"expected a mapping at the top level"),
        ("name: s\ndataset: d\nbase: {tokens: sideways}\n", r"grid.yaml:3: base\.tokens: must be one of"),
    ],
)
def test_validation_errors_name_key_and_line(text: str, message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        parse_sweep(text)


def test_unknown_dataset_writes_nothing(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    reg, url = env
    spec = parse_sweep(grid(tmp_path).replace("dataset: tiny", "dataset: nope"))
    with pytest.raises(errors.NotFoundError, match="no dataset named 'nope'"):
        submit_sweep(reg, spec, url)
    assert reg.list_sweeps() == [] and reg.list_runs() == []


def test_grouping_fits_device_memory() -> None:
    from saev_ops.runconfig import TrainSettings
    from saev_ops.sweeps.spec import Resources

    from saev_ops.runconfig import RunConfig

    def run(d_sae: int, layer: int) -> RunConfig:
        return RunConfig(sae=SAEConfig.of(d_model=768, d_sae=d_sae), lr=4e-4, seed=0, layer=layer, tokens="patches",
                         train=TrainSettings(batch_size=4096))

    items = [(i, run(16384, 11)) for i in range(6)]
    items += [(10, run(1024, 6))]
    jobs = group_runs(items, 768, TrainSettings(batch_size=4096), Resources(device_memory_gb=3.0))  # ~1.45 GB each
    assert [j.layer for j in jobs] == [6, 11, 11, 11]
    assert all(j.memory_gb <= 3.0 for j in jobs) and sum(len(j.run_ids) for j in jobs) == 7
    with pytest.raises(errors.ConfigError, match="more than resources.device_memory_gb"):
        group_runs(items, 768, TrainSettings(batch_size=4096), Resources(device_memory_gb=0.5))


def test_debug_sweep_dry_run_resubmit_and_retry(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    reg, url = env
    spec = parse_sweep(grid(tmp_path))
    dry = submit_sweep(reg, spec, url, dry_run=True)
    assert dry.dry_run and len(dry.new_runs) == 6 and reg.list_runs() == []
    res = submit_sweep(reg, spec, url)
    assert len(res.new_runs) == 6 and len(res.jobs) == 1
    rows = reg.list_runs(RunQuery(sweep="s1", where=("nmse<100",)))
    assert len(rows) == 6 and all(r.run.status == "completed" and r.run.executor == "debug" for r in rows)
    again = submit_sweep(reg, spec, url)
    assert again.new_runs == () and again.jobs == ()
    import sqlalchemy as sa

    victim = rows[0].run.id
    with reg.engine.begin() as conn:  # as if its node had died: the run is failed and its checkpoint gone
        conn.execute(sa.text("UPDATE runs SET status = 'failed' WHERE id = :i"), {"i": victim})
    retry = submit_sweep(reg, spec, url, retry_failed=True)
    assert retry.resubmitted == (victim,) and retry.new_runs == ()
    run = reg.get_run(victim)
    assert run.status == "completed" and run.attempts == 2


@pytest.mark.slow
def test_local_executor_runs_in_the_background(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    reg, url = env
    res = CliRunner().invoke(cli, ["--db", url, "sweep", "submit", "-"], input=None)
    assert res.exit_code != 0  # a file is required
    f = tmp_path / "grid.yaml"
    f.write_text(grid(tmp_path, executor="local", name="bg"))
    res = CliRunner().invoke(cli, ["--db", url, "sweep", "submit", str(f)])
    assert res.exit_code == 0, res.output
    assert "6 new" in res.output and "1 job(s) on local" in res.output
    deadline = time.time() + 120
    while time.time() < deadline:
        rows = reg.list_runs(RunQuery(sweep="bg"))
        if all(r.run.status == "completed" for r in rows):
            break
        time.sleep(1)
    assert all(r.run.status == "completed" for r in rows), [r.run.status for r in rows]
    res = CliRunner().invoke(cli, ["--db", url, "runs", "list", "--sweep", "bg", "--where", "l0<=8", "--format", "csv"])
    assert len(res.output.strip().splitlines()) == 1 + 4  # the TopK runs (k 4 and 8)
    res = CliRunner().invoke(cli, ["--db", url, "sweep", "status", "bg"])
    assert "6 completed" in res.output
    res = CliRunner().invoke(cli, ["--db", url, "sweep", "list"])
    assert "bg" in res.output
    folders = sorted(p.name for p in (tmp_path / "runs" / "submitit").iterdir())
    assert "%j" not in folders and len(folders) == 1  # the job's own folder; no empty template folder beside it


def test_a_dead_window_longer_than_the_run_is_reported_at_submit(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    reg, url = env
    text = grid(tmp_path).replace("dead_tokens: 640", "dead_tokens: 100000")
    res = submit_sweep(reg, parse_sweep(text), url, dry_run=True)
    assert res.warnings and "dead_tokens=100,000 is longer than the 640 tokens" in res.warnings[0]
    assert submit_sweep(reg, parse_sweep(grid(tmp_path)), url, dry_run=True).warnings == ()
    with pytest.raises(errors.ConfigError, match="dead_steps was replaced by dead_tokens"):
        parse_sweep(grid(tmp_path).replace("dead_tokens: 640", "dead_steps: 10"))


def test_watch_refreshes_until_the_sweep_ends(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    import threading

    reg, url = env
    reg.get_or_create_sweep("w")
    (a, _), (b, _) = reg.add_runs("tiny", [{"sae": {"arch": "topk", "d_sae": 64, "k": 4}, "lr": 0.001,
                                             "train": {"n_tokens": 640, "batch_size": 64}},
                                            {"sae": {"arch": "relu", "d_sae": 32}, "lr": 0.002}], sweep="w")
    reg.transition_run(b.id, "running")
    reg.set_run_fields(b.id, run_dir=str(tmp_path / "runs" / f"run-{b.id:06d}"), local_pid=4242)
    reg.log_metrics(b.id, [("nmse", 5, 0.25), ("l0", 5, 7.0), ("val/nmse", 5, 0.3)])

    def finish() -> None:
        time.sleep(1.0)
        reg.transition_run(b.id, "completed")
        reg.transition_run(a.id, "cancelled")

    t = threading.Thread(target=finish)
    t.start()
    res = CliRunner().invoke(cli, ["--db", url, "sweep", "watch", "w", "--interval", "0.2"])
    t.join()
    assert res.exit_code == 0, res.output
    assert "w: 1 queued, 1 running" in res.output and "w: 1 cancelled, 1 completed" in res.output
    assert "topk 64 k=4 lr=0.001" in res.output and "0/10" in res.output and "0.25" in res.output
    header = next(line for line in res.output.splitlines() if line.startswith("run "))
    assert header.split() == ["run", "sae", "status", "step", "elapsed", "patches/s", "eta", "nmse", "l0",
                              "dead_frac", "val/nmse"]
    assert f"job log: {tmp_path / 'runs' / 'submitit' / '4242'}" in res.output


def test_watch_times_a_running_run(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    import datetime as dt

    from saev_ops.registry.models import utcnow
    from saev_ops.sweeps.watch import snapshot

    reg, _ = env
    reg.get_or_create_sweep("t")
    (run, _), = reg.add_runs("tiny", [{"sae": {"arch": "topk", "d_sae": 64, "k": 4}, "lr": 0.001,
                                       "train": {"n_tokens": 64_000, "batch_size": 64}}], sweep="t")
    reg.transition_run(run.id, "running")
    import sqlalchemy as sa

    with reg.engine.begin() as conn:  # started 100 s ago
        conn.execute(sa.text("UPDATE runs SET started_at = :t WHERE id = :i"),
                     {"t": utcnow() - dt.timedelta(seconds=100), "i": run.id})
    reg.log_metrics(run.id, [("nmse", 250, 0.5)])
    snap = snapshot(reg, "t")
    row = dict(zip(snap.columns, snap.rows[0], strict=True))
    assert row["step"] == "250/1000" and row["elapsed"] in ("1m40s", "1m41s")
    assert 155 <= row["patches/s"] <= 160  # 250 steps x 64 patches in 100 s
    assert row["eta"] in ("5m00s", "4m59s", "5m01s", "4m58s")


def test_resubmitting_on_another_device_finds_the_same_runs(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    reg, url = env
    first = submit_sweep(reg, parse_sweep(grid(tmp_path)), url, dry_run=False)
    assert len(first.new_runs) == 6
    moved = grid(tmp_path).replace("train: {", "train: {device: meta, log_every: 7, ckpt_every: 3, heartbeat_s: 9, ")
    assert submit_sweep(reg, parse_sweep(moved), url, dry_run=True).new_runs == ()
    again = submit_sweep(reg, parse_sweep(moved), url)
    assert again.new_runs == () and again.jobs == ()
    relu_k = grid(tmp_path).replace("{arch: relu, l1_coeff: 0.001, k: 1}", "{arch: relu, l1_coeff: 0.001, k: 7}")
    assert submit_sweep(reg, parse_sweep(relu_k), url, dry_run=True).new_runs == ()  # ReLU reads no k


def insert_old_runs(engine: Any, dataset: Any, configs: list[dict]) -> list[Any]:
    """Runs as an older saev-ops wrote them (full-config hashes, no run_params row), straight into the table."""
    import sqlalchemy as sa

    from saev_ops.registry import config_hash

    runs = sa.table("runs", sa.column("id"), sa.column("dataset_id"), sa.column("config", sa.JSON),
                    sa.column("config_hash"), sa.column("status"), sa.column("attempts"), sa.column("created_at"))
    out = []
    with engine.begin() as conn:
        for cfg in configs:
            h = config_hash(dataset.content_hash, cfg)
            rid = conn.execute(runs.insert().values(dataset_id=dataset.id, config=cfg, config_hash=h, status="queued",
                                                    attempts=0, created_at=sa.func.now()).returning(runs.c.id)).scalar()
            out.append(type("OldRun", (), {"id": rid, "config_hash": h}))
    return out


def test_migration_rehashes_runs_by_identity(tmp_path: pathlib.Path) -> None:
    from saev_ops.registry import config_hash, migrate
    from saev_ops.registry.engine import create_registry_engine
    from saev_ops.runconfig import run_identity

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_registry_engine(url)
    migrate.run_upgrade(engine, "0003_integrity")
    reg = Registry(url, check_schema=False)
    make_dataset(reg, name="d")
    base = {"sae": {"arch": "relu", "d_model": 8, "d_sae": 16, "l1_coeff": 0.1, "k": 4}, "lr": 0.001,
            "train": {"batch_size": 64, "device": "cpu", "log_every": 5}}
    on_gpu = {**base, "train": {**base["train"], "device": "cuda"}}
    a, b = insert_old_runs(engine, reg.get_dataset("d"), [base, on_gpu])  # the old way: full configs, two runs
    old_b = b.config_hash
    migrate.run_upgrade(engine)
    ds_hash = reg.get_dataset("d").content_hash
    assert reg.get_run(a.id).config_hash == config_hash(ds_hash, run_identity(base))
    assert reg.get_run(b.id).config_hash == old_b  # same identity as a: a (the earliest) took it
    (found, created), = reg.add_runs("d", [on_gpu], identities=[run_identity(on_gpu)])
    assert not created and found.id == a.id
    migrate.run_downgrade(engine, "0003_integrity")
    assert reg.get_run(a.id).config_hash == config_hash(ds_hash, base)
    reg.close()
    engine.dispose()


def test_every_grid_problem_in_one_pass_with_its_line(tmp_path: pathlib.Path) -> None:
    text = """\
name: off
dataset: d
grid:
  lr: []
zip:
  d_sae: [64, 128]
  k: [8]
base:
  arch: foo
runs:
  - {}
  - {arch: matryoshka, d_sae: 64, k: 8, matryoshka_prefixes: [32, 16]}
  - {arch: topk, d_sae: 16, k: 32}
"""
    with pytest.raises(errors.ConfigError) as info:
        parse_sweep(text, "g.yaml")
    lines = str(info.value).splitlines()[1:]
    assert [ln.split(":")[1] for ln in lines] == ["1", "4", "5", "9", "12", "13"], lines
    assert "quote it" in lines[0] and "grid.lr: empty list" in lines[1] and "d_sae=2, k=1" in lines[2]
    assert "base.arch: must be one of" in lines[3] and "runs.1.matryoshka_prefixes" in lines[4]
    assert "runs.2.k: must be in 1..d_sae (16), got 32" in lines[5]


def test_a_batch_larger_than_the_dataset_is_refused_at_submit(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    reg, url = env
    text = grid(tmp_path).replace("batch_size: 64", "batch_size: 1000")  # 40 examples x 16 patches = 640 rows
    for dry_run in (True, False):
        with pytest.raises(errors.ConfigError, match="batch_size 1,000 is larger than.*tokens=patches: 640 rows"):
            submit_sweep(reg, parse_sweep(text), url, dry_run=dry_run)
    assert reg.list_runs() == []


def test_a_resubmitted_sweep_keeps_the_defaults_of_its_first_submission(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    """buffer_mb's default went from 1,024 to 6,144 MB (it sets the data order, so it is in a run's identity): a sweep
    first submitted under the old default, resubmitted from the same grid, finds its runs instead of making new
    ones; a new sweep gets the new default; a grid that sets it explicitly gets what it says."""
    import dataclasses

    from saev_ops.runconfig import TrainSettings, run_identity
    from saev_ops.sweeps.submit import bind_configs

    reg, url = env
    text = grid(tmp_path).replace(", buffer_mb: 0.2", "")
    assert TrainSettings().buffer_mb == 6144.0
    # what the old version registered: the same grid, resolved with buffer_mb 1,024
    old = parse_sweep(text)
    old = dataclasses.replace(old, settings=old.settings.model_copy(update={"buffer_mb": 1024.0}))
    configs = [c.stored() for c in bind_configs(old, 32)]
    reg.get_or_create_sweep("s1", text)
    reg.add_runs("tiny", configs, sweep="s1", identities=[run_identity(c) for c in configs])
    assert submit_sweep(reg, parse_sweep(text), url, dry_run=True).new_runs == ()  # the same runs: buffer_mb kept
    submit_sweep(reg, parse_sweep(text), url)  # launches the 6 (registered, never launched), adds none
    runs = reg.list_runs(RunQuery(sweep="s1"))
    assert len(runs) == 6 and {r.run.config["train"]["buffer_mb"] for r in runs} == {1024.0}
    assert {r.run.status for r in runs} == {"completed"}
    other = submit_sweep(reg, parse_sweep(text.replace("name: s1", "name: s2")), url, dry_run=True)
    assert len(other.new_runs) == len(configs)  # a new sweep: the new default, new runs
    said = text.replace("n_tokens: 640,", "n_tokens: 640, buffer_mb: 6144,")
    assert len(submit_sweep(reg, parse_sweep(said), url, dry_run=True).new_runs) == len(configs)  # what it says


def test_loader_groups_larger_than_a_slurm_jobs_memory_are_reported_at_submit(
        tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    """What the job's loader would warn of when it starts (same sizing), said before anything is queued."""
    from saev_ops.host import Room
    from saev_ops.loaders import ShardSelection, ShuffledConfig, ShuffledDataLoader
    from saev_ops.sweeps.submit import HOST_OVERHEAD_GB

    reg, url = env
    text = grid(tmp_path, executor="slurm") + "resources: {mem_gb: 2.1, cpus: 2}\n"
    spec = parse_sweep(text)
    warnings = submit_sweep(reg, spec, url, dry_run=True).warnings
    (tokens,) = {c["tokens"] for c in spec.configs}
    loader = ShuffledDataLoader(reg.get_dataset("tiny").path, ShuffledConfig(
        selection=ShardSelection(layers=(7,), tokens=tokens), batch_size=64, buffer_mb=0.2, n_threads=2))
    room = Room(int((2.1 - HOST_OVERHEAD_GB) * 2**30), "resources.mem_gb=2.1 less ~2 for Python and torch")
    expected = loader.sizing.fit_warning(0.2, room)
    assert expected is not None and warnings == (
        f"tokens={tokens}: {expected}, or resources.mem_gb=2.2 or more (where the cluster counts page cache in a "
        "job's memory)",)
    assert "no buffer_mb fits: the loader's own buffers alone take" in expected  # 2 x 17 MB chunks, 14 batches
    assert len(warnings[0].splitlines()) == 2  # what, and the value that fits
    # enough memory, or not Slurm (a local job's loader checks the machine itself): nothing to say
    assert (loader.sizing.groups_bytes + loader.sizing.own_bytes) / 0.75 / 2**30 + 2 <= 2.2
    assert submit_sweep(reg, parse_sweep(text.replace("mem_gb: 2.1", "mem_gb: 2.2")), url, dry_run=True).warnings == ()
    assert submit_sweep(reg, parse_sweep(grid(tmp_path, executor="local") + "resources: {mem_gb: 2.1}\n"), url,
                        dry_run=True).warnings == ()


# -- no input can take the machine ----------------------------------------------------------------------------------------
ANCHOR_BOMB = """\
name: bomb
dataset: tiny
a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
grid: {k: *i}
"""


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.timeout(60)
def test_a_yaml_anchor_bomb_is_refused_before_it_is_built(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    reg, url = env
    assert len(ANCHOR_BOMB) < 700
    before = _peak_rss_mb()
    f = tmp_path / "bomb.yaml"
    f.write_text(ANCHOR_BOMB)
    for extra in ([], ["--dry-run"]):
        res = CliRunner().invoke(cli, ["--db", url, "sweep", "submit", str(f), *extra])
        assert res.exit_code == 1 and "more than 1,000,000 values once its aliases" in res.output, res.output
    assert _peak_rss_mb() - before < 300
    recursive = "name: r\ndataset: tiny\ngrid: &x {k: [1, *x]}\n"
    with pytest.raises(errors.ConfigError, match="contains itself"):
        parse_sweep(recursive)


@pytest.mark.timeout(60)
def test_a_grid_of_a_billion_runs_is_refused_from_its_lengths(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    reg, url = env
    ten = list(range(1, 11))
    text = f"name: huge\ndataset: tiny\nbase: {{arch: topk}}\ngrid: {{k: {ten}, d_sae: {ten}, aux_k: {ten}, " \
           f"seed: {ten}, dead_tokens: {ten}, lr: {[0.1 * x for x in ten]}, layer: {ten}, aux_coeff: {ten}, " \
           f"l1_coeff: {ten}}}\n"
    f = tmp_path / "huge.yaml"
    f.write_text(text)
    before = _peak_rss_mb()
    for extra in ([], ["--dry-run"]):
        res = CliRunner().invoke(cli, ["--db", url, "sweep", "submit", str(f), *extra])
        assert res.exit_code == 1 and "expands to 1,000,000,000 runs" in res.output and "--max-runs 100,000" in \
            res.output, res.output
    assert _peak_rss_mb() - before < 300
    assert reg.list_sweeps() == []
    # a 10,000-run sweep passes the default, and --max-runs is the limit
    ok = "name: ok\ndataset: tiny\nbase: {arch: topk, d_sae: 64}\n" \
         f"grid: {{k: {list(range(1, 11))}, seed: {list(range(1000))}}}\n"
    assert len(parse_sweep(ok).configs) == 10_000
    with pytest.raises(errors.ConfigError, match="10,000 runs .* --max-runs 9,999"):
        parse_sweep(ok, max_runs=9_999)


def test_the_max_runs_flag_defaults_to_the_library_limit() -> None:
    from saev_ops.cli.sweep import submit
    from saev_ops.sweeps.spec import MAX_RUNS

    (opt,) = [p for p in submit.params if p.name == "max_runs"]
    assert opt.default == MAX_RUNS


def test_every_refusal_comes_before_the_first_write(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    reg, url = env
    f = tmp_path / "big.yaml"
    f.write_text("name: big\ndataset: tiny\ntrain: {batch_size: 64}\nbase: {arch: topk, d_sae: 10000000000, k: 4, layer: 7}\n")
    res = CliRunner().invoke(cli, ["--db", url, "sweep", "submit", str(f)])
    assert res.exit_code == 1 and "a run (" in res.output and "needs about" in res.output, res.output
    assert reg.list_sweeps() == [] and reg.list_runs() == []


@pytest.mark.parametrize("key, value, message", [
    ("lr", ".inf", "lr: must be a finite number > 0, got inf"),
    ("lr", ".nan", "lr: must be a finite number > 0, got nan"),
    ("lr", "-0.1", "lr: must be a finite number > 0"),
    ("lr", "0", "lr: must be a finite number > 0"),
    ("l1_coeff", ".nan", "l1_coeff: must be a finite number, got nan"),
    ("aux_coeff", "-.inf", "aux_coeff: must be a finite number"),
    ("d_sae", "1500.0", "d_sae: must be an integer, got 1500.0"),
    ("seed", "0.5", "seed: must be an integer"),
])
def test_non_finite_and_meaningless_values_are_refused_with_key_and_line(key: str, value: str, message: str) -> None:
    text = f"name: s\ndataset: tiny\nbase: {{arch: relu, d_sae: 64}}\ngrid:\n  {key}: [{value}]\n"
    with pytest.raises(errors.ConfigError, match=f"grid.yaml:5: grid.{key}: {message.split(': ', 1)[1]}"):
        parse_sweep(text)


def test_the_example_grid_fits_its_slurm_jobs_memory(tmp_path: pathlib.Path) -> None:
    """`examples/grid.yaml --executor slurm --dry-run` printed a 600-character memory warning ("0.00 GB") on the
    quickstart's dataset: 64 images of builtin:small (CLS, 2 registers, 64 patches, d_model 128), layers 3 and 5."""
    import dataclasses

    from saev_ops.sweeps.submit import page_cache_warnings

    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    quickstart = make_dataset(reg, "quickstart", d_model=128, layers=[3, 5], tokens_per_example=65, n_examples=64,
                              extra={"token_layout": {"n_cls": 1, "n_registers": 0, "n_patches": 64}})
    root = pathlib.Path(__file__).resolve().parents[1]
    spec = dataclasses.replace(parse_sweep((root / "examples" / "grid.yaml").read_text()), executor="slurm")
    assert page_cache_warnings(spec, quickstart, {c["tokens"] for c in spec.configs}) == ()


def test_one_token_vocabulary_old_name_warns_and_keeps_identity(tmp_path: pathlib.Path, env, caplog) -> None:  # noqa: ANN001
    """Recording's `cls+patches` is a grid's name for the same selection (it was refused: grids said `no-registers`).
    A grid that still says `no-registers` gets a warning at its line, its runs store the new name, and runs
    registered under the old name are found again (one identity for both names)."""
    import logging

    from saev_ops.runconfig import run_identity
    from saev_ops.sweeps.submit import bind_configs

    reg, url = env
    new = grid(tmp_path).replace("layer: 7,", "layer: 7, tokens: cls+patches,")
    assert {c["tokens"] for c in parse_sweep(new).configs} == {"cls+patches"}
    old_text = grid(tmp_path).replace("layer: 7,", "layer: 7, tokens: no-registers,")
    with caplog.at_level(logging.WARNING, logger="saev_ops.sweeps.spec"):
        old = parse_sweep(old_text)
    assert "grid.yaml:6: base.tokens: tokens 'no-registers' is now called 'cls+patches'" in caplog.text
    assert {c["tokens"] for c in old.configs} == {"cls+patches"}
    # runs an older saev-ops registered from that grid: stored with the old name
    stored = [{**c.stored(), "tokens": "no-registers"} for c in bind_configs(old, 32)]
    reg.get_or_create_sweep("s1", old_text)
    reg.add_runs("tiny", stored, sweep="s1", identities=[run_identity(c) for c in stored])
    assert submit_sweep(reg, parse_sweep(new), url, dry_run=True).new_runs == ()
    assert submit_sweep(reg, old, url, dry_run=True).new_runs == ()
    assert len(reg.list_runs(RunQuery(where=("tokens=cls+patches",)))) == 6
