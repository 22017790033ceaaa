"""Sweeps past Slurm's MaxArraySize on the CI cluster (MaxArraySize=11, tests/slurm/cluster.sh): chunks, lanes that
keep max_parallel tasks in flight, a refused chunk that leaves the rest pending, a 10,000-run sweep in one command,
and two clusters on one machine that do not meet."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from saev_ops import errors
from saev_ops.jobs import max_array_size, plan_arrays
from saev_ops.registry import Registry, RunQuery
from saev_ops.sweeps import parse_sweep, submit_sweep
from tests.helpers import make_dataset
from tests.shard_helpers import write_dataset
from tests.slurm_helpers import require_cluster, sacct_rows, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(autouse=True)
def cluster() -> None:
    require_cluster()


def test_plan_arrays_chunks_and_lanes() -> None:
    plan = plan_arrays(50, 11, 4)
    assert [(c.start, c.stop) for c in plan] == [(0, 11), (11, 22), (22, 33), (33, 44), (44, 50)]
    assert sum(c.parallelism for c in plan[:4]) == 4 and plan[4].parallelism == plan[0].parallelism
    assert [c.after for c in plan] == [None, None, None, None, 0]
    wide = plan_arrays(30, 11, 8)  # 3 chunks share 8 slots: 3 + 3 + 2
    assert [c.parallelism for c in wide] == [3, 3, 2] and all(c.after is None for c in wide)
    assert plan_arrays(5, 1001, 8) == [type(plan[0])(0, 5, 8, None)]
    many = plan_arrays(10_000, 1001, 2)
    assert len(many) == 10 and max(c.stop - c.start for c in many) == 1001
    assert [c.after for c in many] == [None, None, 0, 1, 2, 3, 4, 5, 6, 7]


def test_max_array_size_is_read_from_the_cluster() -> None:
    assert max_array_size() == int(os.environ.get("SAEV_SLURM_MAX_ARRAY", "11"))


@pytest.fixture
def env(tmp_path: pathlib.Path) -> tuple[Registry, str, pathlib.Path]:
    path = write_dataset(tmp_path / "data", n_examples=20, layers=(7,), n_patches=16, d_model=32)
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    sidecar = json.loads((path / "saev_ops.json").read_text())
    make_dataset(reg, name="tiny", path=str(path), d_model=32, layers=[7], tokens_per_example=17, n_examples=20,
                 status="complete", extra={"metadata_hash": sidecar["content_hash"]})
    return reg, url, tmp_path


def grid(tmp: pathlib.Path, name: str, *, lrs: int, seeds: int, partition: str = "debug",
         max_parallel: int = 4) -> str:
    lr = ", ".join(f"{1e-4 * (i + 1):.6g}" for i in range(lrs))
    seed = ", ".join(str(i) for i in range(seeds))
    return f"""\
name: {name}
dataset: tiny
executor: slurm
runs_root: {tmp / 'runs'}
train: {{batch_size: 64, n_tokens: 128, log_every: 1, ckpt_every: 100, lr_warmup_steps: 1, buffer_mb: 0.1,
         heartbeat_s: 5}}
base: {{arch: topk, d_sae: 32, k: 4, layer: 7, dead_tokens: 64}}
grid: {{lr: [{lr}], seed: [{seed}]}}
resources: {{partition: {partition}, cpus: 1, mem_gb: 1, time_min: 10, max_parallel: {max_parallel},
             max_runs_per_job: 1}}
