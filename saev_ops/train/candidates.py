"""The candidates pass of archetypal SAEs: ``n`` k-means centroids of a layer's centred activations, computed once per
(dataset, layer, tokens, n), stored with the sweep (:func:`saev_ops.paths.candidates_file`) and shared on the device by
every archetypal SAE of a job that asks for ``n``.

A stored file says what it was computed from (dataset, layer, tokens, n, the sample and the algorithm); a file that
says anything else (copied from another sweep or dataset, or written by another version) is not used: it is computed
again, with a warning, and replaced.
"""

from __future__ import annotations

import logging
import os
import pathlib

import numpy as np
import torch

from saev_ops import atomic, errors, paths
from saev_ops.loaders import IndexedDataset

log = logging.getLogger(__name__)

VERSION = "1"
"""Of the algorithm below: a file of another version is computed again."""
SEED = 2
"""The sample's rows and the first centroids."""
ROWS_PER_CANDIDATE, MIN_ROWS, MAX_ROWS = 16, 65_536, 262_144
ITERATIONS = 25
CHUNK = 8192


def kmeans(x: torch.Tensor, n: int, *, seed: int = SEED, iterations: int = ITERATIONS) -> torch.Tensor:
    """Lloyd's k-means over the rows of ``x`` (on its device) from k-means++ seeds (:func:`seeds`); a cluster left
    empty takes the row farthest from its centroid. ``n`` x d float32."""
    if not 0 < n <= len(x):
        raise errors.ConfigError(f"k-means: {n} centroids from {len(x)} rows; need 1..{len(x)}")
    centroids = seeds(x, n, seed)
    for _ in range(iterations):
        assign, dist = _nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=n)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        empty = counts == 0
        if bool(empty.any()):
            centroids[empty] = x[dist.topk(int(empty.sum())).indices]
    return centroids


SEED_ROWS_PER_CENTROID = 4


def seeds(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """k-means++ (Arthur and Vassilvitskii 2007): each next seed a row drawn with probability proportional to its
    squared distance from the seeds so far, over a subsample of ``SEED_ROWS_PER_CENTROID * n`` rows (the draws on the
    CPU generator, the distances on ``x``'s device: the same seeds on any device up to rounding)."""
    g = torch.Generator().manual_seed(seed)
    pool = x[torch.randperm(len(x), generator=g)[: min(len(x), SEED_ROWS_PER_CENTROID * n)].to(x.device)]
    chosen = [int(torch.randint(len(pool), (1,), generator=g))]
    nearest = (pool - pool[chosen[0]]).pow(2).sum(1)
    for _ in range(n - 1):
        total = nearest.sum()
        u = float(torch.rand((), generator=g))
        if float(total) <= 0:  # every row is a seed already (duplicates): any row will do
            i = int(torch.randint(len(pool), (1,), generator=g))
        else:
            i = int(torch.searchsorted(nearest.cumsum(0), (u * total).reshape(1)).clamp(max=len(pool) - 1))
        chosen.append(i)
        nearest = torch.minimum(nearest, (pool - pool[i]).pow(2).sum(1))
    return pool[torch.tensor(chosen, device=x.device)].clone()


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's nearest centroid and its squared distance, in chunks of rows."""
    c2 = centroids.pow(2).sum(1)
    assign, dist = [], []
    for part in x.split(CHUNK):
        d = part.pow(2).sum(1, keepdim=True) - 2 * part @ centroids.t() + c2
        m = d.min(dim=1)
        assign.append(m.indices)
        dist.append(m.values.clamp_min(0))
    return torch.cat(assign), torch.cat(dist)


def sample_rows(n_rows: int, n: int) -> np.ndarray:
    """The rows (sorted) the candidates of ``n`` are computed from, among ``n_rows``."""
    size = min(n_rows, max(MIN_ROWS, ROWS_PER_CANDIDATE * n), MAX_ROWS)
    return np.sort(np.random.default_rng(SEED).choice(n_rows, size=size, replace=False))


def _metadata(dataset_hash: str, layer: int, tokens: str, n: int, rows: int) -> dict[str, str]:
    return {"dataset": dataset_hash, "layer": str(layer), "tokens": tokens, "n": str(n), "rows": str(rows),
            "seed": str(SEED), "iterations": str(ITERATIONS), "seeding": f"k-means++/{SEED_ROWS_PER_CENTROID}",
            "version": VERSION}


def load_or_compute(ds: IndexedDataset, *, runs_root: str, dataset_hash: str, layer: int, tokens: str, n: int,
                    mean: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The ``n`` candidates of ``ds`` (the job's rows: its dataset's ``layer`` and ``tokens``) in the dataset's own
    units, centred (``mean`` subtracted), float32 on ``device``: read from the sweep's file when it says it holds them,
    else computed and stored there."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    rows = sample_rows(len(ds), n)
    want = _metadata(dataset_hash, layer, tokens, n, len(rows))
    path = paths.candidates_file(runs_root, dataset_hash, layer, tokens, n)
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as fh:
                got = fh.metadata() or {}
                stored = fh.get_tensor("candidates") if got == want else None
        except Exception as exc:  # any unreadable file is computed again, said so below
            got, stored = {"error": str(exc)}, None
        if stored is not None and stored.shape == (n, int(mean.numel())) and bool(torch.isfinite(stored).all()):
            return stored.to(device)
        log.warning("%s: holds other candidates than this job's (%s, wanted %s); computing them again", path, got, want)
    x = ds.get_batch(rows)["act"].float().to(device) - mean.to(device)
    log.info("archetypal candidates: %d k-means centroids of %d rows of layer %d (%s)", n, len(rows), layer, tokens)
    centroids = kmeans(x, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # jobs of one sweep may compute the same file at once
    try:
        save_file({"candidates": centroids.cpu().contiguous()}, str(tmp), metadata=want)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    atomic.fsync_dir(pathlib.Path(path.parent))
    return centroids
