"""``sweep status`` / ``sweep cancel``: reconcile the registry with Slurm accounting and heartbeats."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

from saev_ops import errors
from saev_ops.registry import Registry, RunQuery, RunRecord
from saev_ops.registry.models import RunStatus

# sacct state -> (registry status, reason)
SLURM_STATES: dict[str, tuple[RunStatus, str]] = {
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
        raise errors.ClusterError(f"sacct failed (exit {res.returncode}): {res.stderr.strip()}")
    return parse_sacct(res.stdout)


def parse_sacct(text: str) -> dict[str, str]:
    """``sacct -X -n -P -o JobID,State`` lines as ``{JOBID or JOBID_INDEX: STATE}``; the state's first word only
    (``CANCELLED by 0`` -> ``CANCELLED``); pending array ranges (``8_[2-4%1]``) keep their own key."""
    out = {}
    for line in text.splitlines():
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
    states = sacct_states([r.slurm_job_id for r in slurm_runs if r.slurm_job_id])
    changes = []
    for run in slurm_runs:
        state = states.get(_task_id(run), "")
        if state in SLURM_STATES:
            new, reason = SLURM_STATES[state]
            if state == "FAILED":
                reason = f"{reason}; see the job's stderr in the sweep's submitit folder"
            changes.append(_apply(registry, run, new, reason))
    here = socket.gethostname()
    for row in rows:  # a local job's process that is gone will never report: no need to wait for its heartbeat
        run = row.run
        if (run.executor == "local" and run.status == "running" and run.local_pid and run.host == here
                and not _is_local_job(run.local_pid)):
            changes.append(_apply(registry, run, "lost", f"its local job (process {run.local_pid}) ended without "
                                                          "reporting this run"))
    stale = {r.id for r in registry.stale_running_runs(grace_s)}
    for row in rows:
        run = row.run
        if run.id in stale and not any(c.run_id == run.id for c in changes):
            changes.append(_apply(registry, run, "lost", f"no heartbeat for more than {grace_s:.0f} s"))
    return changes


def _apply(registry: Registry, run: RunRecord, new: RunStatus, reason: str) -> Change:
    current = registry.get_run(run.id)
    if current.status not in ("queued", "running"):
        return Change(run.id, run.status, current.status, "already updated by the job")
    registry.transition_run(run.id, new, error=reason)
    return Change(run.id, run.status, new, reason)


@dataclasses.dataclass(frozen=True)
class CancelResult:
    runs: tuple[int, ...]
    """Runs marked cancelled."""
    slurm_jobs: tuple[str, ...]
    """Slurm jobs scancel accepted (already finished ones included)."""
    local_processes: tuple[int, ...]
    """Local-executor processes stopped (with their children)."""


def cancel(registry: Registry, sweep: str) -> CancelResult:
    """Stop the sweep's work on every executor, then mark its queued and running runs cancelled.

    Slurm: ``scancel`` on its jobs, exit status checked (a job Slurm no longer knows is already over). Local: the
    executor's process and all its descendants are killed (submitit's job process ignores SIGTERM, so a signal to the
    controller alone leaves the training running). Nothing is marked cancelled unless its work was stopped.
    """
    rows = registry.list_runs(RunQuery(sweep=sweep, statuses=("queued", "running")))
    runs = [r.run for r in rows]
    jobs = sorted({r.slurm_job_id for r in runs if r.executor == "slurm" and r.slurm_job_id})
    if jobs:
        _scancel(jobs)
    pids = sorted({r.local_pid for r in runs if r.executor == "local" and r.local_pid})
    stopped = [pid for pid in pids if stop_local_job(pid)]
    for run in runs:
        try:
            registry.transition_run(run.id, "cancelled", error="cancelled with `saev-ops sweep cancel`")
        except errors.InvalidTransitionError:
            pass  # it ended meanwhile (completed or failed): its own status stands
    return CancelResult(tuple(r.id for r in runs), tuple(jobs), tuple(stopped))


def _scancel(jobs: list[str]) -> None:
    if shutil.which("scancel") is None:
        raise errors.ClusterError(f"scancel is not on PATH: cannot cancel Slurm jobs {', '.join(jobs)} from this "
                                  "machine; run `saev-ops sweep cancel` where Slurm's commands are")
    res = subprocess.run(["scancel", *jobs], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        unknown = all("Invalid job id" in line for line in res.stderr.strip().splitlines() if line.strip())
        if not unknown:
            raise errors.ClusterError(f"scancel {' '.join(jobs)} failed (exit {res.returncode}): "
                                      f"{res.stderr.strip()}; no run was marked cancelled")


def stop_local_job(pid: int, grace_s: float = 5.0) -> bool:
    """Kill a local-executor job (submitit's controller ``pid``) and its descendants. False when no such process runs
    (it ended, or the pid now belongs to something else, which is left alone)."""
    if not _is_local_job(pid):
        return False
    tree = [pid, *_descendants(pid)]
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.05)
    return True


def _is_local_job(pid: int) -> bool:
    """Whether ``pid`` is a live submitit local-executor process (not an ended one, nor a reused pid)."""
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"submitit" in cmdline and _alive(pid)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
