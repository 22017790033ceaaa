"""``sweep status`` / ``sweep cancel``: reconcile the registry with Slurm accounting and heartbeats."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

from saev_ops import errors
from saev_ops.registry import Registry, RunQuery, RunRecord

# sacct state -> (registry status, reason)
SLURM_STATES = {
    "CANCELLED": ("cancelled", "cancelled in Slurm"),
    "TIMEOUT": ("failed", "Slurm time limit reached"),
    "OUT_OF_MEMORY": ("failed", "out of memory (Slurm)"),
    "NODE_FAIL": ("lost", "node failure (Slurm)"),
    "BOOT_FAIL": ("lost", "node boot failure (Slurm)"),
    "DEADLINE": ("failed", "Slurm deadline reached"),
    "FAILED": ("failed", "Slurm job failed"),
    "COMPLETED": ("lost", "Slurm job completed without reporting this run as done"),
}


@dataclasses.dataclass(frozen=True)
class Change:
    run_id: int
    old: str
    new: str
    reason: str


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """State per ``JOBID`` or ``JOBID_INDEX`` from ``sacct -X`` (allocation lines only)."""
    if not job_ids:
        return {}
    if shutil.which("sacct") is None:
        raise errors.ConfigError("sacct is not on PATH: cannot reconcile Slurm jobs from this machine")
    res = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(sorted(set(job_ids)))],
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise errors.RegistryError(f"sacct failed: {res.stderr.strip()}")
    out = {}
    for line in res.stdout.splitlines():
        if "|" in line:
            jid, state = line.split("|", 1)
            out[jid.strip()] = state.split()[0] if state.strip() else ""
    return out


def _task_id(run: RunRecord) -> str:
    return f"{run.slurm_job_id}_{run.slurm_array_index}" if run.slurm_array_index is not None else str(run.slurm_job_id)


def reconcile(registry: Registry, sweep: str, *, grace_s: float = 300.0) -> list[Change]:
    """Mark runs whose Slurm job died (cancelled, time-out, out of memory, node failure) or whose heartbeat went
    silent. Returns what changed."""
    rows = registry.list_runs(RunQuery(sweep=sweep, statuses=("queued", "running")))
    slurm_runs = [r.run for r in rows if r.run.executor == "slurm" and r.run.slurm_job_id]
    states = sacct_states([r.slurm_job_id for r in slurm_runs])  # type: ignore[misc]
    changes = []
    for run in slurm_runs:
        state = states.get(_task_id(run), "")
        if state in SLURM_STATES:
            new, reason = SLURM_STATES[state]
            if state == "FAILED":
                reason = f"{reason}; see the job's stderr in the sweep's submitit folder"
            changes.append(_apply(registry, run, new, reason))
    stale = {r.id for r in registry.stale_running_runs(grace_s)}
    for row in rows:
        run = row.run
        if run.id in stale and not any(c.run_id == run.id for c in changes):
            changes.append(_apply(registry, run, "lost", f"no heartbeat for more than {grace_s:.0f} s"))
    return changes


def _apply(registry: Registry, run: RunRecord, new: str, reason: str) -> Change:
    current = registry.get_run(run.id)
    if current.status not in ("queued", "running"):
        return Change(run.id, run.status, current.status, "already updated by the job")
    registry.transition_run(run.id, new, error=reason)
    return Change(run.id, run.status, new, reason)


def cancel(registry: Registry, sweep: str) -> list[int]:
    """scancel the sweep's Slurm jobs and mark its queued/running runs cancelled."""
    rows = registry.list_runs(RunQuery(sweep=sweep, statuses=("queued", "running")))
    jobs = sorted({r.run.slurm_job_id for r in rows if r.run.executor == "slurm" and r.run.slurm_job_id})
    if jobs and shutil.which("scancel"):
        subprocess.run(["scancel", *jobs], capture_output=True, text=True, timeout=60)
    out = []
    for r in rows:
        registry.transition_run(r.run.id, "cancelled", error="cancelled with `saev-ops sweep cancel`")
        out.append(r.run.id)
    return out
