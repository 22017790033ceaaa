"""The base of saev-ops' configuration schemas: one typed definition per configuration validates, documents (field
docstrings become descriptions) and parses it, from grid.yaml, the command line or a stored config alike.

The field types below check as grid.yaml's readers expect, each problem a ``must be ..., got ...`` message: a
number given as an integer stays one (a run's identity hashes it as written), a string is not a number, a boolean not
an integer. Checks across fields raise :class:`FieldProblems`; :func:`field_problems` reads every problem of a
validation error back with its field."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError

from saev_ops import errors


class Schema(BaseModel):
    """Frozen, unknown keys refused, attribute docstrings kept as field descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``key: what is wrong`` line per problem of a validation error."""
    return [f"{prefix}{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]


def parse_pairs(schema: type[Schema], pairs: list[str] | tuple[str, ...], option: str) -> Schema:
    """``KEY=VALUE`` pairs (a command-line option) validated by ``schema``; every problem in one ConfigError."""
    values: dict[str, str] = {}
    bad = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            bad.append(f"{pair!r}: expected KEY=VALUE")
        else:
            values[key] = raw
    try:
        parsed = schema.model_validate(values)
    except ValidationError as exc:
        bad += problems(exc)
        parsed = None
    if bad or parsed is None:
        keys = ", ".join(f"{k} (default {f.default})" for k, f in schema.model_fields.items())
        raise errors.ConfigError(f"bad {option} option(s): " + "; ".join(bad) + f". Keys: {keys}")
    return parsed


def _problem(message: str, value: Any) -> PydanticCustomError:
    return PydanticCustomError("saev_ops", message + ", got {got}", {"got": repr(value)})


def _integer(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _problem("must be an integer", value)
    return value


def _positive(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise _problem("must be a finite number > 0", value)
    return value


def _positive_integer(value: Any) -> int:
    if _integer(value) <= 0:
        raise _problem("must be > 0", value)
    return value


def _non_negative(value: Any) -> float:
    if _number(value) < 0:
        raise _problem("must be >= 0", value)
    return value


def _number(value: Any) -> float:
    """A finite number, kept as given (an integer stays one: a run's identity hashes it as written)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _problem("must be a finite number", value)
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _problem("must be true or false", value)
    return value


def _sizes(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or any(not isinstance(v, int) or isinstance(v, bool) for v in value):
        raise _problem("must be a list of integers", value)
    return tuple(value)


def choice(*options: str, listed: tuple[str, ...] | None = None) -> PlainValidator:
    """One of ``options`` (the message lists ``listed``, default all of them: old names accepted go unlisted)."""

    def check(value: Any) -> str:
        if value not in options:
            raise _problem(f"must be one of {', '.join(listed or options)}", value)
        return str(value)

    return PlainValidator(check, json_schema_input_type=str)


Integer = Annotated[int, PlainValidator(_integer, json_schema_input_type=int)]
Number = Annotated[float, PlainValidator(_number, json_schema_input_type=float)]
PositiveInteger = Annotated[int, PlainValidator(_positive_integer, json_schema_input_type=int)]
NonNegative = Annotated[float, PlainValidator(_non_negative, json_schema_input_type=float)]
Positive = Annotated[float, PlainValidator(_positive, json_schema_input_type=float)]
Flag = Annotated[bool, PlainValidator(_flag, json_schema_input_type=bool)]
Sizes = Annotated[tuple[int, ...], PlainValidator(_sizes, json_schema_input_type=list[int])]


class FieldProblems(ValueError):
    """What a config's checks across fields found: (field, what is wrong) for each."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{k} {m}" for k, m in problems))
        self.problems = problems


def field_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """(field, what is wrong) for each problem of a validation error: the checks across fields of a schema raise
    :class:`FieldProblems`, each with its field."""
    out = []
    for e in exc.errors():
        error = (e.get("ctx") or {}).get("error")
        if isinstance(error, FieldProblems):
            out += error.problems
        else:
            out.append((".".join(str(x) for x in e["loc"]) or "value", e["msg"]))
    return out
