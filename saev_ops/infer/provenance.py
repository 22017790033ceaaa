"""Does an SAE belong on a dataset? Its training dataset's provenance (model weights, preprocessing, token layout)
against the target's, so latents are never computed on another model's activations without a word.

Registry reads only (no torch).
"""

from __future__ import annotations

import logging
from typing import Any

from saev_ops import errors
from saev_ops.datasets import require_complete
from saev_ops.registry import DatasetRecord, Registry, RunRecord
from saev_ops.registry.query import RunQuery
from saev_ops.shards.format import TokenLayout

log = logging.getLogger(__name__)


def _model(d: DatasetRecord) -> dict[str, Any]:
    return dict((d.extra.get("provenance") or {}).get("model") or {})


def _layout(d: DatasetRecord) -> TokenLayout | None:
    tl = d.extra.get("token_layout")
    return TokenLayout.from_json_dict(tl) if tl else None


def mismatches(trained_on: DatasetRecord, target: DatasetRecord, *, tokens: str) -> list[str]:
    """What differs between the dataset an SAE was trained on and ``target``, for an SAE reading ``tokens``: the
    model (weights hash where both know it, else family and checkpoint), the preprocessing, the token layout of the
    selected tokens. Empty when they match or are the same dataset."""
    if trained_on.id == target.id:
        return []
    out = []
    a, b = _model(trained_on), _model(target)
    if a.get("weights_sha256") and b.get("weights_sha256"):
        if a["weights_sha256"] != b["weights_sha256"]:
            out.append(f"model weights: {a.get('resolved', trained_on.model_ckpt)} (sha256 "
                       f"{a['weights_sha256'][:12]}) vs {b.get('resolved', target.model_ckpt)} (sha256 "
                       f"{b['weights_sha256'][:12]})")
    elif (trained_on.model_family, trained_on.model_ckpt) != (target.model_family, target.model_ckpt):
        out.append(f"model: {trained_on.model_family}:{trained_on.model_ckpt} vs "
                   f"{target.model_family}:{target.model_ckpt}")
    if a.get("preprocess") and b.get("preprocess") and a["preprocess"] != b["preprocess"]:
        out.append(f"preprocessing: {a['preprocess']} vs {b['preprocess']}")
    la, lb = _layout(trained_on), _layout(target)
    if la is not None and lb is not None:
        try:
            na, nb = len(la.indices(tokens)), len(lb.indices(tokens))
        except errors.ConfigError as exc:
            out.append(f"token layout: {exc}")
        else:
            if na != nb:
                out.append(f"token layout: {tokens} selects {na} tokens per image on {trained_on.name} "
                           f"({la.name}), {nb} on {target.name} ({lb.name})")
    return out


def check(run_id: int, trained_on: DatasetRecord, target: DatasetRecord, *, tokens: str, allow: bool) -> list[str]:
    """Refuse (ConfigError) an SAE whose training provenance differs from ``target``'s, unless ``allow``; then the
    differences are logged and returned (to be recorded with the output)."""
    found = mismatches(trained_on, target, tokens=tokens)
    if found and not allow:
        lines = "\n  ".join(found)
        raise errors.ConfigError(f"run {run_id} was trained on dataset {trained_on.name!r}, whose activations differ "
                                 f"from {target.name!r}'s:\n  {lines}\nits latents would not mean the same there; "
                                 "pass --allow-model-mismatch to apply it anyway")
    for m in found:
        log.warning("run %d on %r despite a mismatch (--allow-model-mismatch): %s", run_id, target.name, m)
    return found


def usable_runs(reg: Registry, run_ids: tuple[int, ...], dataset: str, *, allow: bool,
                purpose: str) -> tuple[DatasetRecord, list[RunRecord]]:
    """What inference and evaluation check before any work: the dataset is present and complete, and every run is
    completed with weights and was trained on activations of the same kind (:func:`check`). Returns the dataset and
    the runs (in ``run_ids`` order)."""

    target = require_complete(reg, dataset)
    runs = [reg.get_run(rid) for rid in run_ids]
    for run in runs:
        if run.status != "completed" or not run.checkpoint_path:
            raise errors.ConfigError(f"run {run.id} is {run.status}; only completed runs have {purpose}")
        check(run.id, reg.get_dataset_by_id(run.dataset_id), target, tokens=str(run.config.get("tokens", "patches")),
              allow=allow)
    return target, runs


def resolve_runs(reg: Registry, refs: tuple[str, ...]) -> tuple[int, ...]:
    """Run ids and sweep names (``NAME`` or ``sweep:NAME``: its completed runs) -> run ids, each once, in order."""

    out: list[int] = []
    for ref in refs:
        if ref.isdigit():
            out.append(int(ref))
            continue
        name = ref.removeprefix("sweep:")
        rows = reg.list_runs(RunQuery(sweep=name, statuses=("completed",)))
        if not rows:
            reg.get_sweep(name)  # NotFoundError for an unknown name
            raise errors.ConfigError(f"sweep {name!r} has no completed runs")
        out += [r.run.id for r in rows]
    return tuple(dict.fromkeys(out))
