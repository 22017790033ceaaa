"""Frozen records returned by :class:`saev_ops.registry.Registry`. ORM rows never leave the registry package."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from saev_ops.registry import models
from saev_ops.registry.models import DatasetStatus, RunStatus


@dataclasses.dataclass(frozen=True)
class DatasetRecord:
    id: int
    name: str
    content_hash: str
    path: str
    status: DatasetStatus
    source_path: str | None
    model_family: str
    model_ckpt: str
    layers: tuple[int, ...]
    d_model: int
    tokens_per_example: int
    n_examples: int
    dtype: str
    extra: dict[str, Any]
    created_at: dt.datetime
    completed_at: dt.datetime | None

    @property
    def model(self) -> str:
        """The model as the user named it (``--model`` of a recording); for a directory imported from saev, saev's
        family and checkpoint, said so."""
        if self.extra.get("provenance"):
            return self.model_ckpt
        return f"{self.model_family}:{self.model_ckpt} (saev's name)"

    @classmethod
    def from_model(cls, m: models.DatasetModel) -> DatasetRecord:
        return cls(
            id=m.id,
            name=m.name,
            content_hash=m.content_hash,
            path=m.path,
            status=models.as_dataset_status(m.status),
            source_path=m.source_path,
            model_family=m.model_family,
            model_ckpt=m.model_ckpt,
            layers=tuple(m.layers),
            d_model=m.d_model,
            tokens_per_example=m.tokens_per_example,
            n_examples=m.n_examples,
            dtype=m.dtype,
            extra=dict(m.extra or {}),
            created_at=m.created_at,
            completed_at=m.completed_at,
        )


@dataclasses.dataclass(frozen=True)
class SweepRecord:
    id: int
    name: str
    grid_yaml: str
    created_at: dt.datetime

    @classmethod
    def from_model(cls, m: models.SweepModel) -> SweepRecord:
        return cls(id=m.id, name=m.name, grid_yaml=m.grid_yaml, created_at=m.created_at)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    id: int
    sweep_id: int | None
    dataset_id: int
    config: dict[str, Any]
    config_hash: str
    status: RunStatus
    executor: str | None
    slurm_job_id: str | None
    slurm_array_index: int | None
    attempts: int
    host: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    checkpoint_path: str | None
    error: str | None
    run_dir: str | None = None
    """The directory its job writes (SAE, buffered metrics); set at submission."""
    local_pid: int | None = None
    """The process running its job on the local executor (what `sweep cancel` stops)."""

    @classmethod
    def from_model(cls, m: models.RunModel) -> RunRecord:
        return cls(
            id=m.id,
            sweep_id=m.sweep_id,
            dataset_id=m.dataset_id,
            config=dict(m.config),
            config_hash=m.config_hash,
            status=models.as_run_status(m.status),
            executor=m.executor,
            slurm_job_id=m.slurm_job_id,
            slurm_array_index=m.slurm_array_index,
            attempts=m.attempts,
            host=m.host,
            created_at=m.created_at,
            started_at=m.started_at,
            ended_at=m.ended_at,
            heartbeat_at=m.heartbeat_at,
            checkpoint_path=m.checkpoint_path,
            error=m.error,
            run_dir=m.run_dir,
            local_pid=m.local_pid,
        )


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One line of ``runs list``: the run, its dataset and sweep names, and its metric summary."""

    run: RunRecord
    dataset: str
    sweep: str | None
    summary: dict[str, float]

    @property
    def params(self) -> dict[str, Any]:
        """Its hyperparameters, typed (:mod:`saev_ops.registry.params`)."""
        from saev_ops.registry.params import params_of

        return params_of(self.run.config)

    def value(self, key: str) -> Any:
        """A hyperparameter or summary metric by name (hyperparameters first: ``lr`` is the configured one)."""
        params = self.params
        if key in params:
            return params[key]
        return self.summary.get(key)


@dataclasses.dataclass(frozen=True)
class MetricPoint:
    run_id: int
    key: str
    step: int
    value: float
    time: dt.datetime


@dataclasses.dataclass(frozen=True)
class OutputRecord:
    id: int
    run_id: int
    dataset_id: int
    path: str
    n_rows: int
    n_cols: int
    nnz: int
    extra: dict[str, Any]
    created_at: dt.datetime
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    """The SAE's reconstruction metrics over this dataset (:data:`OUTPUT_METRICS`; empty for older outputs)."""

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.n_cols)

    @classmethod
    def from_model(cls, m: models.InferenceOutputModel) -> OutputRecord:
        return cls(
            id=m.id,
            run_id=m.run_id,
            dataset_id=m.dataset_id,
            path=m.path,
            n_rows=m.n_rows,
            n_cols=m.n_cols,
            nnz=m.nnz,
            extra=dict(m.extra or {}),
            created_at=m.created_at,
            metrics={k: getattr(m, k) for k in OUTPUT_METRICS if getattr(m, k) is not None},
        )


@dataclasses.dataclass(frozen=True)
class RunDetail:
    """``runs show``: the run with its names, summary and lineage (dataset, sweep, outputs)."""

    row: RunRow
    dataset: DatasetRecord
    sweep: SweepRecord | None
    outputs: tuple[OutputRecord, ...]
    evaluations: tuple[EvaluationRecord, ...] = ()
    """``saev-ops eval`` results (downstream fidelity), one per (dataset, kind)."""


OUTPUT_METRICS = ("nmse", "explained_variance", "l0", "unfired_frac", "dense_frac", "cosine", "shrinkage")


@dataclasses.dataclass(frozen=True)
class EvaluationRecord:
    id: int
    run_id: int
    dataset_id: int
    kind: str
    n_images: int
    fidelity: float | None
    kl: float | None
    probe_clean: float | None
    probe_spliced: float | None
    extra: dict[str, Any]
    created_at: dt.datetime

    @classmethod
    def from_model(cls, m: models.EvaluationModel) -> EvaluationRecord:
        return cls(id=m.id, run_id=m.run_id, dataset_id=m.dataset_id, kind=m.kind, n_images=m.n_images,
                   fidelity=m.fidelity, kl=m.kl, probe_clean=m.probe_clean, probe_spliced=m.probe_spliced,
                   extra=dict(m.extra or {}), created_at=m.created_at)

    def figures(self) -> dict[str, Any]:
        """Fidelity, KL and probe accuracies, each replaced where it is missing by the reason in a word or two, in
        parentheses (an empty cell would say nothing): what `eval`, `runs show` and the explorer show."""
        why = self.extra.get("missing") or {}

        def or_why(value: float | None, key: str) -> float | str | None:
            return value if value is not None else f"({why[key]})" if key in why else None

        return {"fidelity": or_why(self.fidelity, "fidelity"), "kl": or_why(self.kl, "kl"),
                "probe_clean": or_why(self.probe_clean, "probe"), "probe_spliced": or_why(self.probe_spliced, "probe")}
