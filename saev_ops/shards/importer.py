"""Adopt a directory written by saev: build saev-ops' index, checksums and statistics beside saev's files.

saev's files are not modified. One pass over each shard computes its checksum and statistics.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from saev_ops import atomic, errors
from saev_ops.shards import dtypes
from saev_ops.shards.format import ShardPaths
from saev_ops.shards.index import ExampleEntry, IndexWriter
from saev_ops.shards.reader import ShardReader
from saev_ops.shards.stats import StatsAccumulator, save_stats
from saev_ops.shards.writer import build_sidecar, new_checksum

_EXAMPLES_PER_READ_BYTES = 64 << 20


def import_saev_dir(root: pathlib.Path, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``index.lmdb``, ``stats.npz`` and ``saev_ops.json`` for the saev dataset at ``root``; returns the sidecar.

    Raises:
        DataError: the directory is not a readable saev protocol 2.1 dataset (names the file and the problem).
    """
    reader = ShardReader(root, require_complete=False)
    md, paths = reader.md, ShardPaths(pathlib.Path(root))
    if paths.progress.exists():
        raise errors.DataError(
            f"{paths.progress}: this directory holds an unfinished saev-ops write; resume it instead")
    step = max(1, _EXAMPLES_PER_READ_BYTES // reader.example_bytes)
    stats = StatsAccumulator(md.n_layers, md.d_model)
    checksums = []
    index = IndexWriter(paths.index)
    try:
        for shard in range(md.n_shards):
            h = new_checksum()
            n_in = md.shard_n_examples(shard)
            for row in range(0, n_in, step):  # checksums cover the examples, not the last shard's zero tail
                n = min(step, n_in - row)
                raw = np.empty((n, md.n_layers, md.tokens_per_example, md.d_model), dtype=reader.disk_dtype)
                reader.read_raw(shard * md.examples_per_shard + row, n, None, raw)
                h.update(raw.data.cast("B"))
                stats.update(dtypes.decode(raw, md.dtype), None)
            checksums.append(h.hexdigest())
            base = shard * md.examples_per_shard
            index.put_many(ExampleEntry(base + r, shard, r, None, None) for r in range(n_in))
        index.put_meta({"n_examples": md.n_examples, "content_hash": md.content_hash, "imported": True})
    finally:
        index.close()
        reader.close()
    summary = stats.summary()
    save_stats(paths.stats, summary, md.layers)
    sidecar = build_sidecar(md, reader.layout, checksums, summary, {"imported_from_saev": True, **(extra or {})},
                            labels_bin=paths.labels.exists())
    atomic.write_json(paths.sidecar, sidecar)
    return sidecar
