"""A run's hyperparameters as typed values: the ``run_params`` table (one row per run, written with the run) behind
``runs list --where/--sort/--columns`` on configuration fields and the typed columns of the ``run_table`` view, so
plain SQL needs no dialect's JSON functions.

:data:`PARAMS` is the one list of them; ``migrations/versions/0005_judgement.py`` freezes the same list as schema (a
test keeps the two equal). A field an architecture does not read (a ReLU's ``k``) is NULL.
"""

from __future__ import annotations

from typing import Any

from saev_ops import tokens
from saev_ops.runconfig import ADDED_SETTINGS, RUN_KEY_DEFAULTS
from saev_ops.sae.config import ARCH_FIELDS, fields_read

PARAMS: dict[str, type] = {
    "arch": str, "d_model": int, "d_sae": int, "k": int, "l1_coeff": float, "l0_coeff": float, "aux_k": int,
    "aux_coeff": float, "dead_tokens": int, "lr": float, "seed": int, "layer": int, "tokens": str,
    "batch_size": int, "n_tokens": int, "grad_clip": float, "data_init_blend": float,
}
_TOP = tuple(RUN_KEY_DEFAULTS)  # lr, seed, layer, tokens
_TRAIN = ("batch_size", "n_tokens", "grad_clip", "data_init_blend")


def params_of(config: dict[str, Any]) -> dict[str, Any]:
    """The typed parameters of a stored run config (None where absent, not read by the architecture, or mistyped)."""
    sae_value, train_value = config.get("sae"), config.get("train")
    sae: dict[str, Any] = sae_value if isinstance(sae_value, dict) else {}
    train: dict[str, Any] | None = train_value if isinstance(train_value, dict) else None
    arch = sae.get("arch")
    reads = set(fields_read(sae)) | {"arch", "d_model", "d_sae"} if arch in ARCH_FIELDS else set(sae)
    raw: dict[str, Any] = {k: sae.get(k) for k in PARAMS if k in reads}
    raw.update({k: config.get(k) for k in _TOP})
    raw["tokens"] = tokens.OLD_NAMES.get(raw["tokens"], raw["tokens"])  # one name per selection (migration 0008)
    if train is not None:  # imported SAEs have no training settings
        raw.update({k: train.get(k, ADDED_SETTINGS.get(k)) for k in _TRAIN})
    return {k: _coerce(raw.get(k), PARAMS[k]) for k in PARAMS}


def _coerce(value: Any, kind: type) -> Any:
    if value is None or isinstance(value, (dict, list)):
        return None
    if kind is str:
        return str(value)
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def parse_value(key: str, raw: str) -> Any:
    """``raw`` as the type of parameter ``key``; ValueError when it is not one."""
    kind = PARAMS[key]
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    return raw
