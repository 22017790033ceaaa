"""Sweeps and jobs on a real single-node Slurm cluster (started by tests/slurm/cluster.sh, from .ci/run).

No test requests a GPU. Each test uses its own registry and run folder. These tests wait on the scheduler, so they
take a few minutes in all; the time-limit case alone waits out a one-minute limit.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import subprocess
import sys
import time

import pytest
import torch

from saev_ops.registry import Registry, RunQuery
from saev_ops.sae.io import load_sae
from saev_ops.sweeps import parse_sweep, submit_sweep
from saev_ops.sweeps.status import reconcile
from tests.helpers import make_dataset
from tests.shard_helpers import write_dataset
from tests.slurm_helpers import require_cluster, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(autouse=True)
def cluster() -> None:
    require_cluster()


@pytest.fixture
def env(tmp_path: pathlib.Path) -> tuple[Registry, str, pathlib.Path]:
    path = write_dataset(tmp_path / "data", n_examples=60, layers=(3, 7), n_patches=16, d_model=32)
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    sidecar = json.loads((path / "saev_ops.json").read_text())
    make_dataset(reg, name="tiny", path=str(path), d_model=32, layers=[3, 7], tokens_per_example=17, n_examples=60,
                 status="complete", extra={"metadata_hash": sidecar["content_hash"]})
    return reg, url, tmp_path


def grid(tmp_path: pathlib.Path, name: str, *, n_tokens: int, batch_size: int = 64, ckpt_every: int = 5,
         time_min: int = 10, d_sae: int = 64) -> str:
    return f"""\
name: {name}
dataset: tiny
executor: slurm
runs_root: {tmp_path / 'runs'}
train: {{batch_size: {batch_size}, n_tokens: {n_tokens}, log_every: 5, ckpt_every: {ckpt_every}, lr_warmup_steps: 2,
         buffer_mb: 0.2, heartbeat_s: 1}}
base: {{arch: topk, d_sae: {d_sae}, layer: 7, dead_tokens: 640}}
grid: {{k: [4, 8]}}
resources: {{partition: debug, cpus: 1, mem_gb: 1.5, time_min: {time_min}, max_parallel: 2, max_runs_per_job: 1}}
"""


def sacct_state(job: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job], capture_output=True,
                         text=True).stdout
    return " ".join(line.split("|")[1] for line in out.splitlines() if "|" in line)


def statuses(reg: Registry, sweep: str) -> list[str]:
    return [r.run.status for r in reg.list_runs(RunQuery(sweep=sweep))]


def test_sweep_completes_on_slurm_with_metrics(env) -> None:  # noqa: ANN001
    reg, url, tmp = env
    res = submit_sweep(reg, parse_sweep(grid(tmp, "ok", n_tokens=640)), url)
    assert len(res.jobs) == 2 and all(res.job_ids)
    wait_for(lambda: statuses(reg, "ok") == ["completed", "completed"], 240, "the sweep to complete")
    rows = reg.list_runs(RunQuery(sweep="ok", where=("nmse<10",), sort="nmse"))
    assert len(rows) == 2
    for r in rows:
        assert r.run.executor == "slurm" and r.run.slurm_job_id and r.run.slurm_array_index in (0, 1)
        assert r.run.host and "l0" in r.summary and len(reg.metric_history(r.run.id, "nmse")) == 2


def test_failing_run_error_reaches_runs_show(env) -> None:  # noqa: ANN001
    reg, url, tmp = env
    # a batch larger than the dataset's 60 x 16 patches: the trainer refuses it inside the job
    submit_sweep(reg, parse_sweep(grid(tmp, "bad", n_tokens=4096, batch_size=2048)), url)
    wait_for(lambda: statuses(reg, "bad") == ["failed", "failed"], 240, "the runs to fail")
    from click.testing import CliRunner

    from saev_ops.cli import cli

    out = CliRunner().invoke(cli, ["--db", url, "runs", "show", str(reg.list_runs(RunQuery(sweep="bad"))[0].run.id)])
    assert "status        failed" in out.output
    assert "batch_size 2048 is larger than the dataset's 960 selected patches" in out.output


def _batch_script(tmp: pathlib.Path, url: str, run_id: int, minutes: int) -> pathlib.Path:
    """A researcher's own batch script calling `saev-ops train` in the job."""
    script = tmp / f"train-{run_id}.sh"
    script.write_text(f"""#!/bin/bash
#SBATCH --time={minutes} --mem=1500M --cpus-per-task=1 --output={tmp}/slurm-%j.out
export SAEV_OPS_DB_URL={url}
exec {sys.executable} -m saev_ops train {run_id} --runs-root {tmp / 'runs'}
""")
    return script


