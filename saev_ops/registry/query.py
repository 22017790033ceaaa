"""``runs list`` filters and sorting: parse ``--where``/``--sort`` and build one SQL statement.

A ``--where`` term is ``KEY OP VALUE`` with OP one of ``< <= > >= = == !=``. KEY is a run column (see
:data:`RUN_COLUMNS`), a hyperparameter (:data:`saev_ops.registry.params.PARAMS`: ``arch``, ``d_sae``, ``k``, ``lr``
= the configured learning rate, ...), or else the name of a summary metric (the last logged value of that key, e.g.
``nmse``, ``val/nmse``, ``fidelity``). Metric terms and a metric sort key become joins on ``metric_summaries``
(primary key ``(run_id, key)``), hyperparameters one join on ``run_params``, so a filtered, sorted, limited listing
touches only the runs of the chosen dataset/sweep, with the same SQL on SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from saev_ops import errors
from saev_ops.directions import best_first_descending
from saev_ops.registry.models import RUN_STATUSES, MetricSummaryModel, RunModel, RunParamsModel
from saev_ops.registry.params import PARAMS, parse_value

_WHERE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_./-]*)\s*(<=|>=|==|!=|<|>|=)\s*(\S.*?)\s*$")
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
}

# Run columns usable in --where and --sort, with the Python type their values are parsed as.
RUN_COLUMNS: dict[str, tuple[Any, type]] = {
    "id": (RunModel.id, int),
    "status": (RunModel.status, str),
    "executor": (RunModel.executor, str),
    "host": (RunModel.host, str),
    "slurm_job_id": (RunModel.slurm_job_id, str),
    "attempts": (RunModel.attempts, int),
    "config_hash": (RunModel.config_hash, str),
    "created_at": (RunModel.created_at, dt.datetime),
    "started_at": (RunModel.started_at, dt.datetime),
    "ended_at": (RunModel.ended_at, dt.datetime),
    "heartbeat_at": (RunModel.heartbeat_at, dt.datetime),
}
_INT64 = (-(2**63), 2**63 - 1)
_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?$")


@dataclasses.dataclass(frozen=True)
class Condition:
    key: str
    op: str
    value: float | int | str | dt.datetime
    is_metric: bool
    is_param: bool = False


@dataclasses.dataclass(frozen=True)
class SortKey:
    key: str
    descending: bool
    is_metric: bool
    is_param: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunQuery:
    """What ``runs list`` asks for. Every field is optional."""

    dataset: str | None = None
    """Only runs trained on this dataset (by name)."""
    sweep: str | None = None
    """Only runs of this sweep (by name)."""
    statuses: tuple[str, ...] = ()
    """Only runs in one of these statuses (user input: checked by :meth:`Registry.list_runs`)."""
    where: tuple[str, ...] = ()
    """Filters such as ``nmse<0.2`` or ``status=completed``; all must hold."""
    sort: str | None = None
    """A metric or column to sort by, best first (``fidelity`` descending, ``nmse`` ascending); ``+``/``-`` before it
    sorts ascending/descending. Default: run id."""
    limit: int | None = None
    """At most this many rows."""

    def keys(self) -> list[str]:
        """The keys it sorts and filters on, each once, the sort key first (what a listing shows first); parsed as
        the query is, so a bad expression is the same QueryError."""
        keys = ([parse_sort(self.sort).key] if self.sort else []) + [parse_condition(w).key for w in self.where]
        return list(dict.fromkeys(keys))


# A metric logged under a hyperparameter's name (the trainer's scheduled learning rate, ``lr``) is shown and queried
# under another, so each name means one thing: ``lr`` is the configured learning rate, ``lr_final`` the last step's.
SHOWN_AS = {"lr": "lr_final"}
_STORED_AS = {shown: stored for stored, shown in SHOWN_AS.items()}


def stored_key(name: str) -> str:
    """The key a summary metric is stored under, from the name it is shown and queried by."""
    return _STORED_AS.get(name, name)


def parse_condition(text: str) -> Condition:
    m = _WHERE_RE.match(text)
    if m is None:
        raise errors.QueryError(
            f"bad --where expression {text!r}: expected KEY OP VALUE with OP one of < <= > >= = == != (e.g. 'nmse<0.2')"
        )
    key, op, raw = m.groups()
    if key in PARAMS and key not in RUN_COLUMNS:
        try:
            return Condition(key, op, parse_value(key, raw), is_metric=False, is_param=True)
        except ValueError:
            type_name = PARAMS[key].__name__
            raise errors.QueryError(f"bad --where expression {text!r}: {key} is a hyperparameter of type {type_name}, "
                                    f"got {raw!r}") from None
    if key in RUN_COLUMNS:
        kind = RUN_COLUMNS[key][1]
        if key == "status" and raw not in RUN_STATUSES:
            raise errors.QueryError(
                f"bad --where expression {text!r}: status must be one of {', '.join(RUN_STATUSES)}, got {raw!r}"
            )
        if kind is int:
            try:
                number = int(raw)
            except ValueError:
                raise errors.QueryError(
                    f"bad --where expression {text!r}: {key} is an integer column, got {raw!r}"
                ) from None
            if not _INT64[0] <= number <= _INT64[1]:
                raise errors.QueryError(f"bad --where expression {text!r}: {raw} is outside the 64-bit integer range")
            return Condition(key, op, number, is_metric=False)
        if kind is dt.datetime:
            return Condition(key, op, parse_timestamp(text, key, raw), is_metric=False)
        return Condition(key, op, raw, is_metric=False)
    try:
        value = float(raw)
    except ValueError:
        raise errors.QueryError(
            f"bad --where expression {text!r}: {key!r} is a metric, so its value must be a number, got {raw!r}"
        ) from None
    if math.isnan(value):
        raise errors.QueryError(f"bad --where expression {text!r}: NaN compares false with everything")
    return Condition(key, op, value, is_metric=True)


def parse_timestamp(text: str, key: str, raw: str) -> dt.datetime:
    """A UTC timestamp from ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` or ``YYYY-MM-DD[ T]HH:MM[:SS]`` (partial dates mean
    their first instant); compared as a timestamp on every backend."""
    m = _PARTIAL_DATE.match(raw)
    try:
        if m:
            return dt.datetime(int(m.group(1)), int(m.group(2) or 1), 1)
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        value = None
    if value is None:
        raise errors.QueryError(f"bad --where expression {text!r}: {key} is a UTC timestamp; expected YYYY, YYYY-MM, "
                                f"YYYY-MM-DD or 'YYYY-MM-DD HH:MM[:SS]', got {raw!r}")
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def parse_sort(text: str) -> SortKey:
    """``KEY`` sorts best first (a metric's direction, :mod:`saev_ops.directions`: ``nmse`` ascending, ``fidelity``
    descending; ascending for keys with none), ``+KEY`` ascending, ``-KEY`` descending."""
    key = text[1:] if text[:1] in "+-" else text
    descending = text.startswith("-") or (not text.startswith("+") and best_first_descending(key))
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", key):
        raise errors.QueryError(f"bad --sort key {text!r}: expected a metric or column name (best first), '+' or '-' "
                                "before it for ascending or descending")
    is_param = key in PARAMS and key not in RUN_COLUMNS
    return SortKey(key, descending, is_metric=key not in RUN_COLUMNS and not is_param, is_param=is_param)


def build_run_select(
    conditions: Sequence[Condition],
    sort: SortKey | None,
    *,
    dataset_id: int | None,
    sweep_id: int | None,
    statuses: Sequence[str],
    limit: int | None,
) -> sa.Select:
    """SELECT of run ids matching the query, in order. Metric keys share one join each."""
    stmt = sa.select(RunModel.id)
    joins: dict[str, Any] = {}

    def summary_alias(key: str, *, outer: bool) -> Any:
        nonlocal stmt
        if key in joins:
            return joins[key]
        alias = sa.orm.aliased(MetricSummaryModel, name=f"ms{len(joins)}")
        on = sa.and_(alias.run_id == RunModel.id, alias.key == stored_key(key))
        stmt = stmt.outerjoin(alias, on) if outer else stmt.join(alias, on)
        joins[key] = alias
        return alias

    params_joined = False

    def param(key: str) -> Any:
        nonlocal stmt, params_joined
        if not params_joined:
            stmt = stmt.outerjoin(RunParamsModel, RunParamsModel.run_id == RunModel.id)
            params_joined = True
        return getattr(RunParamsModel, key)

    for cond in conditions:
        if cond.is_metric:
            alias = summary_alias(cond.key, outer=False)
            stmt = stmt.where(_OPS[cond.op](alias.value, cond.value))
        elif cond.is_param:
            col = param(cond.key)  # joins first: stmt.where(...) would bind the statement before the join
            stmt = stmt.where(_OPS[cond.op](col, cond.value))
    if dataset_id is not None:
        stmt = stmt.where(RunModel.dataset_id == dataset_id)
    if sweep_id is not None:
        stmt = stmt.where(RunModel.sweep_id == sweep_id)
    if statuses:
        stmt = stmt.where(RunModel.status.in_(list(statuses)))
    for cond in conditions:
        if not cond.is_metric and not cond.is_param:
            stmt = stmt.where(_OPS[cond.op](RUN_COLUMNS[cond.key][0], cond.value))
    if sort is not None:
        if sort.is_metric:
            col = summary_alias(sort.key, outer=True).value
        elif sort.is_param:
            col = param(sort.key)
        else:
            col = RUN_COLUMNS[sort.key][0]
        order = col.desc() if sort.descending else col.asc()
        stmt = stmt.order_by(order.nulls_last(), RunModel.id)
    else:
        stmt = stmt.order_by(RunModel.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return stmt
