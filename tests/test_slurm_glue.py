"""The Slurm glue without a cluster: sacct output recorded on the CI cluster, and the sbatch script a SlurmSpec makes
(a golden file; SAEV_OPS_REGEN_GOLDEN=1 rewrites it after a deliberate change, e.g. a new submitit)."""

from __future__ import annotations

import os
import pathlib

from saev_ops.jobs import SlurmSpec, sbatch_text
from saev_ops.sweeps.status import SLURM_STATES, parse_sacct

DATA = pathlib.Path(__file__).parent / "data"


def test_recorded_sacct_output_parses_to_states() -> None:
    """`sacct -X -n -P -o JobID,State` on the test cluster: an array with completed, failed, cancelled and running
    tasks, a running plain job, and a pending array range."""
    states = parse_sacct((DATA / "sacct_recorded.txt").read_text())
    assert states == {"2": "RUNNING", "1_0": "COMPLETED", "1_1": "FAILED", "1_2": "CANCELLED", "1_3": "RUNNING",
                      "1_4": "RUNNING", "1_5": "RUNNING", "8_0": "COMPLETED", "8_[2-4%1]": "PENDING"}
    assert [SLURM_STATES[states[t]][0] for t in ("1_0", "1_1", "1_2")] == ["lost", "failed", "cancelled"]
    assert "RUNNING" not in SLURM_STATES and "PENDING" not in SLURM_STATES  # live jobs are left alone


def test_sbatch_script_of_a_slurm_spec_matches_the_golden_file(tmp_path: pathlib.Path) -> None:
    spec = SlurmSpec(partition="debug", account="lab", qos="normal", gpus=1, cpus=4, mem_gb=12.5, time_min=90,
                     max_parallel=3)
    text = sbatch_text(spec, "saev-golden", tmp_path).replace(str(tmp_path), "FOLDER")
    golden = DATA / "sbatch_golden.sh"
    if os.environ.get("SAEV_OPS_REGEN_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text(), f"regenerate with SAEV_OPS_REGEN_GOLDEN=1 if the change is intended:\n{text}"