def _register(reg: Registry, sweep: str, n_tokens: int) -> int:
    from saev_ops.runconfig import TrainSettings, run_config
    from saev_ops.sae import SAEConfig

    reg.get_or_create_sweep(sweep)
    settings = TrainSettings(batch_size=960, n_tokens=n_tokens, log_every=20, ckpt_every=1000, buffer_mb=0.2,
                             heartbeat_s=1.0)
    sae = SAEConfig.of(arch="topk", d_model=32, d_sae=2048, k=8).to_dict()
    ((run, _),) = reg.add_runs("tiny", [run_config(sae, 1e-3, 0, 7, "patches", settings)], sweep=sweep)
    return run.id


def _sbatch(script: pathlib.Path) -> str:
    out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def test_cancelled_job_is_marked_cancelled(env) -> None:  # noqa: ANN001
    reg, url, tmp = env
    run_id = _register(reg, "cancel", n_tokens=960 * 100_000)  # far longer than the test
    job = _sbatch(_batch_script(tmp, url, run_id, minutes=10))
    wait_for(lambda: reg.get_run(run_id).status == "running", 120, "the run to start")
    assert reg.get_run(run_id).slurm_job_id == job
    subprocess.run(["scancel", job], check=True)
    wait_for(lambda: "CANCELLED" in sacct_state(job), 60, "sacct to say CANCELLED")
    changes = reconcile(reg, "cancel", grace_s=3600)
    assert [(c.run_id, c.new) for c in changes] == [(run_id, "cancelled")]
    run = reg.get_run(run_id)
    assert run.status == "cancelled" and "cancelled in Slurm" in run.error


def test_sweep_cancel_scancels_and_the_runs_stay_cancelled(env) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from saev_ops.cli import cli

    reg, url, tmp = env
    res = submit_sweep(reg, parse_sweep(grid(tmp, "stop", n_tokens=64 * 1_000_000)), url)
    job = res.job_ids[0]
    wait_for(lambda: "running" in statuses(reg, "stop"), 120, "a run to start")
    out = CliRunner().invoke(cli, ["--db", url, "sweep", "cancel", "stop"])
    assert out.exit_code == 0 and f"Slurm job(s) {job} (scancel)" in out.output, out.output
    wait_for(lambda: "CANCELLED" in sacct_state(job), 60, "sacct to say CANCELLED")
    time.sleep(3)  # a job that kept going would now try to write its runs
    assert statuses(reg, "stop") == ["cancelled", "cancelled"]


def test_job_past_its_time_limit_is_marked_with_the_reason(env) -> None:  # noqa: ANN001
    reg, url, tmp = env
    run_id = _register(reg, "slow", n_tokens=960 * 1_000_000)
    job = _sbatch(_batch_script(tmp, url, run_id, minutes=1))
    wait_for(lambda: reg.get_run(run_id).status == "running", 120, "the run to start")
    wait_for(lambda: "TIMEOUT" in sacct_state(job), 180, "Slurm to end the job at its time limit", interval=3)
    changes = reconcile(reg, "slow", grace_s=3600)
    assert [(c.run_id, c.new) for c in changes] == [(run_id, "failed")]
    assert "time limit" in reg.get_run(run_id).error


