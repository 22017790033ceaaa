"""SQLAlchemy 2 ORM models of the registry. Rows never leave :mod:`saev_ops.registry`; callers get frozen records.

Datetimes are stored as naive UTC (SQLite has no time zones, and one convention on every backend keeps comparisons
simple). Heartbeats use the database clock (see :func:`utcnow_sql`) so that skew between cluster nodes does not matter.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal, TypeVar, get_args

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.functions import FunctionElement

from saev_ops import errors
from saev_ops.registry.params import PARAMS

T = TypeVar("T")

# Status vocabularies. Kept as short strings (not database enums) so a new status is a code change, not an ALTER TYPE.
DatasetStatus = Literal["writing", "complete", "failed"]
RunStatus = Literal["queued", "running", "completed", "failed", "cancelled", "lost"]
DATASET_STATUSES: tuple[DatasetStatus, ...] = get_args(DatasetStatus)
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
TERMINAL_RUN_STATUSES: tuple[RunStatus, ...] = ("completed", "failed", "cancelled", "lost")


def as_run_status(value: str) -> RunStatus:
    """``value`` as a run status (checked: from the database, a journal file, the command line)."""
    for status in RUN_STATUSES:
        if value == status:
            return status
    raise ValueError(f"unknown run status {value!r}; expected one of {', '.join(RUN_STATUSES)}")


def as_dataset_status(value: str) -> DatasetStatus:
    for status in DATASET_STATUSES:
        if value == status:
            return status
    raise ValueError(f"unknown dataset status {value!r}; expected one of {', '.join(DATASET_STATUSES)}")

# Allowed run status transitions. A run is written RUNNING only by the job that owns it; anyone may cancel it; the
# reconciler (sweep status / runs reap) marks it lost or failed when Slurm or the heartbeat says it died.
RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    "queued": frozenset({"running", "cancelled", "failed", "lost"}),
    "running": frozenset({"running", "completed", "failed", "cancelled", "lost", "queued"}),
    "completed": frozenset(),
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
    "lost": frozenset({"queued", "running"}),
}


def utcnow() -> dt.datetime:
    """Naive UTC now, the convention for every stored datetime."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class utcnow_sql(FunctionElement):
    """The database's clock as naive UTC; compiled per dialect."""

    type = sa.DateTime()
    inherit_cache = True


@compiles(utcnow_sql, "postgresql")
def _utcnow_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return "timezone('utc', statement_timestamp())"


@compiles(utcnow_sql)
def _utcnow_default(element: Any, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


def _find_by_name(cls: Any, session: sa.orm.Session, name: str, noun: str) -> Any:
    """The row named ``name``, or NotFoundError listing some known names."""
    row = session.scalars(sa.select(cls).where(cls.name == name)).one_or_none()
    if row is None:
        known = session.scalars(sa.select(cls.name).order_by(cls.name).limit(20)).all()
        hint = f" Known {noun}s: {', '.join(known)}." if known else f" The registry has no {noun}s yet."
        raise errors.NotFoundError(f"no {noun} named {name!r} in the registry.{hint}")
    return row


def get_or_raise(session: sa.orm.Session, model: type[T], row_id: int, noun: str) -> T:
    """The row of ``model`` with primary key ``row_id``, or NotFoundError naming it."""
    row = session.get(model, row_id)
    if row is None:
        raise errors.NotFoundError(f"no {noun} with id {row_id} in the registry")
    return row


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: sa.JSON, list[Any]: sa.JSON}


class RegistryIdentityModel(Base):
    """One row: this registry's id (made by migration 0006), named by its journals and checked when they are synced."""

    __tablename__ = "registry_identity"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DatasetModel(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    content_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    path: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default="writing")
    source_path: Mapped[str | None] = mapped_column(sa.Text)
    model_family: Mapped[str] = mapped_column(sa.String(64))
    model_ckpt: Mapped[str] = mapped_column(sa.String(512))
    layers: Mapped[list[Any]] = mapped_column(sa.JSON)
    d_model: Mapped[int]
    tokens_per_example: Mapped[int]
    n_examples: Mapped[int]
    dtype: Mapped[str] = mapped_column(sa.String(16))
    extra: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[dt.datetime | None]

    runs: Mapped[list[RunModel]] = relationship(back_populates="dataset")

    @classmethod
    def find_or_raise_by_name(cls, session: sa.orm.Session, name: str) -> DatasetModel:
        return _find_by_name(cls, session, name, "dataset")


