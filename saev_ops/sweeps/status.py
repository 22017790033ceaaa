"""``sweep status`` / ``sweep cancel``: reconcile the registry with Slurm accounting and heartbeats."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
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


SACCT_BATCH = 200
"""Job ids per ``sacct`` call: a sweep of 10,000 runs in arrays of 11 is 910 jobs, 5 calls."""
_ARRAY_RANGE = re.compile(r"^(\d+)_\[([0-9,\-]+)(?:%\d+)?\]$")


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """State per ``JOBID`` or ``JOBID_INDEX`` from ``sacct -X`` (allocation lines only), in calls of
    :data:`SACCT_BATCH` job ids."""
    if not job_ids:
        return {}
    if shutil.which("sacct") is None:
        raise errors.ConfigError("sacct is not on PATH: cannot reconcile Slurm jobs from this machine")
    ids = sorted(set(job_ids))
    out: dict[str, str] = {}
    for start in range(0, len(ids), SACCT_BATCH):
        part = ids[start:start + SACCT_BATCH]
        res = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(part)],
                             capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise errors.ClusterError(f"sacct failed (exit {res.returncode}) on jobs {part[0]}..{part[-1]}: "
                                      f"{res.stderr.strip()}")
        out.update(parse_sacct(res.stdout))
    return out


def parse_sacct(text: str) -> dict[str, str]:
    """``sacct -X -n -P -o JobID,State`` lines as ``{JOBID or JOBID_INDEX: STATE}``; the state's first word only
    (``CANCELLED by 0`` -> ``CANCELLED``). A line for array tasks that never started (``8_[2-4,7%1]``, pending or
    cancelled while pending) gives each of its tasks that state."""
    out = {}
    for line in text.splitlines():
        if "|" in line:
            jid, state = line.split("|", 1)
            jid, first = jid.strip(), state.split()[0] if state.strip() else ""
            m = _ARRAY_RANGE.match(jid)
            if m is None:
                out[jid] = first
                continue
            for part in m.group(2).split(","):
                lo, _, hi = part.partition("-")
                for i in range(int(lo), int(hi or lo) + 1):
                    out.setdefault(f"{m.group(1)}_{i}", first)
    return out


def _task_id(run: RunRecord) -> str:
    return f"{run.slurm_job_id}_{run.slurm_array_index}" if run.slurm_array_index is not None else str(run.slurm_job_id)


def reconcile(registry: Registry, sweep: str, *, grace_s: float = 300.0) -> list[Change]:
    """Mark runs whose Slurm job died (cancelled, time-out, out of memory, node failure) or whose heartbeat went
    silent. Returns what changed. One registry read, ``sacct`` in batches, one transaction for every change (a run
    that reported meanwhile keeps its own status)."""
    rows = registry.list_runs(RunQuery(sweep=sweep, statuses=("queued", "running")))
    slurm_runs = [r.run for r in rows if r.run.executor == "slurm" and r.run.slurm_job_id]
    states = sacct_states([r.slurm_job_id for r in slurm_runs if r.slurm_job_id])
    planned: dict[int, tuple[RunRecord, RunStatus, str]] = {}
    for run in slurm_runs:
        state = states.get(_task_id(run), "")
        if state in SLURM_STATES:
            new, reason = SLURM_STATES[state]
            if state == "FAILED":
                reason = f"{reason}; see the job's stderr in the sweep's submitit folder"
            planned[run.id] = (run, new, reason)
    here = socket.gethostname()
    for row in rows:  # a local job's process that is gone will never report: no need to wait for its heartbeat
        run = row.run
        if (run.executor == "local" and run.status == "running" and run.local_pid and run.host == here
                and run.id not in planned and not _is_local_job(run.local_pid)):
            planned[run.id] = (run, "lost", f"its local job (process {run.local_pid}) ended without reporting this run")
    if any(r.run.status == "running" for r in rows):
        ours = {r.run.id for r in rows}
        for run in registry.stale_running_runs(grace_s):
            if run.id in ours and run.id not in planned:
                planned[run.id] = (run, "lost", f"no heartbeat for more than {grace_s:.0f} s")
    done = registry.transition_runs_if([(rid, ("queued", "running"), new, {"error": reason})
                                        for rid, (_, new, reason) in planned.items()])
    return [Change(rid, planned[rid][0].status, after, planned[rid][2] if before in ("queued", "running")
                   else "already updated by the job") for rid, before, after in done]


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