def test_requeued_job_resumes_from_its_checkpoint(env) -> None:  # noqa: ANN001
    reg, url, tmp = env
    # One job, one run, preempted (USR2, as Slurm does) as soon as its first checkpoint is on disk. The job must still
    # be running then, so it is long (1,500 steps, a checkpoint every 10) and the poll is tight; a machine that ever
    # outruns the poll fails the check below with that message.
    n_steps = 1500
    text = grid(tmp, "requeue", n_tokens=64 * n_steps, ckpt_every=10, d_sae=512).replace("grid: {k: [4, 8]}",
                                                                                          "grid: {k: [8]}")
    spec = parse_sweep(text)
    res = submit_sweep(reg, spec, url)
    (job,) = res.job_ids
    (row,) = reg.list_runs(RunQuery(sweep="requeue"))
    wait_for(lambda: any((tmp / "runs" / "jobs").glob("*/ckpt/state.pt")), 180, "a first checkpoint", interval=0.02)
    # what preemption does: Slurm signals USR2, submitit calls TrainJob.checkpoint and requeues the job
    sig = subprocess.run(["scancel", "--signal=USR2", job], capture_output=True, text=True)
    assert sig.returncode == 0, f"the job finished before it could be preempted; make it longer ({sig.stderr})"
    wait_for(lambda: reg.get_run(row.run.id).status == "completed", 300, "the requeued job to finish")
    run = reg.get_run(row.run.id)
    assert run.attempts == 2, "the run should have been requeued once"
    logs = "".join(p.read_text() for p in (tmp / "runs" / "submitit").glob("*/*_log.err"))
    resumed = re.findall(r"resumed from .* at step (\d+) of (\d+)", logs)
    assert len(resumed) == 1 and 0 < int(resumed[0][0]) < n_steps and int(resumed[0][1]) == n_steps, logs[-3000:]
    # the resumed weights equal an uninterrupted run of the same config
    from saev_ops.sweeps.submit import job_specs
    from saev_ops.train.trainer import Trainer

    dataset = reg.get_dataset("tiny")
    (fresh,) = job_specs(reg, spec, dataset, list(res.jobs), url)
    ref = Trainer(dataclasses.replace(fresh, runs_root=str(tmp / "ref")), None)
    ref.train()
    sae, _ = load_sae(pathlib.Path(run.checkpoint_path))
    for (name, a), (_, b) in zip(ref.saes[0].state_dict().items(), sae.state_dict().items()):
        assert torch.equal(a.cpu(), b), name


def imgs_sweep(tmp_path: pathlib.Path) -> pathlib.Path:
    """A grid of two tiny SAEs on layer 1 of the dataset `imgs`, trained in-process (debug executor)."""
    path = tmp_path / "grid.yaml"
    path.write_text(f"""\
name: rec
dataset: imgs
executor: debug
runs_root: {tmp_path / 'runs'}
train: {{batch_size: 32, n_tokens: 640, log_every: 5, ckpt_every: 10, buffer_mb: 0.2}}
base: {{arch: topk, d_sae: 64, layer: 1}}
grid: {{k: [4, 8]}}
""")
    return path


