"""Inference: stream a dataset once in order, apply one or many trained SAEs, write each one's latents as a scipy CSR
``.npz`` (rows = example x token, columns = latents) plus per-latent statistics, and register it.

Memory stays bounded: each block of rows is appended to raw ``indices``/``data`` files on disk, and the ``.npz`` is
assembled from those files (memory-mapped) at the end, in scipy's ``save_npz`` layout. Everything is written into a
temporary directory that is renamed into place, and only then registered. An existing output is a no-op unless
``force``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import shutil
from typing import Any

import numpy as np

from saev_ops import atomic, errors, paths
from saev_ops.infer import provenance
from saev_ops.progress import Progress
from saev_ops.registry import DatasetRecord, OutputRecord, Registry, RunRecord

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class InferSpec:
    db_url: str
    run_ids: tuple[int, ...]
    dataset: str
    out_root: str
    batch_size: int = 16384
    device: str = "cpu"
    force: bool = False
    allow_model_mismatch: bool = False
    """Apply SAEs whose training data came from another model, preprocessing or token layout (logged, recorded)."""


class _CsrWriter:
    def __init__(self, tmp: pathlib.Path, d_sae: int) -> None:
        self.tmp = tmp
        self.d_sae = d_sae
        self.indices = open(tmp / "indices.bin", "wb")
        self.data = open(tmp / "data.bin", "wb")
        self.counts: list[np.ndarray] = []
        self.freq = np.zeros(d_sae, dtype=np.int64)
        self.sum = np.zeros(d_sae, dtype=np.float64)
        self.max = np.zeros(d_sae, dtype=np.float32)
        self.nnz = 0

    def add(self, z: np.ndarray) -> None:
        rows, cols = np.nonzero(z)
        vals = z[rows, cols].astype(np.float32)
        self.indices.write(cols.astype(np.int32).tobytes())
        self.data.write(vals.tobytes())
        self.counts.append(np.bincount(rows, minlength=z.shape[0]).astype(np.int64))
        self.freq += np.bincount(cols, minlength=self.d_sae)
        self.sum += np.bincount(cols, weights=vals, minlength=self.d_sae)
        np.maximum.at(self.max, cols, vals)
        self.nnz += len(cols)

    def close(self) -> None:
        self.indices.close()
        self.data.close()

    def finish(self, n_rows: int) -> dict[str, Any]:
        self.close()
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, np.int64)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        indices = np.memmap(self.tmp / "indices.bin", dtype=np.int32, mode="r", shape=(self.nnz,)) if self.nnz else \
            np.zeros(0, np.int32)
        data = np.memmap(self.tmp / "data.bin", dtype=np.float32, mode="r", shape=(self.nnz,)) if self.nnz else \
            np.zeros(0, np.float32)
        # scipy.sparse.save_npz's layout, so scipy.sparse.load_npz reads it
        np.savez(self.tmp / "latents.npz", indices=indices, indptr=indptr, format=np.array("csr"),
                 shape=np.array([n_rows, self.d_sae]), data=data)
        del indices, data
        (self.tmp / "indices.bin").unlink()
        (self.tmp / "data.bin").unlink()
        np.savez(self.tmp / "latent_stats.npz", frequency=self.freq / max(n_rows, 1),
                 mean=(self.sum / np.maximum(self.freq, 1)).astype(np.float32), max=self.max,
                 count=self.freq)
        np.save(self.tmp / "row_l0.npy", counts.astype(np.int32))
        return {"n_rows": n_rows, "nnz": self.nnz}


def check_inference(reg: Registry, spec: InferSpec) -> tuple[DatasetRecord, list[RunRecord]]:
    """What can be checked before any work (:func:`saev_ops.infer.provenance.usable_runs`)."""
    return provenance.usable_runs(reg, spec.run_ids, spec.dataset, allow=spec.allow_model_mismatch,
                                  purpose="weights to apply")


def run_inference(spec: InferSpec) -> list[OutputRecord]:
    """Apply the runs' SAEs to the dataset in one ordered pass; returns the registered outputs."""
    import torch

    from saev_ops.loaders import OrderedConfig, OrderedDataLoader, ShardSelection
    from saev_ops.sae.evaluate import ReconMetrics
    from saev_ops.sae.io import load_sae

    reg = Registry(spec.db_url)
    dataset, runs = check_inference(reg, spec)
    todo = []
    out: list[OutputRecord] = []
    for run in runs:
        rid = run.id
        existing = reg.find_output(rid, dataset.id)
        if existing is not None and not spec.force and pathlib.Path(existing.path).exists():
            out.append(existing)
            continue
        assert run.checkpoint_path is not None  # check_inference refused runs without one
        sae, meta = load_sae(pathlib.Path(run.checkpoint_path), spec.device)
        if not all(bool(torch.isfinite(p).all()) for p in sae.parameters()):
            raise errors.DataError(f"run {rid}: the SAE at {run.checkpoint_path} has non-finite weights; retrain it")
        if sae.cfg.d_model != dataset.d_model:
            raise errors.ConfigError(f"run {rid}: SAE d_model {sae.cfg.d_model} != dataset's {dataset.d_model}")
        todo.append((rid, sae, meta))
    groups: dict[tuple[int, str], list[Any]] = {}
    for item in todo:
        groups.setdefault((item[2]["layer"], item[2].get("tokens", "patches")), []).append(item)
    for (layer, tokens), items in groups.items():
        if layer not in dataset.layers:
            raise errors.ConfigError(f"the SAEs of runs {[i[0] for i in items]} read layer {layer}, which dataset "
                                     f"{dataset.name!r} does not have (layers {list(dataset.layers)})")
        loader = OrderedDataLoader(dataset.path, OrderedConfig(selection=ShardSelection(layers=(layer,), tokens=tokens),
                                                               batch_size=spec.batch_size))
        tmps = {}
        writers = {}
        recon = {rid: ReconMetrics(sae.cfg.d_sae, spec.device) for rid, sae, _ in items}
        for rid, sae, _ in items:
            final = paths.output_dir(spec.out_root, rid, dataset.content_hash)
            tmp = atomic.fresh_dir(final.with_name(final.name + ".tmp"))
            tmps[rid] = (tmp, final)
            writers[rid] = _CsrWriter(tmp, sae.cfg.d_sae)
        bar = Progress(f"inference, runs {[i[0] for i in items]}", loader.n_rows, "rows", log)
        try:
            with bar, torch.inference_mode():
                for batch in loader:
                    x = batch["act"].to(spec.device)
                    _refuse_nonfinite(batch, x, dataset)
                    for rid, sae, meta in items:
                        xs = x.float() * float(meta["scale"])
                        z = sae.encode(xs)
                        recon[rid].add(xs, sae.decode(z), z)
                        writers[rid].add(z.float().cpu().numpy())
                    bar.update(bar.done + x.shape[0])
        except BaseException:
            for writer in writers.values():
                writer.close()
            for tmp, _ in tmps.values():
                shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left behind
            raise
        for rid, sae, _meta in items:
            tmp, final = tmps[rid]
            info = writers[rid].finish(loader.n_rows)
            metrics = recon[rid].result()
            atomic.write_text(tmp / "output.json", json.dumps({
                "run_id": rid, "dataset": dataset.name, "dataset_hash": dataset.content_hash, "layer": layer,
                "tokens": tokens, "rows": "example-major: row = example * tokens_selected + token position",
                "tokens_per_example": loader.plan.rows_per_example, "token_idx": loader.plan.token_idx.tolist(),
                "metrics": metrics, **info}, indent=2))
            atomic.replace_dir(tmp, final)
            mismatch = provenance.mismatches(reg.get_dataset_by_id(reg.get_run(rid).dataset_id), dataset,
                                             tokens=tokens)
            out.append(reg.add_output(run_id=rid, dataset=dataset.name, path=str(final), n_rows=info["n_rows"],
                                      n_cols=sae.cfg.d_sae, nnz=info["nnz"], metrics=metrics,
                                      extra={"layer": layer, "tokens": tokens,
                                             **({"model_mismatch": mismatch} if mismatch else {})}, replace=True))
    return out


def _refuse_nonfinite(batch: Any, x: Any, dataset: DatasetRecord) -> None:
    """Latents of non-finite inputs are garbage that looks like data: stop, naming the examples."""
    import torch

    from saev_ops.loaders.selection import examples_of

    finite_rows = torch.isfinite(x).all(dim=1)
    if bool(finite_rows.all()):
        return
    raise errors.DataError(f"dataset {dataset.name!r} ({dataset.path}) holds non-finite activations in examples "
                           f"{examples_of(batch, ~finite_rows)}; no output was written "
                           f"(`saev-ops datasets verify {dataset.name} --full`)")
