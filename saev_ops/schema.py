"""The base of saev-ops' configuration schemas: one typed definition per configuration validates, documents (field
docstrings become descriptions) and parses it, from grid.yaml, the command line or a stored config alike."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

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