"""


def test_a_sweep_past_max_array_size_runs_in_chunks_within_max_parallel(env) -> None:  # noqa: ANN001
    reg, url, tmp = env
    # 23 jobs: arrays of 11 and 11 and a single job, in 2 lanes (max_parallel 2): the third waits for the first
    res = submit_sweep(reg, parse_sweep(grid(tmp, "wide", lrs=23, seeds=1, max_parallel=2)), url)
    runs = reg.list_runs(RunQuery(sweep="wide"))
    assert len(res.jobs) == 23 and len(runs) == 23
    chunks = sorted({r.run.slurm_job_id for r in runs}, key=int)
    assert len(chunks) == 3 and all(r.run.slurm_array_index is None or 0 <= r.run.slurm_array_index < 11
                                    for r in runs)
    shown = {c: subprocess.run(["scontrol", "show", "job", c], capture_output=True, text=True).stdout for c in chunks}
    assert f"afterany:{chunks[0]}" in shown[chunks[2]] and "Dependency=(null)" in shown[chunks[1]]
    assert all("ArrayTaskThrottle=1" in shown[c] for c in chunks[:2])  # each lane: 1 of the 2 slots
    wait_for(lambda: all(r.run.status == "completed" for r in reg.list_runs(RunQuery(sweep="wide"))), 900,
             "the 23 jobs to complete")
    spans = wait_for(lambda: _ended_spans(chunks, 23), 120, "sacct to record every job's end")
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])  # an end before a start at one time
    running = peak = 0
    for _, d in edges:
        running += d
        peak = max(peak, running)
    assert peak <= 2  # never more than max_parallel tasks at once, by sacct's start and end times


def _ended_spans(jobs: list[str], n: int) -> list[tuple[object, object]] | None:
    spans = [(r["Start"], r["End"]) for jid in jobs for r in sacct_rows(jid)]
    return spans if len(spans) == n and all(s and e for s, e in spans) else None


def test_a_refused_chunk_leaves_the_rest_pending_and_a_resubmit_picks_it_up(env, tmp_path: pathlib.Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    reg, url, tmp = env
    # sbatch on PATH refuses every submission after the second, as a QOS limit would; the first two are real
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True).stdout.strip()
    fake = tmp_path / "bin"
    fake.mkdir()
    count = tmp_path / "count"
    (fake / "sbatch").write_text(f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {count}
if [ $n -gt 2 ]; then echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2; exit 1; fi
exec {real} "$@"
""")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    spec = parse_sweep(grid(tmp, "refused", lrs=8, seeds=4, partition="held"))  # 32 jobs: 3 chunks
    with pytest.raises(errors.ClusterError) as info:
        submit_sweep(reg, spec, url)
    message = str(info.value)
    assert "chunk 3 of 3 (calls 22-31)" in message and "QOSMaxSubmitJobPerUserLimit" in message
    assert "10 runs stay pending" in message
    runs = reg.list_runs(RunQuery(sweep="refused"))
    submitted = [r for r in runs if r.run.slurm_job_id]
    pending = [r for r in runs if not r.run.slurm_job_id]
    assert len(submitted) == 22 and len(pending) == 10
    assert all(r.run.status == "queued" and r.run.executor is None for r in pending)
    monkeypatch.setenv("PATH", os.environ["PATH"].split(":", 1)[1])
    again = submit_sweep(reg, spec, url)
    assert sorted(again.new_runs) == sorted(r.run.id for r in pending)
    runs = reg.list_runs(RunQuery(sweep="refused"))
    assert len(runs) == 32 and all(r.run.slurm_job_id for r in runs)
    subprocess.run(["scancel", *sorted({r.run.slurm_job_id for r in runs})], check=True)


def test_ten_thousand_runs_submit_in_one_command(env) -> None:  # noqa: ANN001
    reg, url, tmp = env
    spec = parse_sweep(grid(tmp, "huge", lrs=100, seeds=100, partition="held", max_parallel=64))
    t0 = time.monotonic()
    dry = submit_sweep(reg, spec, url, dry_run=True)
    assert dry.n_runs == 10_000 and len(dry.jobs) == 10_000 and reg.list_sweeps() == []
    res = submit_sweep(reg, spec, url)
    elapsed = time.monotonic() - t0
    runs = reg.list_runs(RunQuery(sweep="huge"))
    jobs = {r.run.slurm_job_id for r in runs}
    try:
        assert len(runs) == 10_000 and len(res.job_ids) == 10_000 and len(jobs) == 910  # ceil(10,000 / 11)
        indices = [r.run.slurm_array_index for r in runs]
        assert all(i is None or 0 <= i < 11 for i in indices)
        assert indices.count(None) == 1  # 909 arrays of 11, then the last run alone: a plain job
        queued = subprocess.run(["squeue", "-h", "-r", "-p", "held", "-o", "%i"], capture_output=True,
                                text=True).stdout.split()
        assert len(queued) == 10_000
        print(f"10,000 runs submitted in {elapsed:.0f} s", file=sys.stderr)
    finally:
        subprocess.run(["scancel", "-p", "held"], check=False)


def test_two_clusters_on_one_machine_do_not_meet(tmp_path: pathlib.Path) -> None:
    script = pathlib.Path(__file__).parent / "slurm" / "cluster.sh"
    other = tmp_path / "other-cluster"
    env = {**os.environ, "SAEV_SLURM_DIR": str(other)}
    up = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, env=env, timeout=300)
    assert up.returncode == 0, up.stderr
    try:
        conf = str(other / "etc" / "slurm.conf")
        assert (other / "ports").read_text().split() != pathlib.Path(
            os.environ["SLURM_CONF"]).parents[1].joinpath("ports").read_text().split()
        assert "UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                                      env={**os.environ, "SLURM_CONF": conf}).stdout
    finally:
        subprocess.run(["bash", str(script), "down"], capture_output=True, env=env, timeout=120)
    assert not other.exists()
    assert "UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout  # ours still answers
