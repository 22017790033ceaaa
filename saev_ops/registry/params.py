"""A run's hyperparameters as typed values: the ``run_params`` table (one row per run, written with the run) behind
``runs list --where/--sort/--columns`` on configuration fields and the typed columns of the ``run_table`` view, so
plain SQL needs no dialect's JSON functions.

The parameters themselves (:data:`~saev_ops.runconfig.PARAMS`, :func:`~saev_ops.runconfig.params_of`) are defined
with the run config they come from; a field an architecture does not read (a ReLU's ``k``) is NULL.
"""

from __future__ import annotations

from typing import Any

from saev_ops.runconfig import PARAMS, params_of

__all__ = ["PARAMS", "params_of", "parse_value"]


def parse_value(key: str, raw: str) -> Any:
    """``raw`` as the type of parameter ``key``; ValueError when it is not one."""
    kind = PARAMS[key]
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    return raw
