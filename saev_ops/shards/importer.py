"""Adopt a directory written by saev: build saev-ops' index, checksums and statistics beside saev's files.

saev's files are not modified. One pass over each shard computes its checksum and statistics.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import numpy as np

from saev_ops import atomic, errors
from saev_ops.shards import aligned, dtypes
from saev_ops.shards.format import ShardPaths, TokenLayout
from saev_ops.shards.index import ExampleEntry, IndexWriter
from saev_ops.shards.reader import ShardReader
from saev_ops.shards.saev_data import ImageList, recorded_images
from saev_ops.shards.stats import StatsAccumulator, save_stats
from saev_ops.shards.writer import build_sidecar, new_checksum

_EXAMPLES_PER_READ_BYTES = 64 << 20
log = logging.getLogger(__name__)


def import_saev_dir(root: pathlib.Path, *, registers: int | None = None,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``index.lmdb``, ``stats.npz`` and ``saev_ops.json`` for the saev dataset at ``root``; returns the sidecar.

    The index takes image paths and labels from saev's ``data``/``dataset`` fields (:mod:`saev_ops.shards.saev_data`)
    and ``labels.bin``. ``registers``: the first this-many content tokens of each example are register tokens (a
    directory written with registers in ``content_tokens_per_example``). A directory that already carries a complete
    saev-ops sidecar (a copy of a saev-ops dataset) is verified against its checksums and kept as it is: a damaged
    copy is refused, naming the shard, and nothing is written.

    Raises:
        DataError: the directory is not a readable saev protocol 2.1 dataset, or a recorded checksum does not match
            (names the file and the problem).
    """
    paths = ShardPaths(pathlib.Path(root))
    if paths.progress.exists():
        raise errors.DataError(
            f"{paths.progress}: this directory holds an unfinished saev-ops write; resume it instead")
    reader = ShardReader(root, require_complete=False)
    try:
        if reader.sidecar is not None and reader.sidecar.get("complete") and reader.sidecar.get("checksums"):
            return _verify_copy(reader, paths, registers)
        return _build(reader, paths, registers, extra)
    finally:
        reader.close()


def _shard_passes(reader: ShardReader, stats: StatsAccumulator | None) -> Any:
    """(shard, checksum) for each shard in one read of its examples (not the last shard's zero tail)."""
    md = reader.md
    step = max(1, _EXAMPLES_PER_READ_BYTES // reader.example_bytes)
    for shard in range(md.n_shards):
        h = new_checksum()
        n_in = md.shard_n_examples(shard)
        for row in range(0, n_in, step):
            n = min(step, n_in - row)
            raw = aligned.empty((n, md.n_layers, md.tokens_per_example, md.d_model), reader.disk_dtype)
            reader.read_raw(shard * md.examples_per_shard + row, n, None, raw)
            h.update(raw.data.cast("B"))
            if stats is not None:
                stats.update(dtypes.decode(raw, md.dtype), None)
        yield shard, h.hexdigest()


def _verify_copy(reader: ShardReader, paths: ShardPaths, registers: int | None) -> dict[str, Any]:
    sidecar = reader.sidecar
    assert sidecar is not None
    if registers is not None and registers != reader.layout.n_registers:
        raise errors.ConfigError(f"--registers {registers}: {paths.sidecar} records {reader.layout.n_registers} "
                                 "register tokens for this directory")
    recorded = list(sidecar["checksums"])
    if len(recorded) != reader.md.n_shards:
        raise errors.DataError(f"{paths.sidecar}: {len(recorded)} checksums for {reader.md.n_shards} shards")
    for shard, digest in _shard_passes(reader, None):
        if digest != recorded[shard]:
            raise errors.DataError(f"{paths.shard(shard)}: contents differ from the checksum {paths.sidecar.name} "
                                   f"recorded ({recorded[shard][:16]}..., now {digest[:16]}...): this copy is "
                                   "damaged; nothing was registered")
    if not paths.index.exists() or not paths.stats.exists():
        raise errors.DataError(f"{paths.root}: has a complete {paths.sidecar.name} but no "
                               f"{paths.index.name if not paths.index.exists() else paths.stats.name}; copy it too")
    return sidecar


def _build(reader: ShardReader, paths: ShardPaths, registers: int | None,
           extra: dict[str, Any] | None) -> dict[str, Any]:
    md = reader.md
    n_reg = registers or 0
    if not 0 <= n_reg <= md.content_tokens_per_example:
        raise errors.ConfigError(f"--registers {n_reg}: {paths.metadata} has {md.content_tokens_per_example} content "
                                 "tokens per example")
    layout = TokenLayout(n_cls=1 if md.cls_token else 0, n_registers=n_reg,
                         n_patches=md.content_tokens_per_example - n_reg)
    images, why = recorded_images(md.data, md.dataset, md.n_examples)
    labels = _label_rows(paths, md.n_examples, md.content_tokens_per_example)
    if images is None:
        log.warning("%s: image paths not recovered (%s); examples are indexed without paths", paths.root, why)
    stats = StatsAccumulator(md.n_layers, md.d_model)
    checksums = []
    index = IndexWriter(paths.index)
    try:
        for shard, digest in _shard_passes(reader, stats):
            checksums.append(digest)
            base = shard * md.examples_per_shard
            index.put_many(_entry(base + r, shard, r, images, labels) for r in range(md.shard_n_examples(shard)))
        index.put_meta({"n_examples": md.n_examples, "content_hash": md.content_hash, "imported": True})
    finally:
        index.close()
    summary = stats.summary()
    save_stats(paths.stats, summary, md.layers)
    sidecar = build_sidecar(md, layout, checksums, summary,
                            {"imported_from_saev": True, "image_paths": images is not None,
                             **({"image_paths_missing": why} if images is None else {}), **(extra or {})},
                            labels_bin=paths.labels.exists(), paths=paths)
    atomic.write_json(paths.sidecar, sidecar)
    return sidecar


def _label_rows(paths: ShardPaths, n_examples: int, n_content: int) -> np.ndarray | None:
    """saev's ``labels.bin`` (uint8, n_examples x content tokens), or None when absent."""
    if not paths.labels.exists():
        return None
    want = n_examples * n_content
    size = paths.labels.stat().st_size
    if size != want:
        raise errors.DataError(f"{paths.labels}: {size} bytes, expected {want} (uint8, {n_examples} examples x "
                               f"{n_content} content tokens)")
    return np.fromfile(paths.labels, dtype=np.uint8).reshape(n_examples, n_content)


def _entry(example: int, shard: int, row: int, images: ImageList | None, labels: np.ndarray | None) -> ExampleEntry:
    """An index entry: path and class from the image folder; without one, the label is the example's patch label
    when every patch carries the same (an image-level label written as saev writes it)."""
    if images is not None:  # a class of -1: the image list has no classes (an ImgSegFolder without label columns)
        known = images.labels[example] >= 0
        return ExampleEntry(example, shard, row, images.paths[example], images.labels[example] if known else None,
                            images.label_names[example] if known else None)
    label = None
    if labels is not None and labels.shape[1] and (labels[example] == labels[example, 0]).all():
        label = int(labels[example, 0])
    return ExampleEntry(example, shard, row, None, label)
