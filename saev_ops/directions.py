"""Which way is better for each metric, and what it counts, defined once: the Pareto frontier, ``runs list --sort``,
the report and the plot titles all read it.

A key is a metric name (``nmse``), a held-out one (``val/nmse``) or a hyperparameter (``lr``: no direction). Torch-free:
the registry's sorting reads it.
"""

from __future__ import annotations

from typing import Literal

Better = Literal["lower", "higher"]

_BETTER: dict[str, Better] = {
    "loss": "lower", "mse": "lower", "nmse": "lower", "l0": "lower", "dead_frac": "lower", "dense_frac": "lower",
    "unfired_frac": "lower", "kl": "lower",
    "fidelity": "higher", "explained_variance": "higher", "cosine": "higher", "probe_acc": "higher",
    "probe_clean": "higher", "probe_spliced": "higher",
}


MEANING: dict[str, str] = {
    "nmse": "squared reconstruction error over the data's variance around its mean (0 is perfect, 1 no better than "
            "the mean)",
    "l0": "latents active per row",
    "explained_variance": "share of the data's variance the reconstruction explains",
    "dead_frac": "share of latents that have not fired in the last dead_tokens training tokens (what AuxK revives)",
    "dense_frac": "share of latents that fire on more than 10% of the rows",
    "unfired_frac": "share of latents that never fired on the rows evaluated (the held-out sample, or an output's "
                    "whole dataset); not given when there are fewer than 4 rows a latent",
    "fidelity": "how much of the model's output survives the SAE spliced in (1 = all, 0 = as bad as the mean)",
    "kl": "KL divergence of the model's class distribution with the SAE spliced in",
    "probe_acc": "a linear probe's accuracy on the spliced representation",
    "cosine": "mean cosine between rows and their reconstructions",
    "shrinkage": "mean norm of reconstructions over rows' (below 1: shrunk)",
}
"""One line per metric; ``val/KEY`` is KEY on the held-out dataset."""


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
