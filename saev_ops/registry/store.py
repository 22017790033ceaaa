"""The :class:`Registry`: saev-ops' one gateway to its SQL database.

Contract:
- Every method opens and closes its own transaction and returns frozen records (:mod:`saev_ops.registry.records`).
- Writes retry on transient lock/deadlock errors, at most :data:`MAX_RETRIES` times with a random 0-2 s sleep: Slurm
  array tasks write at the same moment, and SQLite (even with WAL and a busy timeout) or Postgres (deadlocks) can refuse
  one.
- Run status changes follow :data:`saev_ops.registry.models.RUN_TRANSITIONS`; only the job that owns a run writes it
  ``running``; heartbeats use the database clock.
- A Registry pickles as its URL and reopens on unpickling, so submitit jobs can carry one.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import math
import pathlib
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from saev_ops import errors
from saev_ops.registry import migrate, models, query
from saev_ops.registry.engine import (
    BEGIN_MODE_OPTION,
    create_registry_engine,
    is_memory_sqlite,
    normalise_url,
    safe_url,
)
from saev_ops.registry.names import check_name
from saev_ops.registry.params import params_of
from saev_ops.registry.records import (
    OUTPUT_METRICS,
    DatasetRecord,
    EvaluationRecord,
    MetricPoint,
    OutputRecord,
    RunDetail,
    RunRecord,
    RunRow,
    SweepRecord,
)
from saev_ops.settings import resolve_db_url

T = TypeVar("T")
MAX_RETRIES = 5


def config_hash(dataset_hash: str, config: dict[str, Any]) -> str:
    """The identity of a run: SHA-256 of its dataset's content hash and its identity config (what determines its
    result) as canonical JSON."""
    payload = json.dumps({"dataset": dataset_hash, "config": config}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


# serialization failure, deadlock, lock not available; too many connections, server starting up (a burst of jobs
# against max_connections waits its turn instead of failing)
_PG_TRANSIENT = ("40001", "40P01", "55P03", "53300", "57P03")
_SQLITE_TRANSIENT = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (primary codes; extended codes keep them in the low byte)


def _is_transient(exc: sa.exc.DBAPIError) -> bool:
    """Whether a write may succeed if retried: by the driver's error code (psycopg's SQLSTATE, sqlite3's result
    code), not by its message."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _PG_TRANSIENT:
        return True
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_TRANSIENT
    # Python 3.10's sqlite3 exposes no code: its messages for those two codes are fixed strings
    text = str(orig).lower()
    return "database is locked" in text or "database table is locked" in text


def _mapped(exc: sa.exc.SQLAlchemyError, what: str) -> errors.RegistryError:
    """A SQLAlchemy error as saev-ops' own: unreachable (connection, pool time-out) or failed (anything else)."""
    detail = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    text = str(detail).strip().splitlines()[0] if str(detail).strip() else type(detail).__name__
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.TimeoutError, sa.exc.InterfaceError)):
        return errors.RegistryUnavailableError(f"{what}: {text}")
    return errors.RegistryError(f"{what}: {text}")


# Bookkeeping fields of a run that callers may set (status changes go through transition_run).
RUN_FIELDS = frozenset(
    {"executor", "slurm_job_id", "slurm_array_index", "host", "checkpoint_path", "error", "run_dir", "local_pid"}
)


def _check_run_fields(fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - RUN_FIELDS)
    if unknown:
        raise errors.ConfigError(f"cannot set run fields {unknown}; allowed: {sorted(RUN_FIELDS)}")


