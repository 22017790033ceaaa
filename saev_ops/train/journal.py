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
  was down from the start does not stay ``queued``;
- every line names the registry its run belongs to (:attr:`Registry.registry_id`) and the run's identity (its config
  hash): a journal of another registry (a copied runs folder, ``SAEV_OPS_DB_URL`` forgotten) is refused whole before
  anything is written, naming both registries, and a line whose run id and identity do not match a run of this
  registry (edited, forged, or of a run since removed) is skipped and reported.

This module does not import torch: ``sweep sync`` runs on a login node.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import TYPE_CHECKING, Any

from saev_ops import atomic, errors, paths
from saev_ops.registry.models import RunStatus, as_run_status

if TYPE_CHECKING:
    from saev_ops.registry import Registry

log = logging.getLogger(__name__)

JOURNAL_NAME = paths.JOURNAL_NAME
OFFSET_SUFFIX = ".offset"


def apply_transition(registry: Registry, run_id: int, status: RunStatus, **fields: Any) -> None:
    """Move a run to ``status`` the way its job does: a run that never showed ``running`` (the registry was down when
    its job started) gets that step first. A job never revives a cancelled or failed run (InvalidTransitionError);
    reruns are asked for explicitly (`saev-ops train RUN`, `sweep submit --retry-failed`), which queue them first."""
    current = registry.get_run(run_id).status
    if status in ("completed", "failed") and current in ("queued", "lost") and status != current:
        registry.transition_run(run_id, "running")
    registry.transition_run(run_id, status, **fields)


class Journal:
    """Metric reports and status changes of a job's runs, to the registry or (when it is unreachable) to files."""

    def __init__(self, registry: Registry | None, run_dirs: dict[int, pathlib.Path], *, registry_id: str,
                 identities: dict[int, str]) -> None:
        """``registry_id``: the registry the runs belong to; ``identities``: each run's identity (config hash)."""
        self.registry = registry
        self.run_dirs = run_dirs
        self.registry_id = registry_id
        self.identities = identities
        self.buffered = 0
        self._outage = registry is None

    def log(self, run_id: int, step: int, values: dict[str, float]) -> None:
        points = [(k, step, v) for k, v in values.items()]
        registry = self.registry
        if registry is not None and self._try(lambda: registry.log_metrics(run_id, points),
                                              f"metrics of run {run_id} at step {step}"):
            return
        self._append(run_id, {"step": step, "values": values})

    def transition(self, run_id: int, status: RunStatus, **fields: Any) -> None:
        """Record a status change; an invalid transition (say, the run was cancelled meanwhile) still raises."""
        registry = self.registry
        if registry is not None and self._try(lambda: apply_transition(registry, run_id, status, **fields),
                                              f"run {run_id} -> {status}"):
            return
        self._append(run_id, {"status": status, "fields": fields})

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
        owner = {"registry": self.registry_id, "run_id": run_id, "identity": self.identities[run_id]}
        line = (json.dumps({**owner, **record}) + "\n").encode()
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


@dataclasses.dataclass(frozen=True)
class _Line:
    lineno: int
    """Counted from the recorded offset (:meth:`_Pending.where` names the file's line)."""
    run_id: int
    record: dict[str, Any]


@dataclasses.dataclass
class _Pending:
    """The complete lines of one journal after its recorded offset."""

    path: pathlib.Path
    start: int
    end: int
    lines: list[_Line] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    _base: int | None = None

    @property
    def offset_path(self) -> pathlib.Path:
        return _offset_path(self.path)

    def where(self, lineno: int) -> str:
        """``FILE:LINE``; the lines before the offset are counted only when a line is named."""
        if self._base is None:
            self._base = _lines_before(self.path, self.start)
        return f"{self.path}:{self._base + lineno}"


def _offset_path(journal: pathlib.Path) -> pathlib.Path:
    """Where the byte offset of ``journal``'s lines already stored is kept, beside it."""
    return journal.with_name(journal.name + OFFSET_SUFFIX)


