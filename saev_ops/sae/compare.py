"""Are two SAEs the same dictionary? Cosine similarity between their decoder atoms (rows of ``W_dec``, compared as
directions):

- ``best_match_ab``: mean over A's atoms of the highest cosine with any of B's (and ``best_match_ba`` the other way);
- ``matched``: mean cosine of a one-to-one matching of atoms that maximises the total (the Hungarian algorithm,
  ``scipy.optimize.linear_sum_assignment``), and ``matched_above``: the fraction of matched pairs above
  ``threshold``. Skipped (None) past ``max_matching`` atoms, where its cubic cost would dominate.

Runs of one sweep often start from nearly the same decoder (the same seed draws the same first atoms whatever the
width), and briefly trained SAEs stay close to where they started, so :func:`saev_ops.explore.compare.compare_runs` also
gives each figure for the runs' initial decoders (:func:`initial_sae`, from their seed and config) and says when two
runs shared an initialisation.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from saev_ops import errors
from saev_ops.sae import build_sae
from saev_ops.sae.config import SAEConfig

if TYPE_CHECKING:
    from saev_ops.sae.modules import SAE

MAX_MATCHING = 8192
CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class Similarity:
    best_match_ab: float
    best_match_ba: float
    matched: float | None
    matched_above: float | None
    pairs: np.ndarray | None
    """(n, 2) matched atom indices (A, B), where matched."""


def _directions(sae: SAE) -> torch.Tensor:
    w = sae.W_dec.detach().float()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def dictionary_similarity(a: Any, b: Any, *, threshold: float = 0.9, max_matching: int = MAX_MATCHING) -> Similarity:
    """Compare the decoders of SAEs ``a`` and ``b`` (same d_model)."""
    da, db = _directions(a), _directions(b)
    if da.shape[1] != db.shape[1]:
        raise errors.ConfigError(f"the SAEs read different widths ({da.shape[1]} and {db.shape[1]})")
    best_b = torch.full((db.shape[0],), -1.0)
    best_a = []
    for start in range(0, da.shape[0], CHUNK):  # never the whole matrix at once for wide SAEs
        cos = da[start:start + CHUNK] @ db.T
        best_a.append(cos.max(dim=1).values)
        best_b = torch.maximum(best_b, cos.max(dim=0).values)
    out_ab, out_ba = float(torch.cat(best_a).mean()), float(best_b.mean())
    if max(da.shape[0], db.shape[0]) > max_matching:
        return Similarity(out_ab, out_ba, None, None, None)
    from scipy.optimize import linear_sum_assignment

    full = (da @ db.T).double().numpy()
    rows, cols = linear_sum_assignment(full, maximize=True)
    vals = full[rows, cols]
    return Similarity(out_ab, out_ba, float(vals.mean()), float((vals > threshold).mean()),
                      np.stack([rows, cols], axis=1))


SHARED_INIT = 0.5
"""Initial decoders whose mean best-match cosine passes this started from (nearly) the same dictionary: random atoms
of independent draws are almost orthogonal in any useful width."""


@dataclasses.dataclass(frozen=True)
class Comparison:
    run_a: int
    run_b: int
    trained: Similarity
    initial: Similarity | None
    """The same figures for the runs' initial decoders; None when one cannot be rebuilt (a data-initialised run, an
    imported SAE)."""

    @property
    def shared_init(self) -> bool:
        return self.initial is not None and min(self.initial.best_match_ab, self.initial.best_match_ba) > SHARED_INIT


def initial_sae(config: dict[str, Any], d_model: int) -> Any:
    """The SAE a run of ``config`` started from (its seed and SAE config), or None where that needs its data
    (``data_init_blend`` > 0) or the run was not trained here (no seed or train settings)."""

    train = config.get("train")
    if not isinstance(train, dict) or "seed" not in config or float(train.get("data_init_blend", 0.0) or 0.0) > 0:
        return None
    return build_sae(SAEConfig.from_dict({**config["sae"], "d_model": d_model}), seed=int(config["seed"]))
