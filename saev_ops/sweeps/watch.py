"""``sweep watch``: one snapshot of a sweep's runs as a table (status, step of n, elapsed, rate, ETA, last metrics and
held-out metrics when there are any), and where the job logs are, for a live view."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib
from typing import Any

from saev_ops import paths
from saev_ops.progress import MIN_RATE_S, duration
from saev_ops.registry import Registry, RunQuery, RunRow
from saev_ops.registry.models import utcnow
from saev_ops.sae.config import ARCHS, sparsity_field

ACTIVE = ("queued", "running")
COLUMNS = ("run", "sae", "status", "step", "elapsed", "patches/s", "eta")
METRICS = ("nmse", "l0", "dead_frac")
HELD_OUT = ("val/nmse", "val/l0")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    counts: dict[str, int]
    logs: tuple[str, ...] = ()
    """The log folders of the jobs of runs still queued or running."""

    @property
    def active(self) -> bool:
        """Whether any run may still change (queued or running)."""
        return any(self.counts.get(s, 0) for s in ACTIVE)

    def headline(self, sweep: str) -> str:
        return f"{sweep}: " + ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))


def _sae(config: dict[str, Any]) -> str:
    sae = config.get("sae", {})
    k = f" k={sae['k']}" if sae.get("arch") in ARCHS and sparsity_field(sae["arch"]) == "k" else ""
    return f"{sae.get('arch', '?')} {sae.get('d_sae', '?')}{k} lr={config.get('lr', '?')}"


def _timing(r: RunRow, step: int | None, n_steps: int | None, now: dt.datetime) -> tuple[Any, Any, Any]:
    """(elapsed, patches/s, ETA) of a run from its start; rates only past a second of work and a first step."""
    started = r.run.started_at
    if started is None:
        return None, None, None
    elapsed = ((r.run.ended_at or now) - started).total_seconds()
    train = r.run.config.get("train") or {}
    batch = int(train.get("batch_size", 0) or 0)
    if not step or elapsed < MIN_RATE_S or not batch:
        return duration(elapsed), None, None
    steps_per_s = step / elapsed
    eta = duration((n_steps - step) / steps_per_s) if n_steps and r.run.status == "running" else None
    return duration(elapsed), round(steps_per_s * batch), eta


def _log_folder(r: RunRow) -> str | None:
    """Where the job of a queued or running run logs: its submitit folder under the runs' root."""
    if r.run.status not in ACTIVE or not r.run.run_dir:
        return None
    job = r.run.slurm_job_id or (str(r.run.local_pid) if r.run.local_pid else None)
    if job is None:
        return None
    if r.run.slurm_array_index is not None:
        job = f"{job}_{r.run.slurm_array_index}"
    return str(paths.submitit_dir(pathlib.Path(r.run.run_dir).parent) / job)


def snapshot(registry: Registry, sweep: str, rows: list[RunRow] | None = None) -> Snapshot:
    """The sweep's table; ``rows``: its runs when the caller has read them already (every run of the sweep)."""
    rows = registry.list_runs(RunQuery(sweep=sweep)) if rows is None else rows
    steps = registry.last_steps([r.run.id for r in rows])
    held_out = tuple(k for k in HELD_OUT if any(k in r.summary for r in rows))
    now = utcnow()
    out: list[tuple[Any, ...]] = []
    counts: dict[str, int] = {}
    for r in rows:
        train = r.run.config.get("train", {})
        n_steps = max(1, int(train.get("n_tokens", 0)) // max(1, int(train.get("batch_size", 1)))) if train else None
        step = steps.get(r.run.id)
        out.append((r.run.id, _sae(r.run.config), r.run.status,
                    f"{step or 0}/{n_steps}" if n_steps else (step or ""), *_timing(r, step, n_steps, now),
                    *(r.summary.get(k) for k in (*METRICS, *held_out))))
        counts[r.run.status] = counts.get(r.run.status, 0) + 1
    logs = tuple(dict.fromkeys(f for f in map(_log_folder, rows) if f))
    return Snapshot((*COLUMNS, *METRICS, *held_out), out, counts, logs)