class Registry:
    """The saev-ops registry at ``url`` (``--db`` / ``SAEV_OPS_DB_URL`` / the default SQLite file).

    Args:
        url: database URL or SQLite path; None resolves it from the environment.
        check_schema: verify (and, for an empty database, create) the schema on open.
        create: create the registry (an SQLite file, the schema) when there is none; False for commands that only
            read, so a mistyped URL or home is an error naming it, not a new empty registry.

    Raises:
        RegistryUnavailableError, NotASaevOpsDatabaseError, SchemaOutdatedError: see :func:`migrate.ensure_schema`.
    """

    def __init__(self, url: str | None = None, *, check_schema: bool = True, create: bool = True,
                 hold_connections: bool = True) -> None:
        """``hold_connections=False`` (jobs): on PostgreSQL, a connection is opened per transaction and closed after
        it (no pool), so hundreds of training jobs that write every few seconds use only as many server connections
        as are writing at that moment, not one each."""
        self._url_text = resolve_db_url(url)
        self._check_schema = check_schema
        self._create = create
        self._hold = hold_connections
        self._open()

    def _open(self) -> None:
        self.url = normalise_url(self._url_text)
        if not self._create and self.url.get_backend_name() == "sqlite" and not is_memory_sqlite(self.url):
            if not pathlib.Path(str(self.url.database)).expanduser().exists():
                raise errors.RegistryUnavailableError(migrate._no_registry_yet(safe_url(self.url)))
        pool: dict[str, Any] = {}
        if not self._hold and self.url.get_backend_name() == "postgresql":
            pool["poolclass"] = sa.pool.NullPool
        self.engine = create_registry_engine(self.url, **pool)
        self._write_engine = self.engine.execution_options(**{BEGIN_MODE_OPTION: "IMMEDIATE"})
        self._upserts: tuple[Any, Any] | None = None
        if self._check_schema:
            migrate.ensure_schema(self.engine, create=self._create)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._url_text, "check_schema": self._check_schema, "create": self._create,
                "hold_connections": self._hold}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._url_text = state["url"]
        self._check_schema = state["check_schema"]
        self._create = state.get("create", True)
        self._hold = state.get("hold_connections", True)
        self._open()

    def __repr__(self) -> str:
        return f"Registry({safe_url(self.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @functools.cached_property
    def registry_id(self) -> str:
        """This registry's own id (made when it was created): journals name it, ``sweep sync`` checks it."""
        return self._read(lambda s: s.scalars(sa.select(models.RegistryIdentityModel.id)).one())

    # -- transactions ------------------------------------------------------------------------------------------------
    def _read(self, fn: Callable[[Session], T]) -> T:
        try:
            with Session(self.engine) as session, session.begin():
                return fn(session)
        except sa.exc.SQLAlchemyError as exc:  # never a raw driver or pool traceback
            raise _mapped(exc, f"registry read failed at {safe_url(self.url)}") from None

    def _write(self, fn: Callable[[Session], T]) -> T:
        for attempt in range(MAX_RETRIES + 1):
            try:
                with Session(self._write_engine) as session, session.begin():
                    return fn(session)
            except sa.exc.IntegrityError as exc:
                raise errors.DuplicateError(f"registry refused a duplicate or dangling row: {exc.orig}") from None
            except sa.exc.DBAPIError as exc:
                if attempt < MAX_RETRIES and _is_transient(exc):
                    time.sleep(random.random() * 2.0)
                    continue
                raise _mapped(exc, f"registry write failed at {safe_url(self.url)}") from None
            except sa.exc.SQLAlchemyError as exc:
                raise _mapped(exc, f"registry write failed at {safe_url(self.url)}") from None
        raise AssertionError("unreachable")

    # -- datasets ----------------------------------------------------------------------------------------------------
    def create_dataset(
        self,
        *,
        name: str,
        content_hash: str,
        path: str,
        model_family: str,
        model_ckpt: str,
        layers: Sequence[int],
        d_model: int,
        tokens_per_example: int,
        n_examples: int,
        dtype: str,
        source_path: str | None = None,
        status: models.DatasetStatus = "writing",
        extra: dict[str, Any] | None = None,
    ) -> DatasetRecord:
        """Register a dataset. Raises DuplicateError if the name or content hash is taken, ConfigError for a bad
        name."""
        check_name("dataset", name)
        if status not in models.DATASET_STATUSES:
            raise errors.ConfigError(f"dataset status must be one of {models.DATASET_STATUSES}, got {status!r}")

        def fn(s: Session) -> DatasetRecord:
            clash = s.scalars(
                sa.select(models.DatasetModel).where(
                    sa.or_(models.DatasetModel.name == name, models.DatasetModel.content_hash == content_hash)
                )
            ).first()
            if clash is not None:
                what = f"name {name!r}" if clash.name == name else f"content hash {content_hash}"
                raise errors.DuplicateError(f"a dataset with {what} is already registered (dataset {clash.name!r})")
            row = models.DatasetModel(
                name=name,
                content_hash=content_hash,
                path=path,
                status=status,
                source_path=source_path,
                model_family=model_family,
                model_ckpt=model_ckpt,
                layers=list(layers),
                d_model=d_model,
                tokens_per_example=tokens_per_example,
                n_examples=n_examples,
                dtype=dtype,
                extra=dict(extra or {}),
                completed_at=models.utcnow() if status == "complete" else None,
            )
            s.add(row)
            s.flush()
            return DatasetRecord.from_model(row)

        return self._write(fn)

    def get_dataset(self, name: str) -> DatasetRecord:
        return self._read(lambda s: DatasetRecord.from_model(models.DatasetModel.find_or_raise_by_name(s, name)))

    def get_dataset_by_id(self, dataset_id: int) -> DatasetRecord:
        return self._read(
            lambda s: DatasetRecord.from_model(models.get_or_raise(s, models.DatasetModel, dataset_id, "dataset")))

    def find_dataset_by_hash(self, content_hash: str) -> DatasetRecord | None:
        def fn(s: Session) -> DatasetRecord | None:
            row = s.scalars(
                sa.select(models.DatasetModel).where(models.DatasetModel.content_hash == content_hash)
            ).one_or_none()
            return None if row is None else DatasetRecord.from_model(row)

        return self._read(fn)

    def list_datasets(self) -> list[DatasetRecord]:
        return self._read(
            lambda s: [
                DatasetRecord.from_model(m)
                for m in s.scalars(sa.select(models.DatasetModel).order_by(models.DatasetModel.name))
            ]
        )

    def update_dataset(self, name: str, **fields: Any) -> DatasetRecord:
        """Set fields of a dataset (status, n_examples, extra, ...). Setting status ``complete`` stamps completed_at."""
        allowed = {"status", "n_examples", "extra", "path", "tokens_per_example", "d_model", "dtype", "layers"}
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise errors.ConfigError(f"cannot update dataset fields {unknown}; allowed: {sorted(allowed)}")
        if "status" in fields and fields["status"] not in models.DATASET_STATUSES:
            raise errors.ConfigError(
                f"dataset status must be one of {models.DATASET_STATUSES}, got {fields['status']!r}")

        def fn(s: Session) -> DatasetRecord:
            row = models.DatasetModel.find_or_raise_by_name(s, name)
            for key, value in fields.items():
                setattr(row, key, value)
            if fields.get("status") == "complete":
                row.completed_at = models.utcnow()
            s.flush()
            return DatasetRecord.from_model(row)

        return self._write(fn)

    def delete_dataset(self, name: str, *, force: bool = False) -> int:
        """Remove a dataset's registry entry. Refuses while runs or outputs depend on it unless ``force``, which also
        removes those runs (with their metrics) and outputs. Returns the number of dependent runs removed."""

        def fn(s: Session) -> int:
            row = models.DatasetModel.find_or_raise_by_name(s, name)
            run_ids = s.scalars(sa.select(models.RunModel.id).where(models.RunModel.dataset_id == row.id)).all()
            n_outputs = s.scalar(
                sa.select(sa.func.count())
                .select_from(models.InferenceOutputModel)
                .where(
                    sa.or_(
                        models.InferenceOutputModel.dataset_id == row.id,
                        models.InferenceOutputModel.run_id.in_(run_ids),
                    )
                )
            )
            if (run_ids or n_outputs) and not force:
                raise errors.HasDependentsError(
                    f"dataset {name!r} has {len(run_ids)} run(s) and {n_outputs} inference output(s) that depend on "
                    "it; pass --force to remove them too"
                )
            s.execute(
                sa.delete(models.InferenceOutputModel).where(
                    sa.or_(
                        models.InferenceOutputModel.dataset_id == row.id,
                        models.InferenceOutputModel.run_id.in_(run_ids),
                    )
                )
            )
            s.execute(sa.delete(models.EvaluationModel).where(sa.or_(
                models.EvaluationModel.dataset_id == row.id, models.EvaluationModel.run_id.in_(run_ids))))
            if run_ids:
                for model in (models.MetricPointModel, models.MetricSummaryModel, models.RunParamsModel):
                    s.execute(sa.delete(model).where(model.run_id.in_(run_ids)))
                s.execute(sa.delete(models.RunModel).where(models.RunModel.id.in_(run_ids)))
            s.delete(row)
            return len(run_ids)

        return self._write(fn)

    # -- sweeps ------------------------------------------------------------------------------------------------------
    def get_or_create_sweep(self, name: str, grid_yaml: str = "") -> SweepRecord:
        check_name("sweep", name)

        def fn(s: Session) -> SweepRecord:
            row = s.scalars(sa.select(models.SweepModel).where(models.SweepModel.name == name)).one_or_none()
            if row is None:
                row = models.SweepModel(name=name, grid_yaml=grid_yaml)
                s.add(row)
                s.flush()
            elif grid_yaml and row.grid_yaml != grid_yaml:
                row.grid_yaml = grid_yaml
            return SweepRecord.from_model(row)

        return self._write(fn)

    def get_sweep(self, name: str) -> SweepRecord:
        return self._read(lambda s: SweepRecord.from_model(models.SweepModel.find_or_raise_by_name(s, name)))

    def list_sweeps(self) -> list[tuple[SweepRecord, dict[str, int]]]:
        """Every sweep with its run counts by status."""

        def fn(s: Session) -> list[tuple[SweepRecord, dict[str, int]]]:
            counts: dict[int, dict[str, int]] = collections.defaultdict(dict)
            for sweep_id, status, n in s.execute(
                sa.select(models.RunModel.sweep_id, models.RunModel.status, sa.func.count())
                .where(models.RunModel.sweep_id.is_not(None))
                .group_by(models.RunModel.sweep_id, models.RunModel.status)
            ):
                if sweep_id is not None:
                    counts[sweep_id][status] = n
            sweeps = s.scalars(sa.select(models.SweepModel).order_by(models.SweepModel.id))
            return [(SweepRecord.from_model(m), dict(counts[m.id])) for m in sweeps]

        return self._read(fn)

    # -- runs --------------------------------------------------------------------------------------------------------
    def add_runs(
        self, dataset: str, configs: Sequence[dict[str, Any]], *, sweep: str | None = None,
        identities: Sequence[dict[str, Any]] | None = None,
    ) -> list[tuple[RunRecord, bool]]:
        """Register runs by config; one whose identity is registered already (same hash) is returned as is.

        ``identities`` (one per config, default the configs themselves) is what is hashed: the part of a config that
        determines the run's result (:func:`saev_ops.runconfig.run_identity`). Returns (record, created) per config.
        """
        idents = list(configs) if identities is None else list(identities)
        if len(idents) != len(configs):
            raise errors.ConfigError(f"add_runs: {len(configs)} configs but {len(idents)} identities")

        def fn(s: Session) -> list[tuple[RunRecord, bool]]:
            ds = models.DatasetModel.find_or_raise_by_name(s, dataset)
            sweep_id = models.SweepModel.find_or_raise_by_name(s, sweep).id if sweep is not None else None
            hashes = [config_hash(ds.content_hash, i) for i in idents]
            existing = {
                r.config_hash: r
                for r in s.scalars(sa.select(models.RunModel).where(models.RunModel.config_hash.in_(hashes)))
            }
            out: list[tuple[models.RunModel, bool]] = []
            for cfg, h in zip(configs, hashes, strict=True):
                if h in existing:
                    out.append((existing[h], False))
                    continue
                row = models.RunModel(sweep_id=sweep_id, dataset_id=ds.id, config=dict(cfg), config_hash=h)
                s.add(row)
                existing[h] = row
                out.append((row, True))
            s.flush()
            s.add_all(models.RunParamsModel(run_id=r.id, **params_of(r.config)) for r, created in out if created)
            s.flush()
            return [(RunRecord.from_model(r), created) for r, created in out]

        return self._write(fn)

    def get_run(self, run_id: int) -> RunRecord:
        return self._read(lambda s: RunRecord.from_model(models.RunModel.find_or_raise_by_id(s, run_id)))

    def transition_run(self, run_id: int, status: models.RunStatus, **fields: Any) -> RunRecord:
        """Move a run to ``status`` (checked against RUN_TRANSITIONS) and set other fields in the same transaction.

        Entering ``running`` counts an attempt and stamps started_at and the heartbeat; entering a terminal status
        stamps ended_at. Allowed fields: executor, slurm_job_id, slurm_array_index, host, checkpoint_path, error.
        """
        _check_transition(status, fields)
        return self._write(lambda s: _transition(s, run_id, status, fields))

    def transition_runs_if(self, changes: Sequence[tuple[int, Sequence[str], models.RunStatus, dict[str, Any]]]
                           ) -> list[tuple[int, str, str]]:
        """Many transitions in one transaction, each applied only while the run is still in one of its expected
        statuses (``sweep status`` on 10,000 runs: a run that reported meanwhile keeps its own status). ``changes``:
        (run id, expected statuses, new status, fields); the new status may not be ``running`` (that transition
        counts an attempt: :meth:`transition_run`). Set-based: one UPDATE per 1,000 runs of one (expected, status,
        fields). Returns (run id, status before, status after) for each."""
        for _, expected, status, fields in changes:
            _check_transition(status, fields)
            if status == "running":
                raise errors.ConfigError("transition_runs_if cannot start runs; use transition_run")
            bad = [e for e in expected if status not in models.RUN_TRANSITIONS[models.as_run_status(e)]
                   and status != e]
            if bad:
                raise errors.InvalidTransitionError(f"a run cannot go from {bad[0]} to {status}")
        r = models.RunModel

        def statuses(s: Session, ids: list[int]) -> dict[int, str]:
            out: dict[int, str] = {}
            for part in _batches(ids):
                rows = s.execute(sa.select(r.id, r.status).where(r.id.in_(part)))
                out.update((int(i), str(st)) for i, st in rows)
            return out

        def fn(s: Session) -> list[tuple[int, str, str]]:
            ids = [c[0] for c in changes]
            before = statuses(s, ids)
            missing = sorted(set(ids) - set(before))
            if missing:
                raise errors.NotFoundError(f"no run with id {missing[0]} in the registry")
            groups: dict[tuple[Any, ...], list[int]] = {}
            for run_id, expected, status, fields in changes:
                key = (tuple(sorted(expected)), status, tuple(sorted(fields.items())))
                groups.setdefault(key, []).append(run_id)
            now = models.utcnow()
            for (expected, status, fields), group in groups.items():
                values: dict[str, Any] = {"status": status, **dict(fields)}
                if status in models.TERMINAL_RUN_STATUSES:
                    values["ended_at"] = now
                for part in _batches(group):
                    s.execute(sa.update(r).where(r.id.in_(part), r.status.in_(expected)).values(**values))
            after = statuses(s, ids)
            return [(run_id, before[run_id], after[run_id]) for run_id in ids]

        return self._write(fn) if changes else []

    def set_run_fields(self, run_id: int, **fields: Any) -> None:
        """Set bookkeeping fields without a status change (job ids at submission, checkpoint path, ...)."""
        _check_run_fields(fields)
        self._write(
            lambda s: s.execute(sa.update(models.RunModel).where(models.RunModel.id == run_id).values(**fields))
        )

    def set_many_run_fields(self, updates: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """:meth:`set_run_fields` for many runs in one transaction (a sweep's submission: 10,000 runs at once)."""
        for _, fields in updates:
            _check_run_fields(fields)

        def fn(s: Session) -> None:
            for run_id, fields in updates:
                s.execute(sa.update(models.RunModel).where(models.RunModel.id == run_id).values(**fields))

        if updates:
            self._write(fn)

    def runs_by_hash(self, hashes: Sequence[str]) -> dict[str, RunRecord]:
        """Registered runs among these config hashes (one query per 1,000), by hash."""

        def fn(s: Session) -> dict[str, RunRecord]:
            out: dict[str, RunRecord] = {}
            for part in _batches(hashes):
                for r in s.scalars(sa.select(models.RunModel).where(models.RunModel.config_hash.in_(part))):
                    out[r.config_hash] = RunRecord.from_model(r)
            return out

        return self._read(fn)

    def heartbeat(self, run_ids: Iterable[int]) -> None:
        """Stamp the database's clock on runs' heartbeats."""
        ids = list(run_ids)
        self._write(
            lambda s: s.execute(
                sa.update(models.RunModel).where(models.RunModel.id.in_(ids)).values(heartbeat_at=models.utcnow_sql())
            )
        )

    def stale_running_runs(self, grace_s: float) -> list[RunRecord]:
        """Running runs whose heartbeat is older than ``grace_s`` seconds by the database clock."""

        def fn(s: Session) -> list[RunRecord]:
            rows = s.scalars(sa.select(models.RunModel).where(models.RunModel.status == "running")).all()
            now = s.scalar(sa.select(models.utcnow_sql()))  # typed DateTime, so SQLite's text is parsed too
            return [
                RunRecord.from_model(r)
                for r in rows
                if r.heartbeat_at is None or (now - r.heartbeat_at).total_seconds() > grace_s
            ]

        return self._read(fn)

    def list_runs(self, q: query.RunQuery = query.RunQuery()) -> list[RunRow]:
        """Runs matching ``q``, each with its dataset/sweep names and metric summary. See :mod:`query`."""
        conditions = [query.parse_condition(w) for w in q.where]
        sort = query.parse_sort(q.sort) if q.sort else None
        for st in q.statuses:
            if st not in models.RUN_STATUSES:
                raise errors.QueryError(f"unknown status {st!r}: expected one of {', '.join(models.RUN_STATUSES)}")
        if q.limit is not None and q.limit < 0:
            raise errors.QueryError(f"--limit must be >= 0, got {q.limit}")

        def fn(s: Session) -> list[RunRow]:
            dataset_id = models.DatasetModel.find_or_raise_by_name(s, q.dataset).id if q.dataset else None
            sweep_id = models.SweepModel.find_or_raise_by_name(s, q.sweep).id if q.sweep else None
            metric_keys = {c.key for c in conditions if c.is_metric}
            if sort and sort.is_metric:
                metric_keys.add(sort.key)
            for key in sorted(metric_keys):
                self._check_metric_key(s, key)
            stmt = query.build_run_select(
                conditions, sort, dataset_id=dataset_id, sweep_id=sweep_id, statuses=q.statuses, limit=q.limit
            )
            ids = list(s.scalars(stmt))
            return self._run_rows(s, ids)

        return self._read(fn)

    @staticmethod
    def _check_metric_key(s: Session, key: str) -> None:
        stored = query.stored_key(key)
        hit = s.scalar(sa.select(models.MetricSummaryModel.run_id).where(models.MetricSummaryModel.key == stored)
                       .limit(1))
        if hit is None:
            summary_key = models.MetricSummaryModel.key
            known = s.scalars(sa.select(summary_key).distinct().order_by(summary_key))
            names = ", ".join(query.SHOWN_AS.get(k, k) for k in list(known)[:30]) or "none yet"
            cols = ", ".join(query.RUN_COLUMNS)
            raise errors.QueryError(f"no run has a metric named {key!r}. Metrics: {names}. Columns: {cols}")

    @staticmethod
    def _run_rows(s: Session, ids: list[int]) -> list[RunRow]:
        if not ids:
            return []
        rows: dict[int, RunRow] = {}
        summaries: dict[int, dict[str, float]] = collections.defaultdict(dict)
        for chunk_start in range(0, len(ids), 5000):
            chunk = ids[chunk_start : chunk_start + 5000]
            for run_id, key, value in s.execute(
                sa.select(
                    models.MetricSummaryModel.run_id, models.MetricSummaryModel.key, models.MetricSummaryModel.value
                ).where(models.MetricSummaryModel.run_id.in_(chunk))
            ):
                summaries[run_id][query.SHOWN_AS.get(key, key)] = value
            stmt = (
                sa.select(models.RunModel, models.DatasetModel.name, models.SweepModel.name)
                .join(models.DatasetModel, models.DatasetModel.id == models.RunModel.dataset_id)
                .outerjoin(models.SweepModel, models.SweepModel.id == models.RunModel.sweep_id)
                .where(models.RunModel.id.in_(chunk))
            )
            for run, dname, sname in s.execute(stmt):
                rows[run.id] = RunRow(RunRecord.from_model(run), dname, sname, dict(summaries[run.id]))
        return [rows[i] for i in ids if i in rows]

    def run_detail(self, run_id: int) -> RunDetail:
        """``runs show``: the run, its summary and its lineage."""

        def fn(s: Session) -> RunDetail:
            run = models.RunModel.find_or_raise_by_id(s, run_id)
            (row,) = self._run_rows(s, [run_id])
            outputs = s.scalars(
                sa.select(models.InferenceOutputModel)
                .where(models.InferenceOutputModel.run_id == run_id)
                .order_by(models.InferenceOutputModel.id)
            )
            return RunDetail(
                row=row,
                dataset=DatasetRecord.from_model(run.dataset),
                sweep=SweepRecord.from_model(run.sweep) if run.sweep is not None else None,
                outputs=tuple(OutputRecord.from_model(o) for o in outputs),
                evaluations=tuple(EvaluationRecord.from_model(e) for e in s.scalars(
                    sa.select(models.EvaluationModel).where(models.EvaluationModel.run_id == run_id)
                    .order_by(models.EvaluationModel.id))),
            )

        return self._read(fn)

    # -- metrics -----------------------------------------------------------------------------------------------------
    def log_metrics(self, run_id: int, points: Iterable[tuple[str, int, float]]) -> int:
        """Store metric points ``(key, step, value)`` and update the run's summary (last value by step) atomically.

        Each (run, key, step) is stored once: logging a point again (a resumed job re-logging the steps after its
        checkpoint, a metrics file synced twice) replaces its value. NaN values are not stored (SQLite cannot hold
        them); returns the number of points stored.
        """
        now = models.utcnow()
        by_point: dict[tuple[str, int], float] = {}
        for key, step, value in points:
            value = float(value)
            if not math.isnan(value):
                by_point[(key, int(step))] = value  # the last value of a point repeated within one call wins
        if not by_point:
            return 0
        rows = [{"run_id": run_id, "key": k, "step": st, "value": v, "time": now} for (k, st), v in by_point.items()]
        last: dict[str, tuple[int, float]] = {}
        for (key, step), value in by_point.items():
            if key not in last or step >= last[key][0]:
                last[key] = (step, value)
        summary_rows = [
            {"run_id": run_id, "key": k, "step": st, "value": v, "updated_at": now}
            for k, (st, v) in sorted(last.items())
        ]

        def fn(s: Session) -> int:
            if self._upserts is None:
                self._upserts = self._build_upserts()
            points_upsert, summary_upsert = self._upserts
            s.execute(points_upsert, rows)
            s.execute(summary_upsert, summary_rows)
            return len(rows)

        try:
            return self._write(fn)
        except errors.DuplicateError:
            raise errors.NotFoundError(f"cannot log metrics: no run with id {run_id} in the registry") from None

    def _build_upserts(self) -> tuple[Any, Any]:
        """INSERT .. ON CONFLICT DO UPDATE for points and summaries, for executemany (no inline VALUES, so SQLAlchemy
        caches their compilation)."""

        insert: Any = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        points = models.MetricPointModel.__table__
        stmt = insert(points)
        points_upsert = stmt.on_conflict_do_update(
            index_elements=[points.c.run_id, points.c.key, points.c.step],
            set_={"value": stmt.excluded.value, "time": stmt.excluded.time},
        )
        table = models.MetricSummaryModel.__table__
        stmt = insert(table)
        summary_upsert = stmt.on_conflict_do_update(
            index_elements=[table.c.run_id, table.c.key],
            set_={"value": stmt.excluded.value, "step": stmt.excluded.step, "updated_at": stmt.excluded.updated_at},
            where=table.c.step <= stmt.excluded.step,
        )
        return points_upsert, summary_upsert

    def metric_history(self, run_id: int, key: str | None = None) -> list[MetricPoint]:
        def fn(s: Session) -> list[MetricPoint]:
            models.RunModel.find_or_raise_by_id(s, run_id)
            m = models.MetricPointModel
            stmt = sa.select(m.run_id, m.key, m.step, m.value, m.time).where(m.run_id == run_id)
            if key is not None:
                stmt = stmt.where(m.key == key)
            stmt = stmt.order_by(m.key, m.step, m.id)
            return [MetricPoint(*r) for r in s.execute(stmt)]

        return self._read(fn)

    def last_steps(self, run_ids: Sequence[int]) -> dict[int, int]:
        """The highest step each run has logged a metric at (runs that logged nothing are absent)."""
        m = models.MetricSummaryModel
        ids = list(run_ids)
        return self._read(lambda s: {
            rid: step for rid, step in s.execute(
                sa.select(m.run_id, sa.func.max(m.step)).where(m.run_id.in_(ids)).group_by(m.run_id))
        }) if ids else {}

    def summary(self, run_id: int) -> dict[str, float]:
        m = models.MetricSummaryModel
        return self._read(lambda s: dict(s.execute(sa.select(m.key, m.value).where(m.run_id == run_id)).all()))

    # -- inference outputs -------------------------------------------------------------------------------------------
    def add_output(
        self,
        *,
        run_id: int,
        dataset: str,
        path: str,
        n_rows: int,
        n_cols: int,
        nnz: int,
        extra: dict[str, Any] | None = None,
        replace: bool = False,
        metrics: dict[str, float | None] | None = None,
    ) -> OutputRecord:
        """Register an inference output of ``run_id`` over ``dataset``; ``replace`` overwrites an existing one.
        ``metrics``: the SAE's reconstruction metrics over the dataset (keys of ``OUTPUT_METRICS``)."""
        unknown = sorted(set(metrics or {}) - set(OUTPUT_METRICS))
        if unknown:
            raise errors.ConfigError(f"unknown output metrics {unknown}; known: {list(OUTPUT_METRICS)}")

        def fn(s: Session) -> OutputRecord:
            models.RunModel.find_or_raise_by_id(s, run_id)
            ds = models.DatasetModel.find_or_raise_by_name(s, dataset)
            o = models.InferenceOutputModel
            row = s.scalars(sa.select(o).where(o.run_id == run_id, o.dataset_id == ds.id)).one_or_none()
            if row is not None and not replace:
                raise errors.DuplicateError(
                    f"run {run_id} already has an inference output over dataset {dataset!r} (output {row.id})"
                )
            if row is None:
                row = o(run_id=run_id, dataset_id=ds.id, path=path, n_rows=n_rows, n_cols=n_cols, nnz=nnz)
                s.add(row)
            row.path, row.n_rows, row.n_cols, row.nnz = path, n_rows, n_cols, nnz
            row.extra = dict(extra or {})
            for key in OUTPUT_METRICS:
                value = (metrics or {}).get(key)
                setattr(row, key, None if value is None or not math.isfinite(value) else float(value))
            row.created_at = models.utcnow()
            s.flush()
            return OutputRecord.from_model(row)

        return self._write(fn)

    def get_output(self, output_id: int) -> OutputRecord:
        return self._read(lambda s: OutputRecord.from_model(
            models.get_or_raise(s, models.InferenceOutputModel, output_id, "inference output")))

    def find_output(self, run_id: int, dataset_id: int) -> OutputRecord | None:
        o = models.InferenceOutputModel

        def fn(s: Session) -> OutputRecord | None:
            row = s.scalars(sa.select(o).where(o.run_id == run_id, o.dataset_id == dataset_id)).one_or_none()
            return None if row is None else OutputRecord.from_model(row)

        return self._read(fn)

    def list_outputs(self, *, run_id: int | None = None, dataset_id: int | None = None) -> list[OutputRecord]:
        """Inference outputs, oldest first: all, or those of a run and/or a dataset."""
        return self._of_run_and_dataset(models.InferenceOutputModel, OutputRecord, run_id, dataset_id)

    def _of_run_and_dataset(self, model: Any, record: Any, run_id: int | None, dataset_id: int | None) -> list[Any]:
        """The rows of a table keyed by run and dataset (outputs, evaluations) as records, oldest first."""

        def fn(s: Session) -> list[Any]:
            stmt = sa.select(model).order_by(model.id)
            if run_id is not None:
                stmt = stmt.where(model.run_id == run_id)
            if dataset_id is not None:
                stmt = stmt.where(model.dataset_id == dataset_id)
            return [record.from_model(r) for r in s.scalars(stmt)]

        return self._read(fn)

    # -- downstream evaluations --------------------------------------------------------------------------------------
    def add_evaluation(self, *, run_id: int, dataset: str, kind: str, n_images: int, fidelity: float | None,
                       kl: float | None = None, probe_clean: float | None = None, probe_spliced: float | None = None,
                       extra: dict[str, Any] | None = None) -> EvaluationRecord:
        """Record (or replace) the ``kind`` evaluation of ``run_id`` on ``dataset``."""

        def fn(s: Session) -> EvaluationRecord:
            models.RunModel.find_or_raise_by_id(s, run_id)
            ds = models.DatasetModel.find_or_raise_by_name(s, dataset)
            e = models.EvaluationModel
            row = s.scalars(sa.select(e).where(e.run_id == run_id, e.dataset_id == ds.id, e.kind == kind)
                            ).one_or_none()
            if row is None:
                row = e(run_id=run_id, dataset_id=ds.id, kind=kind, n_images=n_images)
                s.add(row)
            row.n_images, row.fidelity, row.kl = n_images, fidelity, kl
            row.probe_clean, row.probe_spliced = probe_clean, probe_spliced
            row.extra = dict(extra or {})
            row.created_at = models.utcnow()
            s.flush()
            return EvaluationRecord.from_model(row)

        return self._write(fn)

    def list_evaluations(self, *, run_id: int | None = None, dataset_id: int | None = None) -> list[EvaluationRecord]:
        """Downstream evaluations, oldest first: all, or those of a run and/or a dataset."""
        return self._of_run_and_dataset(models.EvaluationModel, EvaluationRecord, run_id, dataset_id)

    def runs_of_dataset(self, dataset_id: int) -> list[RunRecord]:
        r = models.RunModel
        return self._read(
            lambda s: [RunRecord.from_model(m) for m in s.scalars(sa.select(r).where(r.dataset_id == dataset_id))]
        )


def _check_transition(status: str, fields: dict[str, Any]) -> None:
    if status not in models.RUN_STATUSES:
        raise errors.ConfigError(f"run status must be one of {models.RUN_STATUSES}, got {status!r}")
    _check_run_fields(fields)


def _transition(s: Session, run_id: int, status: models.RunStatus, fields: dict[str, Any]) -> RunRecord:
    row = models.RunModel.find_or_raise_by_id(s, run_id, for_update=True)
    if status not in models.RUN_TRANSITIONS[models.as_run_status(row.status)] and status != row.status:
        raise errors.InvalidTransitionError(f"run {run_id} cannot go from {row.status} to {status}")
    if status == "running" and row.status != "running":
        row.attempts += 1
        row.started_at = models.utcnow()
        row.heartbeat_at = models.utcnow_sql()
        row.ended_at = None
        row.error = None
    if status in models.TERMINAL_RUN_STATUSES:
        row.ended_at = models.utcnow()
    row.status = status
    for key, value in fields.items():
        setattr(row, key, value)
    s.flush()
    s.refresh(row)
    return RunRecord.from_model(row)


def _batches(values: Sequence[Any], size: int = 1000) -> Iterable[list[Any]]:
    """``values`` in lists of at most ``size``: the parameters of one ``IN (...)`` clause."""
    for start in range(0, len(values), size):
        yield list(values[start:start + size])