class SweepModel(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    grid_yaml: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    runs: Mapped[list[RunModel]] = relationship(back_populates="sweep")

    @classmethod
    def find_or_raise_by_name(cls, session: sa.orm.Session, name: str) -> SweepModel:
        return _find_by_name(cls, session, name, "sweep")


class RunModel(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int | None] = mapped_column(sa.ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int] = mapped_column(sa.ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    config_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    status: Mapped[str] = mapped_column(sa.String(16), default="queued", index=True)
    executor: Mapped[str | None] = mapped_column(sa.String(16))
    slurm_job_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    slurm_array_index: Mapped[int | None]
    attempts: Mapped[int] = mapped_column(default=0)
    host: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    ended_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    checkpoint_path: Mapped[str | None] = mapped_column(sa.Text)
    run_dir: Mapped[str | None] = mapped_column(sa.Text)
    local_pid: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(sa.Text)

    dataset: Mapped[DatasetModel] = relationship(back_populates="runs")
    sweep: Mapped[SweepModel | None] = relationship(back_populates="runs")

    @classmethod
    def find_or_raise_by_id(cls, session: sa.orm.Session, run_id: int, *, for_update: bool = False) -> RunModel:
        stmt = sa.select(cls).where(cls.id == run_id)
        if for_update:
            stmt = stmt.with_for_update()
        row = session.scalars(stmt).one_or_none()
        if row is None:
            raise errors.NotFoundError(f"no run with id {run_id} in the registry (see `saev-ops runs list`).")
        return row


_PARAM_SQL_TYPES: dict[type, Any] = {str: sa.String(64), int: sa.BigInteger, float: sa.Float}

# One row per run: its hyperparameters as typed columns (see saev_ops.registry.params; created by migration 0005).
RunParamsModel: Any = type("RunParamsModel", (Base,), {
    "__tablename__": "run_params",
    "__doc__": "A run's hyperparameters as typed columns (NULL where its architecture does not read one).",
    "run_id": mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    **{name: mapped_column(_PARAM_SQL_TYPES[kind], nullable=True) for name, kind in PARAMS.items()},
})


class MetricPointModel(Base):
    """One logged value, once per (run, key, step): logging a point again (a resumed job re-logging the steps after its
    checkpoint, a re-synced metrics file) updates it. The history table; it grows to tens of millions of rows, so it
    carries one index only, the unique one."""

    __tablename__ = "metric_points"
    __table_args__ = (sa.Index("uq_metric_points_run_key_step", "run_id", "key", "step", unique=True),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(sa.String(128))
    step: Mapped[int] = mapped_column(sa.BigInteger)
    value: Mapped[float] = mapped_column(sa.Float)
    time: Mapped[dt.datetime] = mapped_column(default=utcnow)


class MetricSummaryModel(Base):
    """The last value (highest step) of each key of each run; what ``runs list --where/--sort`` filters on."""

    __tablename__ = "metric_summaries"
    __table_args__ = (sa.Index("ix_metric_summaries_key_value", "key", "value"),)

    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    value: Mapped[float] = mapped_column(sa.Float)
    step: Mapped[int] = mapped_column(sa.BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class InferenceOutputModel(Base):
    __tablename__ = "inference_outputs"
    __table_args__ = (sa.UniqueConstraint("run_id", "dataset_id", name="uq_inference_outputs_run_dataset"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="RESTRICT"), index=True)
    dataset_id: Mapped[int] = mapped_column(sa.ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    path: Mapped[str] = mapped_column(sa.Text)
    n_rows: Mapped[int] = mapped_column(sa.BigInteger)
    n_cols: Mapped[int]
    nnz: Mapped[int] = mapped_column(sa.BigInteger)
    extra: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # reconstruction metrics of the SAE over this dataset (migration 0005; NULL for outputs written before)
    nmse: Mapped[float | None] = mapped_column(sa.Float)
    explained_variance: Mapped[float | None] = mapped_column(sa.Float)
    l0: Mapped[float | None] = mapped_column(sa.Float)
    unfired_frac: Mapped[float | None] = mapped_column(sa.Float)
    dense_frac: Mapped[float | None] = mapped_column(sa.Float)
    cosine: Mapped[float | None] = mapped_column(sa.Float)
    shrinkage: Mapped[float | None] = mapped_column(sa.Float)


class EvaluationModel(Base):
    """A downstream evaluation of a run's SAE on a dataset (``saev-ops eval``): the SAE spliced into the dataset's
    model. One row per (run, dataset, kind); evaluating again replaces it."""

    __tablename__ = "evaluations"
    __table_args__ = (sa.UniqueConstraint("run_id", "dataset_id", "kind", name="uq_evaluations_run_dataset_kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int] = mapped_column(sa.ForeignKey("datasets.id", ondelete="RESTRICT"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    n_images: Mapped[int]
    fidelity: Mapped[float | None] = mapped_column(sa.Float)
    kl: Mapped[float | None] = mapped_column(sa.Float)
    probe_clean: Mapped[float | None] = mapped_column(sa.Float)
    probe_spliced: Mapped[float | None] = mapped_column(sa.Float)
    extra: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
