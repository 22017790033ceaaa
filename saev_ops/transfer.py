"""Registered runs in and out: ``saev-ops runs import`` (a saev or SAELens SAE becomes a completed run on a dataset)
and ``saev-ops runs export`` (a run's SAE in saev's or SAELens' format)."""

from __future__ import annotations

import logging
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from saev_ops import errors, paths
from saev_ops.registry import Registry, RunRecord
from saev_ops.sae import interop
from saev_ops.sae.config import TopKConfig
from saev_ops.sae.io import load_sae, save_sae
from saev_ops.shards import ShardReader
from saev_ops.shards.format import TokenLayout

if TYPE_CHECKING:
    from saev_ops.sae.modules import SAE

FORMATS = ("saev", "saelens")
log = logging.getLogger(__name__)


def import_run(reg: Registry, source: pathlib.Path, *, dataset: str, layer: int | None = None,
               tokens: str = "patches", runs_root: pathlib.Path | None = None) -> tuple[RunRecord, bool]:
    """Register the SAE at ``source`` (a saev checkpoint file or a SAELens directory) as a completed run on
    ``dataset``, reading ``layer`` (default: the dataset's only layer) and ``tokens``. The same file imported twice
    is one run. Returns (run, created)."""
    from saev_ops.runconfig import run_identity

    source = pathlib.Path(source).resolve()
    fmt, sae, _info = interop.read_foreign(source)
    ds = reg.get_dataset(dataset)
    if ds.status != "complete":
        raise errors.ConfigError(f"dataset {dataset!r} is {ds.status}; import SAEs onto a complete dataset")
    if sae.cfg.d_model != ds.d_model:
        raise errors.ConfigError(f"{source}: the SAE reads d_model {sae.cfg.d_model}, dataset {dataset!r} has "
                                 f"{ds.d_model}")
    if layer is None:
        if len(ds.layers) != 1:
            raise errors.ConfigError(f"dataset {dataset!r} has layers {list(ds.layers)}: say which one the SAE reads "
                                     "(--layer)")
        layer = ds.layers[0]
    if layer not in ds.layers:
        raise errors.ConfigError(f"--layer {layer}: dataset {dataset!r} has layers {list(ds.layers)}")
    layout = ds.extra.get("token_layout")
    if layout:
        TokenLayout.from_json_dict(layout).indices(tokens)  # refuses a selection the dataset does not have
    config: dict[str, Any] = {"sae": sae.cfg.to_dict(), "layer": layer, "tokens": tokens,
                              "imported": {"format": fmt, "path": str(source),
                                           "sha256": interop.file_sha256(source)}}
    ((run, created),) = reg.add_runs(dataset, [config], identities=[run_identity(config)])
    if not created and run.status == "completed":
        return run, False
    root = runs_root or paths.default_runs_root("imported")
    target = paths.sae_dir(root, run.id)
    save_sae(sae, target, scale=1.0, dataset_hash=ds.content_hash, layer=layer,
             extra={"run_id": run.id, "tokens": tokens, "imported_from": config["imported"]})
    reg.transition_run(run.id, "running", executor="import")
    run = reg.transition_run(run.id, "completed", checkpoint_path=str(target))
    return run, True


SAMPLE_ROWS = 8192
"""Rows of a run's dataset the saev export checks its TopK's ReLU on."""


def relu_topk_difference(sae: SAE, k: int, dataset_path: str, layer: int, tokens: str, scale: float) -> float:
    """The share of the first :data:`SAMPLE_ROWS` rows of the dataset (the run's layer and tokens) whose ``k`` largest
    pre-activations include a negative one: where a TopK with a ReLU and saev's TopK (none) give other latents."""
    import torch

    reader = ShardReader(dataset_path)
    cols = reader.layout.indices(tokens)
    n = min(reader.md.n_examples, -(-SAMPLE_ROWS // len(cols)))
    rows = reader.read(0, n, reader.layer_index(layer))[:, cols].reshape(-1, reader.md.d_model)
    with torch.no_grad():
        pre = sae.pre_acts(torch.from_numpy(np.ascontiguousarray(rows)).float() * scale)
        low = pre.topk(k, dim=-1).values[:, -1]
    return float((low < 0).float().mean())


def export_run(reg: Registry, run_id: int, fmt: str, out: pathlib.Path, *, strict: bool = False) -> pathlib.Path:
    """Write run ``run_id``'s SAE to ``out`` in ``fmt`` (saev: a file; saelens: a directory). A TopK with a ReLU goes
    to saev (whose TopK has none) with a warning saying on what share of the dataset's rows that changes its latents;
    ``strict`` refuses it instead."""
    if fmt not in FORMATS:
        raise errors.ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = reg.get_run(run_id)
    if run.status != "completed" or not run.checkpoint_path:
        raise errors.ConfigError(f"run {run_id} is {run.status}; only completed runs have an SAE to export")
    sae, meta = load_sae(pathlib.Path(run.checkpoint_path))
    ds = reg.get_dataset_by_id(run.dataset_id)
    meta = {**meta, "model": f"{ds.model_family}:{ds.model_ckpt}", "dataset": ds.name, "run_id": run_id}
    if fmt == "saev" and isinstance(sae.cfg, TopKConfig) and sae.cfg.topk_relu:
        share = relu_topk_difference(sae, sae.cfg.k, ds.path, int(meta["layer"]), str(meta.get("tokens", run.config.get(
            "tokens", "patches"))), float(meta.get("scale", 1.0)))
        note = (f"saev's TopK has no ReLU: run {run_id}'s TopK keeps only positive values, so saev computes other "
                f"latents on {100 * share:.2f}% of the first rows of {ds.name!r} (rows whose k largest pre-activations "
                "include a negative one)")
        if strict:
            raise errors.ConfigError(f"{note}; --strict refuses it (leave --strict out to export it all the same)")
        log.warning("%s", note)
    if fmt == "saev":
        return interop.export_saev(sae, meta, out)
    return interop.export_saelens(sae, meta, out)
