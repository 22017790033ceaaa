"""Optional dependencies: import one, or fail with one line that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from saev_ops import errors


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``module``, imported; when it is not installed, a ConfigError naming ``saev-ops[extra]`` (not a traceback)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise errors.ConfigError(f"{purpose} needs {module.split('.')[0]}, which is not installed: "
                                 f"pip install 'saev-ops[{extra}]' ({exc})") from None
