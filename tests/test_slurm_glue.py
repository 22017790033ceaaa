"""The Slurm glue without a cluster: sacct output recorded on the CI cluster, and the sbatch script a SlurmSpec makes
(a golden file; SAEV_OPS_REGEN_GOLDEN=1 rewrites it after a deliberate change, e.g. a new submitit)."""

from __future__ import annotations

import os
import pathlib

import pytest

from saev_ops.jobs import SlurmSpec, sbatch_text
from saev_ops.sweeps.status import SLURM_STATES, parse_sacct

DATA = pathlib.Path(__file__).parent / "data"


def test_recorded_sacct_output_parses_to_states() -> None:
    """`sacct -X -n -P -o JobID,State` on the test cluster: an array with completed, failed, cancelled and running
    tasks, a running plain job, and a pending array range."""
    states = parse_sacct((DATA / "sacct_recorded.txt").read_text())
    assert states == {"2": "RUNNING", "1_0": "COMPLETED", "1_1": "FAILED", "1_2": "CANCELLED", "1_3": "RUNNING",
                      "1_4": "RUNNING", "1_5": "RUNNING", "8_0": "COMPLETED", "8_2": "PENDING", "8_3": "PENDING",
                      "8_4": "PENDING"}  # a pending range: each of its tasks
    assert [SLURM_STATES[states[t]][0] for t in ("1_0", "1_1", "1_2")] == ["lost", "failed", "cancelled"]
    assert "RUNNING" not in SLURM_STATES and "PENDING" not in SLURM_STATES  # live jobs are left alone


def test_sbatch_script_of_a_slurm_spec_matches_the_golden_file(tmp_path: pathlib.Path, monkeypatch) -> None:  # noqa: ANN001
    """Needs no cluster: submitit only checks that an ``srun`` is on the PATH before it writes the script, so one that
    is never run stands in where Slurm is not installed."""
    stand_in = tmp_path / "bin"
    stand_in.mkdir()
    (stand_in / "srun").write_text("#!/bin/sh\nexit 1\n")
    (stand_in / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{os.environ.get('PATH', '')}{os.pathsep}{stand_in}")
    spec = SlurmSpec(partition="debug", account="lab", qos="normal", gpus=1, cpus=4, mem_gb=12.5, time_min=90,
                     max_parallel=3)
    text = sbatch_text(spec, "saev-golden", tmp_path).replace(str(tmp_path), "FOLDER")
    golden = DATA / "sbatch_golden.sh"
    if os.environ.get("SAEV_OPS_REGEN_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text(), f"regenerate with SAEV_OPS_REGEN_GOLDEN=1 if the change is intended:\n{text}"


def fake_sacct(directory: pathlib.Path, output: pathlib.Path) -> pathlib.Path:
    """A ``sacct`` that prints a recorded output whatever it is asked (for reconciling without the cluster)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "sacct"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {directory / 'calls'}\ncat {output}\n")
    script.chmod(0o755)
    return directory


@pytest.mark.slow
def test_status_of_ten_thousand_slurm_runs_from_recorded_sacct(tmp_path: pathlib.Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 runs in 909 arrays of 11 and one plain job, all cancelled while pending (sacct recorded on the test
    cluster): one `sweep status` marks every run, in batched sacct calls."""
    from saev_ops.registry import Registry, RunQuery
    from saev_ops.sweeps.status import SACCT_BATCH, reconcile
    from tests.helpers import make_dataset

    fixture = DATA / "sacct_10000_cancelled.txt"
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    make_dataset(reg, name="d", status="complete")
    reg.get_or_create_sweep("huge", "name: huge")
    runs = reg.add_runs("d", [{"i": i} for i in range(10_000)], sweep="huge")
    first = int(fixture.read_text().split("_", 1)[0])
    reg.set_many_run_fields([(r.id, {"executor": "slurm", "slurm_job_id": str(first + i // 11),
                                     "slurm_array_index": i % 11 if i < 9_999 else None})
                             for i, (r, _) in enumerate(runs)])
    bin_dir = fake_sacct(tmp_path / "bin", fixture)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    changes = reconcile(reg, "huge")
    assert len(changes) == 10_000 and {c.new for c in changes} == {"cancelled"}
    assert {r.run.status for r in reg.list_runs(RunQuery(sweep="huge"))} == {"cancelled"}
    calls = (bin_dir / "calls").read_text().splitlines()
    assert len(calls) == -(-910 // SACCT_BATCH)  # 910 job ids in batches
    assert reconcile(reg, "huge") == []  # nothing left to change


def test_the_glue_tests_pass_without_slurm_on_the_path(tmp_path: pathlib.Path) -> None:
    """The README's test command ends green where Slurm is not installed: this file's tests run in a child whose PATH
    has no Slurm command."""
    import shutil
    import subprocess
    import sys

    slurm = {"srun", "sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo", "salloc"}
    dirs, shadow = [], tmp_path / "bin"  # a folder that holds Slurm's commands is replaced by links to the others
    shadow.mkdir()
    for d in (pathlib.Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p):
        if not any((d / c).exists() for c in slurm):
            dirs.append(str(d))
            continue
        for f in d.iterdir() if d.is_dir() else ():
            if f.name not in slurm and not (shadow / f.name).exists():
                (shadow / f.name).symlink_to(f)
    env = {**os.environ, "PATH": os.pathsep.join([*dirs, str(shadow)])}
    assert all(shutil.which(c, path=env["PATH"]) is None for c in slurm)
    root = pathlib.Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "pytest", str(pathlib.Path(__file__)), "-q", "-p", "no:cacheprovider",
                          "-k", "not without_slurm", "--basetemp", str(tmp_path / "t")],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
