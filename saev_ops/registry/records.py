"""Frozen records returned by :class:`saev_ops.registry.Registry`. ORM rows never leave the registry package."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from saev_ops.registry import models
from saev_ops.registry.models import DatasetStatus, RunStatus
from saev_ops.registry.params import params_of


def from_columns(cls: type[Any], row: models.Base, **converted: Any) -> Any:
    """A record of ``cls`` from an ORM row: each field is the row's column of that name, or ``converted``'s value for
    the fields that need one (a tuple for a list, a copy of a JSON bag, a status checked against its choices). A new
    column is one field on the record (``tests/test_registry.py`` checks that the two agree)."""
    return cls(**{f.name: converted[f.name] if f.name in converted else getattr(row, f.name)
                  for f in dataclasses.fields(cls)})


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
        record: DatasetRecord = from_columns(cls, m, status=models.as_dataset_status(m.status), layers=tuple(m.layers),
                                             extra=dict(m.extra or {}))
        return record


@dataclasses.dataclass(frozen=True)
class SweepRecord:
    id: int
    name: str
    grid_yaml: str
    created_at: dt.datetime

    @classmethod
    def from_model(cls, m: models.SweepModel) -> SweepRecord:
        record: SweepRecord = from_columns(cls, m)
        return record


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
        record: RunRecord = from_columns(cls, m, config=dict(m.config), status=models.as_run_status(m.status))
        return record


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
        record: OutputRecord = from_columns(cls, m, extra=dict(m.extra or {}), metrics={
            k: getattr(m, k) for k in OUTPUT_METRICS if getattr(m, k) is not None})
        return record


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
        record: EvaluationRecord = from_columns(cls, m, extra=dict(m.extra or {}))
        return record

    def figures(self) -> dict[str, Any]:
        """Fidelity, KL and probe accuracies, each replaced where it is missing by the reason in a word or two, in
        parentheses (an empty cell would say nothing): what `eval`, `runs show` and the explorer show."""
        why = self.extra.get("missing") or {}

        def or_why(value: float | None, key: str) -> float | str | None:
            return value if value is not None else f"({why[key]})" if key in why else None

        return {"fidelity": or_why(self.fidelity, "fidelity"), "kl": or_why(self.kl, "kl"),
                "probe_clean": or_why(self.probe_clean, "probe"), "probe_spliced": or_why(self.probe_spliced, "probe")}
