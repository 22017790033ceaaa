"""Launching work through submitit: one schema for Slurm resources, one place that builds executors.

Executors: ``debug`` runs jobs in this process; ``local`` starts one background process on this machine that runs the
jobs one after another; ``slurm`` submits job arrays (``max_parallel`` tasks at a time). Slurm refuses an array whose
task index reaches ``MaxArraySize`` (1001 by default, often less), and submitit does not split arrays: saev-ops submits
chunks of at most ``MaxArraySize`` tasks, in lanes that keep ``max_parallel`` tasks in flight in all (each chunk after
the first ``max_parallel`` waits for the previous chunk of its lane: ``--dependency=afterany``). Everything submitted
is a plain picklable spec plus a callable from :mod:`saev_ops.train` or :mod:`saev_ops.record`.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import logging
import multiprocessing
import pathlib
import re
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from saev_ops import errors, host
from saev_ops.logs import configure
from saev_ops.paths import job_logs_root
from saev_ops.schema import Schema, parse_pairs

log = logging.getLogger(__name__)
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default


class SlurmSpec(Schema):
    """Slurm resources of a job: the only place Slurm options are named. ``resources:`` in grid.yaml extends it;
    ``--slurm KEY=VALUE`` parses into it."""

    partition: str | None = None
    """Slurm partition (default: the cluster's)."""
    account: str | None = None
    """Slurm account to charge."""
    qos: str | None = None
    """Slurm quality of service."""
    gpus: int = Field(0, ge=0)
    """GPUs per job."""
    cpus: int = Field(2, gt=0)
    """CPUs per job."""
    mem_gb: float = Field(8.0, gt=0)
    """Memory per job, in GB."""
    time_min: int = Field(60, gt=0)
    """Time limit per job, in minutes."""
    max_parallel: int = Field(8, gt=0)
    """Array tasks running at once."""

    @classmethod
    def from_pairs(cls, pairs: Sequence[str]) -> SlurmSpec:
        """``--slurm KEY=VALUE`` options, typed and checked by this schema (every problem in one error)."""
        spec = parse_pairs(cls, tuple(pairs), "--slurm")
        assert isinstance(spec, SlurmSpec)
        return spec

    def parameters(self, name: str) -> dict[str, Any]:
        """submitit ``update_parameters`` keywords for the Slurm executor."""
        params: dict[str, Any] = {"name": name, "timeout_min": self.time_min, "mem_gb": self.mem_gb,
                                  "cpus_per_task": self.cpus, "slurm_array_parallelism": self.max_parallel}
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        for key in ("partition", "account", "qos"):
            if getattr(self, key):
                params[f"slurm_{key}"] = getattr(self, key)
        return params


def sbatch_text(slurm: SlurmSpec, name: str, folder: pathlib.Path) -> str:
    """The batch script submitit writes for one job with these resources (what ``sbatch`` receives)."""
    import submitit

    ex = submitit.AutoExecutor(folder=str(pathlib.Path(folder) / "%j"), cluster="slurm")
    ex.update_parameters(**slurm.parameters(name))
    inner = ex._executor
    assert isinstance(inner, submitit.SlurmExecutor)  # cluster="slurm" above
    return inner._make_submission_file_text("python -u -m submitit.core._submit", "UID")


@dataclasses.dataclass(frozen=True)
class ArrayChunk:
    """Calls ``start:stop`` as one array of ``parallelism`` tasks at a time, after chunk ``after`` (an index into the
    plan) ends."""

    start: int
    stop: int
    parallelism: int
    after: int | None


def plan_arrays(n: int, max_array_size: int, max_parallel: int) -> list[ArrayChunk]:
    """Chunks of at most ``max_array_size`` calls (indices 0..max_array_size-1) in ``min(chunks, max_parallel)`` lanes:
    lane parallelisms sum to ``max_parallel``, and a lane's chunks run one after another."""
    size = max(1, max_array_size)
    bounds = [(a, min(n, a + size)) for a in range(0, n, size)]
    lanes = max(1, min(len(bounds), max_parallel))
    share = [max_parallel // lanes + (1 if j < max_parallel % lanes else 0) for j in range(lanes)]
    return [ArrayChunk(a, b, share[i % lanes], i - lanes if i >= lanes else None)
            for i, (a, b) in enumerate(bounds)]


def max_array_size() -> int:
    """The cluster's ``MaxArraySize`` (``scontrol show config``); Slurm's default 1001 when it cannot be read."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot read MaxArraySize from `scontrol show config` (%s); assuming Slurm's default %d", exc,
                    DEFAULT_MAX_ARRAY_SIZE)
        return DEFAULT_MAX_ARRAY_SIZE
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    if m is None:
        log.warning("no MaxArraySize in `scontrol show config`; assuming Slurm's default %d", DEFAULT_MAX_ARRAY_SIZE)
        return DEFAULT_MAX_ARRAY_SIZE
    return int(m.group(1))


class PartialSubmissionError(errors.ClusterError):
    """sbatch refused a chunk: ``submitted`` holds (job id, array index) of the calls submitted before it, in order."""

    def __init__(self, message: str, submitted: list[tuple[str | None, int | None]]) -> None:
        super().__init__(message)
        self.submitted = submitted


def _run_all(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """A local job's calls, one after another. submitit's local controller makes its folder template literally (an
    empty ``%j`` folder beside the jobs' own) before it starts this; it goes here, where it surely exists."""
    import submitit

    with contextlib.suppress(OSError, RuntimeError):  # not empty, gone already, or not under submitit
        (pathlib.Path(submitit.JobEnvironment().paths.folder).parent / "%j").rmdir()
    return [c() for c in calls]


def submit(kind: str, folder: pathlib.Path, name: str, calls: Sequence[Callable[[], Any]],
           slurm: SlurmSpec | None = None) -> list[tuple[str | None, int | None]]:
    """Submit ``calls``; returns (job id, array index) per call (None for debug, the process id for local)."""
    import submitit

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "debug":
        # in this process, one after another; not submitit's DebugExecutor, which stops at a (Pdb) prompt on failure
        for i, c in enumerate(calls):
            try:
                c()
            except errors.SaevOpsError:
                raise
            except Exception as exc:
                raise errors.JobFailedError(f"job {i + 1} of {len(calls)} ({name}) failed: "
                                            f"{type(exc).__name__}: {exc}") from exc
        return [(None, None)] * len(calls)
    if kind == "local":
        local = submitit.LocalExecutor(folder=str(folder / "%j"))
        local.update_parameters(timeout_min=(slurm or SlurmSpec()).time_min * max(1, len(calls)))
        job = local.submit(_run_all, list(calls))
        return [(str(job.job_id), None)] * len(calls)
    if kind == "slurm":
        return _submit_slurm(folder, name, calls, slurm or SlurmSpec())
    raise errors.ConfigError(f"executor must be local, debug or slurm, got {kind!r}")


def _submit_slurm(folder: pathlib.Path, name: str, calls: Sequence[Callable[[], Any]],
                  spec: SlurmSpec) -> list[tuple[str | None, int | None]]:
    import submitit

    plan = plan_arrays(len(calls), max_array_size() if len(calls) > 1 else 1, spec.max_parallel)
    out: list[tuple[str | None, int | None]] = []
    chunk_ids: list[str] = []
    for i, chunk in enumerate(plan):
        ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm")
        ex.update_parameters(**spec.parameters(name))
        ex.update_parameters(slurm_array_parallelism=chunk.parallelism)
        if chunk.after is not None:
            ex.update_parameters(slurm_dependency=f"afterany:{chunk_ids[chunk.after]}")
        try:
            with ex.batch():
                jobs = [ex.submit(c) for c in calls[chunk.start:chunk.stop]]
        except Exception as exc:  # sbatch refused it (QOS limits, MaxSubmitJobs, a bad option): say what went in
            done = ", ".join(f"{cid} (calls {c.start}-{c.stop - 1})" for cid, c in zip(chunk_ids, plan, strict=False))
            raise PartialSubmissionError(
                f"sbatch refused array chunk {i + 1} of {len(plan)} (calls {chunk.start}-{chunk.stop - 1}): "
                f"{type(exc).__name__}: {str(exc).strip()[:2000]}; submitted before it: {done or 'nothing'}",
                out) from exc
        for j in jobs:
            base, _, idx = str(j.job_id).partition("_")
            out.append((base, int(idx) if idx else None))
        chunk_ids.append(str(out[-1][0]))
        if len(plan) > 1:
            log.info("array chunk %d of %d: job %s, calls %d-%d, %d at a time%s", i + 1, len(plan), chunk_ids[-1],
                     chunk.start, chunk.stop - 1, chunk.parallelism,
                     f", after {chunk_ids[chunk.after]}" if chunk.after is not None else "")
    return out


class Job:
    """A job that runs its work in the job's process (``run``, with logging configured) and, preempted or timed out
    on Slurm, is submitted again as it is (submitit's ``checkpoint`` protocol): every job kind resumes from what it
    left on disk, so the same job object is the whole state. Each kind lives beside its work
    (:mod:`saev_ops.record.jobs`, :mod:`saev_ops.infer.jobs`, :class:`saev_ops.train.TrainJob`)."""

    def __call__(self) -> Any:
        configure()
        return self.run()

    def run(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _share_cores(n_processes: int) -> None:
    """Each of ``n_processes`` torch processes takes its share of the cores (not all of them each)."""
    import torch

    torch.set_num_threads(max(1, host.usable_cpus() // n_processes))


def run_in_processes(name: str, calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` at once, one process each on this machine (spawned: no state shared with this one), and wait
    for all of them. Every call runs to its end even when another fails; then a failure raises JobFailedError
    naming each failed call."""

    ctx = multiprocessing.get_context("spawn")
    n = max(1, len(calls))
    with cf.ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_share_cores, initargs=(n,)) as pool:
        futures = [pool.submit(c) for c in calls]
        cf.wait(futures)
    failed = [(i, f.exception()) for i, f in enumerate(futures) if f.exception() is not None]
    if failed:
        raise errors.JobFailedError(f"{len(failed)} of {len(calls)} jobs of {name} failed: "
                                    + "; ".join(f"job {i}: {type(e).__name__}: {e}" for i, e in failed))
    return [f.result() for f in futures]


def submit_slurm_job(kind: str, name: str, call: Callable[[], Any], slurm: SlurmSpec,
                     folder: pathlib.Path | None = None) -> tuple[str, pathlib.Path]:
    """Submit one job of ``kind`` (record, infer) to Slurm; returns its job id and its log folder
    (default ``$SAEV_OPS_HOME/jobs/KIND/JOB_ID``)."""

    folder = pathlib.Path(folder) if folder else job_logs_root(kind)
    ((job_id, _),) = submit("slurm", folder, f"{kind}-{name}", [call], slurm)
    return str(job_id), folder / str(job_id)
