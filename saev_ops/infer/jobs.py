"""Inference jobs (submitit callables): a whole pass, or one part of a pass split across jobs."""

from __future__ import annotations

from typing import Any

from saev_ops.infer.run import infer_part, run_inference
from saev_ops.jobs import Job


class InferJob(Job):
    """An inference pass (:class:`saev_ops.infer.InferSpec`); returns the output ids. Submitted again, outputs already
    registered are kept and the rest computed again."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def run(self) -> list[int]:
        return [o.id for o in run_inference(self.spec)]


class InferPartJob(Job):
    """One part of an inference pass split across jobs (``infer --jobs N``); the job that finishes the last part
    joins them. Returns the output ids once joined, else None. Submitted again, the part starts again."""

    def __init__(self, spec: Any, task: int) -> None:
        self.spec, self.task = spec, task

    def run(self) -> list[int] | None:
        out = infer_part(self.spec, self.task)
        return None if out is None else [o.id for o in out]