def test_record_and_infer_as_slurm_jobs(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`datasets record --executor slurm` and `infer --executor slurm` submit and return; the jobs fill the registry."""
    from click.testing import CliRunner

    from saev_ops.cli import cli
    from saev_ops.record.images import generate_images

    monkeypatch.setenv("SAEV_OPS_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    generate_images(tmp_path / "imgs", 12, size=32, n_classes=2)
    slurm = ["--slurm", "partition=debug", "--slurm", "cpus=1", "--slurm", "mem_gb=1.5", "--slurm", "time_min=10"]

    def saev(*args: str) -> str:
        res = CliRunner().invoke(cli, ["--db", url, *args])
        assert res.exit_code == 0, res.output
        return res.output

    # a wrong image folder fails at submission, before anything is queued
    res = CliRunner().invoke(cli, ["--db", url, "datasets", "record", "--name", "x", "--images", str(tmp_path / "no"),
                                   "--model", "builtin:tiny", "--executor", "slurm", *slurm])
    assert res.exit_code != 0 and str(tmp_path / "no") in res.output
    out = saev("datasets", "record", "--name", "imgs", "--images", str(tmp_path / "imgs"), "--model", "builtin:tiny",
               "--layers", "1", "--executor", "slurm", *slurm)
    job = re.search(r"Slurm job (\d+)", out).group(1)
    reg = Registry(url)

    def dataset_status() -> str | None:
        try:
            return reg.get_dataset("imgs").status
        except Exception:  # noqa: BLE001 - not registered yet
            return None

    wait_for(lambda: dataset_status() == "complete" or "FAILED" in sacct_state(job), 240, "the recording job")
    assert dataset_status() == "complete", sacct_state(job)
    d = reg.get_dataset("imgs")
    assert d.n_examples == 12

    saev("sweep", "submit", str(imgs_sweep(tmp_path)))
    # a sweep with no completed runs, or a missing dataset, fails at submission
    res = CliRunner().invoke(cli, ["--db", url, "infer", "rec", "--dataset", "nope", "--executor", "slurm", *slurm])
    assert res.exit_code != 0 and "nope" in res.output
    out = saev("infer", "rec", "--dataset", "imgs", "--executor", "slurm", *slurm)
    job = re.search(r"Slurm job (\d+)", out).group(1)
    wait_for(lambda: "COMPLETED" in sacct_state(job) or "FAILED" in sacct_state(job), 240, "the inference job")
    outputs = [reg.find_output(r.run.id, d.id) for r in reg.list_runs(RunQuery(sweep="rec"))]
    assert all(o is not None for o in outputs), sacct_state(job)
    assert {o.n_rows for o in outputs} == {d.n_examples * (d.tokens_per_example - 1)}  # patch tokens: all but CLS
    assert "output" in saev("lineage", "sweep:rec")


def test_record_and_infer_split_across_slurm_array_tasks(tmp_path: pathlib.Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`datasets record --jobs 3` and `infer --jobs 2` on the cluster: array tasks write their parts, the last to
    finish joins them, and the results are those of one job, byte for byte."""
    from click.testing import CliRunner

    from saev_ops.cli import cli
    from saev_ops.infer import InferSpec, run_inference
    from saev_ops.record import RecordSpec, record_dataset
    from saev_ops.record.images import generate_images
    from tests.test_infer_split import assert_same_outputs
    from tests.test_record_split import assert_same_dataset

    monkeypatch.setenv("SAEV_OPS_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    generate_images(tmp_path / "imgs", 13, size=32, n_classes=2)
    slurm = ["--slurm", "partition=debug", "--slurm", "cpus=1", "--slurm", "mem_gb=1.5", "--slurm", "time_min=10",
             "--slurm", "max_parallel=3"]

    def saev(*args: str) -> str:
        res = CliRunner().invoke(cli, ["--db", url, *args])
        assert res.exit_code == 0, res.output
        return res.output

    record = ["datasets", "record", "--name", "imgs", "--images", str(tmp_path / "imgs"), "--model", "builtin:tiny",
              "--layers", "1", "--batch-size", "2", "--max-tokens-per-shard", str(17 * 2)]
    out = saev(*record, "--jobs", "3", "--executor", "slurm", *slurm)
    assert "submitted 3 part(s) of imgs" in out, out
    job = re.search(r"Slurm job\(s\) (\d+)", out).group(1)
    reg = Registry(url)
    wait_for(lambda: reg.get_dataset("imgs").status in ("complete", "failed") or "FAILED" in sacct_state(job), 300,
             "the recording's array")
    d = reg.get_dataset("imgs")
    assert d.status == "complete" and d.extra["timings"]["parts"] == 3, (d.extra, sacct_state(job))
    wait_for(lambda: sacct_state(job).split() == ["COMPLETED"] * 3, 60, "sacct to show the 3 tasks completed")
    one = record_dataset(Registry(f"sqlite:///{tmp_path / 'one.sqlite'}"),
                         RecordSpec(name="imgs", images=str(tmp_path / "imgs"), model="builtin:tiny", layers=(1,),
                                    batch_size=2, max_tokens_per_shard=17 * 2, data_root=str(tmp_path / "one")))
    assert_same_dataset(d, one)
    assert "is complete" in saev(*record, "--jobs", "3", "--executor", "slurm", *slurm)  # nothing to do again

    saev("sweep", "submit", str(imgs_sweep(tmp_path)))
    out = saev("infer", "rec", "--dataset", "imgs", "--batch-size", "16", "--jobs", "2", "--executor", "slurm",
               *slurm)
    assert "submitted 2 of 2 inference part(s) of 2 run(s)" in out, out
    job = re.search(r"Slurm job\(s\) (\d+)", out).group(1)
    run_ids = [r.run.id for r in reg.list_runs(RunQuery(sweep="rec"))]
    wait_for(lambda: all(reg.find_output(r, d.id) for r in run_ids) or "FAILED" in sacct_state(job), 300,
             "the inference array")
    split = [reg.find_output(r, d.id) for r in run_ids]
    assert all(o is not None for o in split), sacct_state(job)
    ref = run_inference(InferSpec(db_url=url, run_ids=tuple(run_ids), dataset="imgs", batch_size=16, force=True,
                                  out_root=str(tmp_path / "one-infer")))
    assert_same_outputs(split, ref)