def _read_new(path: pathlib.Path) -> _Pending:
    offset_path = _offset_path(path)
    try:
        start = int(offset_path.read_text().strip()) if offset_path.exists() else 0
    except ValueError:
        raise errors.DataError(f"{offset_path}: expected a byte offset, found {offset_path.read_text()[:40]!r}; "
                               "remove it to ingest the whole file again (points are stored once)") from None
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read()
    end = data.rfind(b"\n") + 1  # a last line without its newline is still being written, or torn: next time
    out = _Pending(path, start, start + end)
    for lineno, raw in enumerate(data[:end].splitlines(), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            run_id = int(rec["run_id"])
            if "status" in rec:
                rec["status"], rec["fields"] = as_run_status(str(rec["status"])), dict(rec.get("fields") or {})
            else:
                step = int(rec["step"])
                rec["points"] = [(str(k), step, float(v)) for k, v in rec["values"].items()]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            out.problems.append(f"{out.where(lineno)}: not a journal record ({type(exc).__name__}: {exc}); skipped")
            continue
        out.lines.append(_Line(lineno, run_id, rec))
    return out


def _refuse_foreign(registry: Registry, pending: list[_Pending]) -> None:
    """Refuse, before anything is written, journals whose lines name another registry."""
    mine = registry.registry_id
    foreign: dict[str, list[pathlib.Path]] = {}
    for p in pending:
        named = {ln.record.get("registry") for ln in p.lines if isinstance(ln.record.get("registry"), str)}
        for other in named - {mine, ""}:
            foreign.setdefault(str(other), []).append(p.path)
    if foreign:
        from saev_ops.registry.engine import safe_url

        what = "; ".join(f"registry {rid} ({len(fs)} journal(s), e.g. {fs[0]})" for rid, fs in foreign.items())
        raise errors.DataError(
            f"these journals belong to another registry: {what}; this is registry {mine} at "
            f"{safe_url(registry.url)}. Nothing was synced: point --db / SAEV_OPS_DB_URL at the registry the runs were "
            "trained in")


def _apply(registry: Registry, p: _Pending, identities: dict[int, str | None]) -> SyncResult:
    points = transitions = 0
    problems = list(p.problems)
    for ln in p.lines:
        rec = ln.record
        if not isinstance(rec.get("registry"), str) or not rec["registry"] or not rec.get("identity"):
            problems.append(f"{p.where(ln.lineno)}: names no registry and run identity (written by saev-ops before "
                            "journals did, or edited); skipped")
            continue
        if ln.run_id not in identities:
            try:
                identities[ln.run_id] = registry.get_run(ln.run_id).config_hash
            except errors.NotFoundError:
                identities[ln.run_id] = None
        if identities[ln.run_id] != rec["identity"]:
            mine = identities[ln.run_id]
            problems.append(f"{p.where(ln.lineno)}: run {ln.run_id} of this registry is "
                            f"{'not there' if mine is None else f'another run (identity {mine[:12]}...)'}, the line "
                            f"names identity {str(rec['identity'])[:12]}...; skipped")
            continue
        if "status" in rec:
            try:
                apply_transition(registry, ln.run_id, rec["status"], **rec["fields"])
                transitions += 1
            except (errors.InvalidTransitionError, errors.NotFoundError) as exc:
                problems.append(f"{p.where(ln.lineno)}: run {ln.run_id} -> {rec['status']} refused ({exc})")
        else:
            points += registry.log_metrics(ln.run_id, rec["points"])
    atomic.write_text(p.offset_path, str(p.end))
    return SyncResult(points, transitions, tuple(problems))


def sync_file(registry: Registry, path: pathlib.Path) -> SyncResult:
    """Ingest the complete lines of ``path`` after its recorded offset, then record the new offset."""
    return sync_files(registry, [path])


def sync_files(registry: Registry, files: list[pathlib.Path]) -> SyncResult:
    """Ingest journals: all of them are read and checked against this registry first (one of another registry
    refuses the sync, DataError), then each one's lines are applied and its offset recorded."""
    pending = [_read_new(f) for f in files]
    _refuse_foreign(registry, pending)
    identities: dict[int, str | None] = {}
    points = transitions = 0
    problems: list[str] = []
    for p in pending:
        r = _apply(registry, p, identities)
        points += r.points
        transitions += r.transitions
        problems += r.problems
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


def sync_runs_root(registry: Registry, runs_root: pathlib.Path) -> tuple[int, SyncResult]:
    """Sync every run journal under ``runs_root``; returns the number of files and the totals."""
    files = paths.run_journals(runs_root)
    return len(files), sync_files(registry, files)
