"""Recording jobs (submitit callables): a whole recording, or one part of a recording split across jobs."""

from __future__ import annotations

from typing import Any

from saev_ops.jobs import Job
from saev_ops.record.recorder import record_dataset, record_part
from saev_ops.registry import Registry


class RecordJob(Job):
    """A recording; the registry is opened by URL inside the job. Submitted again after preemption, it resumes the
    recording."""

    def __init__(self, db_url: str, spec: Any) -> None:
        self.db_url, self.spec = db_url, spec

    def run(self) -> str:
        return record_dataset(Registry(self.db_url), self.spec).path


class RecordPartJob(Job):
    """One part of a recording split across jobs (``datasets record --jobs N``); the job that finishes the last part
    joins them. Returns the dataset path once complete, else None. Submitted again, the part resumes after its last
    finished shard."""

    def __init__(self, db_url: str, spec: Any, task: int, n_jobs: int) -> None:
        self.db_url, self.spec, self.task, self.n_jobs = db_url, spec, task, n_jobs

    def run(self) -> str | None:
        d = record_part(Registry(self.db_url, hold_connections=False), self.spec, self.task, self.n_jobs)
        return None if d is None else d.path
