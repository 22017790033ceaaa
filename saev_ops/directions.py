"""Which way is better for each metric, defined once: the Pareto frontier, ``runs list --sort``, the report and the
plot titles all read it.

A key is a metric name (``nmse``), a held-out one (``val/nmse``) or a hyperparameter (``lr``: no direction). Torch-free:
the registry's sorting reads it.
"""

from __future__ import annotations

from typing import Literal

Better = Literal["lower", "higher"]

_BETTER: dict[str, Better] = {
    "loss": "lower", "mse": "lower", "nmse": "lower", "l0": "lower", "dead_frac": "lower", "dense_frac": "lower",
    "kl": "lower",
    "fidelity": "higher", "explained_variance": "higher", "cosine": "higher", "probe_acc": "higher",
    "probe_clean": "higher", "probe_spliced": "higher",
}


def better(key: str) -> Better | None:
    """``lower`` or ``higher`` for a metric (its held-out ``val/`` form too); None for a key with no direction (a
    hyperparameter, an unknown metric)."""
    return _BETTER.get(key.removeprefix("val/"))


def best_first_descending(key: str) -> bool:
    """Whether sorting best first means descending (a higher-is-better metric); ascending otherwise."""
    return better(key) == "higher"


def describe(*keys: str) -> str:
    """The directions of ``keys`` for a title: ``lower l0 and higher fidelity are better``; keys with no direction are
    taken as lower-is-better and said so."""
    parts = [f"{better(k) or 'lower (assumed)'} {k}" for k in keys]
    return " and ".join(parts) + (" are better" if len(parts) > 1 else " is better")
