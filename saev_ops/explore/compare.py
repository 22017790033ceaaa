"""``saev-ops runs compare``: every pair of registered runs' SAEs, trained and at initialisation
(:mod:`saev_ops.sae.compare` holds the figures)."""

from __future__ import annotations

import itertools
import pathlib
from typing import Any

from saev_ops import errors
from saev_ops.infer import provenance
from saev_ops.sae.compare import Comparison, dictionary_similarity, initial_sae
from saev_ops.sae.io import load_sae


def compare_runs(reg: Any, run_ids: tuple[int, ...], *, threshold: float = 0.9) -> list[Comparison]:
    """Every pair of the runs' SAEs, which must read the same layer of activations of one kind (same model,
    preprocessing and token layout; :func:`saev_ops.infer.provenance.mismatches`)."""

    if len(run_ids) < 2:
        raise errors.ConfigError("compare needs at least two runs")
    runs = [reg.get_run(i) for i in run_ids]
    saes = {}
    for run in runs:
        if run.status != "completed" or not run.checkpoint_path:
            raise errors.ConfigError(f"run {run.id} is {run.status}; only completed runs have an SAE to compare")
        saes[run.id] = load_sae(pathlib.Path(run.checkpoint_path))[0]
    first = runs[0]
    for run in runs[1:]:
        if run.config.get("layer") != first.config.get("layer"):
            raise errors.ConfigError(f"runs {first.id} and {run.id} read different layers ({first.config.get('layer')} "
                                     f"and {run.config.get('layer')}): their dictionaries live in different spaces")
        found = provenance.mismatches(reg.get_dataset_by_id(first.dataset_id), reg.get_dataset_by_id(run.dataset_id),
                                      tokens=str(run.config.get("tokens", "patches")))
        if found:
            raise errors.ConfigError(f"runs {first.id} and {run.id} were trained on different activations: "
                                     + "; ".join(found))
    by_id = {r.id: r for r in runs}
    starts = {i: initial_sae(by_id[i].config, saes[i].W_dec.shape[1]) for i in run_ids}
    out = []
    for a, b in itertools.combinations(run_ids, 2):
        initial = None
        if starts[a] is not None and starts[b] is not None:
            initial = dictionary_similarity(starts[a], starts[b], threshold=threshold)
        out.append(Comparison(a, b, dictionary_similarity(saes[a], saes[b], threshold=threshold), initial))
    return out
