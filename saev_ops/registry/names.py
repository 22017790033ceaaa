"""The one rule for registry names (datasets, sweeps): what a shell, a path and both backends take alike."""

from __future__ import annotations

import re

from saev_ops import errors

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_NAME_LENGTH = 200  # below the columns' 255 on PostgreSQL; SQLite enforces no length, so this check does
_NAME_RE = re.compile(NAME_PATTERN)


def check_name(kind: str, name: object) -> str:
    """``name`` if it is a valid ``kind`` name, else ConfigError saying what is allowed."""
    if not isinstance(name, str) or not name.strip():
        raise errors.ConfigError(f"{kind} name must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise errors.ConfigError(f"{kind} name is {len(name)} characters long; at most {MAX_NAME_LENGTH} allowed")
    if not _NAME_RE.fullmatch(name):
        raise errors.ConfigError(f"{kind} name {name!r} is not allowed: use letters, digits, '_', '.' and '-', "
                                 "starting with a letter or digit (no spaces or newlines)")
    return name
