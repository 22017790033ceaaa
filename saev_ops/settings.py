"""The one place that resolves where saev-ops keeps things: its home directory and database URL."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

HOME_ENV = "SAEV_OPS_HOME"
DB_URL_ENV = "SAEV_OPS_DB_URL"
DEFAULT_HOME_NAME = ".saev-ops"
REGISTRY_FILENAME = "registry.sqlite"


def home_dir(environ: Mapping[str, str] | None = None) -> pathlib.Path:
    """``$SAEV_OPS_HOME`` if set, else ``~/.saev-ops``. Not created here."""
    env = os.environ if environ is None else environ
    value = env.get(HOME_ENV)
    if value:
        return pathlib.Path(value).expanduser()
    return pathlib.Path.home() / DEFAULT_HOME_NAME


def resolve_db_url(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The registry URL: ``explicit`` (``--db``), else ``$SAEV_OPS_DB_URL``, else an SQLite file in :func:`home_dir`.

    A bare filesystem path is accepted and turned into an ``sqlite:///`` URL.
    """
    env = os.environ if environ is None else environ
    url = explicit or env.get(DB_URL_ENV)
    if not url:
        return "sqlite:///" + str(home_dir(env) / REGISTRY_FILENAME)
    if "://" not in url:
        return "sqlite:///" + str(pathlib.Path(url).expanduser().resolve())
    return url


def default_data_root(environ: Mapping[str, str] | None = None) -> pathlib.Path:
    """Where datasets, runs and outputs go when the user does not say: ``<home>/data``."""
    return home_dir(environ) / "data"
