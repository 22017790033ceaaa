"""Where a training job's results go: the registry, or a per-run file when it is unreachable, synced later.

A job must never lose a metric point or a final status because the registry was down for a while (a PostgreSQL restart,
a network blip, a locked SQLite file on a shared file system). :class:`Journal` sends each report and each status change
to the registry; when that fails it appends the same record to ``<run_dir>/metrics.jsonl`` and logs a warning, once per
outage. ``saev-ops sweep sync`` (:func:`sync_file`) replays the file:

- it reads from the byte offset recorded in ``metrics.jsonl.offset`` up to the last complete line, so lines a running
  job appends meanwhile are read by the next sync, and a torn last line (a job killed mid-write) waits for its newline;
- the file is never renamed or truncated, and points are upserted by (run, key, step), so syncing twice, or a record
  that reached both the registry and the file, stores each point once;
- status records replay the job's transitions (running, then completed or failed), so a run trained while the registry
  was down from the start does not stay ``queued``.

This module does not import torch: ``sweep sync`` runs on a login node.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Any

from saev_ops import atomic, errors, paths
from saev_ops.registry.models import RunStatus, as_run_status

log = logging.getLogger(__name__)

JOURNAL_NAME = paths.JOURNAL_NAME
OFFSET_SUFFIX = ".offset"


def apply_transition(registry: Any, run_id: int, status: RunStatus, **fields: Any) -> None:
    """Move a run to ``status`` the way its job does: a run that never showed ``running`` (the registry was down when
    its job started) gets that step first. A job never revives a cancelled or failed run (InvalidTransitionError);
    reruns are asked for explicitly (`saev-ops train RUN`, `sweep submit --retry-failed`), which queue them first."""
    current = registry.get_run(run_id).status
    if status in ("completed", "failed") and current in ("queued", "lost") and status != current:
        registry.transition_run(run_id, "running")
    registry.transition_run(run_id, status, **fields)


class Journal:
    """Metric reports and status changes of a job's runs, to the registry or (when it is unreachable) to files."""

    def __init__(self, registry: Any, run_dirs: dict[int, pathlib.Path]) -> None:
        self.registry = registry
        self.run_dirs = run_dirs
        self.buffered = 0
        self._outage = registry is None

    def log(self, run_id: int, step: int, values: dict[str, float]) -> None:
        points = [(k, step, v) for k, v in values.items()]
        if self._try(lambda: self.registry.log_metrics(run_id, points), f"metrics of run {run_id} at step {step}"):
            return
        self._append(run_id, {"run_id": run_id, "step": step, "values": values})

    def transition(self, run_id: int, status: RunStatus, **fields: Any) -> None:
        """Record a status change; an invalid transition (say, the run was cancelled meanwhile) still raises."""
        if self._try(lambda: apply_transition(self.registry, run_id, status, **fields), f"run {run_id} -> {status}"):
            return
        self._append(run_id, {"run_id": run_id, "status": status, "fields": fields})

    def _try(self, send: Any, what: str) -> bool:
        if self.registry is None:
            return False
        try:
            send()
        except errors.RegistryError as exc:
            if not self._outage:
                log.warning("registry unreachable (%s); buffering %s and what follows to %s files; "
                            "`saev-ops sweep sync` ingests them", exc, what, JOURNAL_NAME)
            self._outage = True
            return False
        if self._outage and self.registry is not None:
            log.warning("registry reachable again; %d record(s) wait in %s files for `saev-ops sweep sync`",
                        self.buffered, JOURNAL_NAME)
            self._outage = False
        return True

    def _append(self, run_id: int, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.run_dirs[run_id] / JOURNAL_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write on an O_APPEND descriptor: lines of concurrent writers do not interleave
        finally:
            os.close(fd)
        self.buffered += 1


@dataclasses.dataclass(frozen=True)
class SyncResult:
    points: int = 0
    transitions: int = 0
    problems: tuple[str, ...] = ()
    """Lines that could not be used (``FILE:LINE: why``) and transitions the registry refused."""


def sync_file(registry: Any, path: pathlib.Path) -> SyncResult:
    """Ingest the complete lines of ``path`` after its recorded offset, then record the new offset."""
    offset_path = path.with_name(path.name + OFFSET_SUFFIX)
    try:
        start = int(offset_path.read_text().strip()) if offset_path.exists() else 0
    except ValueError:
        raise errors.DataError(f"{offset_path}: expected a byte offset, found {offset_path.read_text()[:40]!r}; "
                               "remove it to ingest the whole file again (points are stored once)") from None
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read()
    end = data.rfind(b"\n") + 1  # a last line without its newline is still being written, or torn: next time
    lineno = 0  # lines read in this sync; the file's line number is only worked out for a message
    base: list[int] = []

    def where() -> str:
        if not base:
            base.append(_lines_before(path, start))  # reads the file up to the offset: only when a line is bad
        return f"{path}:{base[0] + lineno}"

    points = transitions = 0
    problems: list[str] = []
    for raw in data[:end].splitlines():
        lineno += 1
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            run_id = int(rec["run_id"])
            if "status" in rec:
                status, fields = as_run_status(str(rec["status"])), dict(rec.get("fields") or {})
            else:
                step = int(rec["step"])
                batch = [(str(k), step, float(v)) for k, v in rec["values"].items()]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{where()}: not a journal record ({type(exc).__name__}: {exc}); skipped")
            continue
        if "status" in rec:
            try:
                apply_transition(registry, run_id, status, **fields)
                transitions += 1
            except (errors.InvalidTransitionError, errors.NotFoundError) as exc:
                problems.append(f"{where()}: run {run_id} -> {status} refused ({exc})")
        else:
            points += registry.log_metrics(run_id, batch)
    atomic.write_text(offset_path, str(start + end))
    return SyncResult(points, transitions, tuple(problems))


def _lines_before(path: pathlib.Path, offset: int) -> int:
    """Line number of the byte at ``offset`` (for messages): newlines before it."""
    n = 0
    with open(path, "rb") as fh:
        left = offset
        while left > 0 and (chunk := fh.read(min(1 << 20, left))):
            n += chunk.count(b"\n")
            left -= len(chunk)
    return n


def sync_runs_root(registry: Any, runs_root: pathlib.Path) -> tuple[int, SyncResult]:
    """Sync every run journal under ``runs_root``; returns the number of files and the totals."""
    files = paths.run_journals(runs_root)
    points = transitions = 0
    problems: list[str] = []
    for f in files:
        r = sync_file(registry, f)
        points += r.points
        transitions += r.transitions
        problems += r.problems
    return len(files), SyncResult(points, transitions, tuple(problems))
