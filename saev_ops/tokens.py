"""The token vocabulary, defined once: which of an image's tokens a recording stores (``datasets record --tokens``) and
which of a dataset's tokens a run trains on (``tokens:`` in grid.yaml, :class:`~saev_ops.loaders.ShardSelection`) use
the same names for the same selections.

A model's token axis is CLS (when it has one), then registers (DINOv2 with registers, ...), then patches.
"""

from __future__ import annotations

from saev_ops import errors

SELECTIONS: dict[str, str] = {
    "cls+patches": "CLS and patches, registers dropped (saev's layout)",
    "patches": "patches only",
    "cls": "CLS only",
    "all": "CLS, registers and patches",
    "special": "CLS and registers",
}
"""Every selection and what it keeps."""

RECORDABLE = ("cls+patches", "patches", "cls", "all")
"""The selections a recording may store (``special`` only selects, at train time, from what was stored)."""

OLD_NAMES = {"no-registers": "cls+patches"}
"""Names used before the vocabulary was one: still read (stored run configs keep them), with a warning in grid files."""


def canonical(name: str) -> str:
    """``name`` in the current vocabulary (an old name maps to its new one); ConfigError for an unknown name."""
    name = OLD_NAMES.get(name, name)
    if name not in SELECTIONS:
        raise errors.ConfigError(f"tokens must be one of {', '.join(SELECTIONS)}, got {name!r}")
    return name


_IDENTITY_NAMES = {new: old for old, new in OLD_NAMES.items()}


def identity_name(name: str) -> str:
    """The name a run's identity hashes for a selection: the one runs were registered with before the vocabulary was
    one (``no-registers`` for ``cls+patches``), so a selection has one identity whichever name a grid file uses."""
    name = canonical(name)
    return _IDENTITY_NAMES.get(name, name)
