"""Check a dataset directory: sizes, metadata consistency, index, checksums and (with ``full``) NaN/Inf.

Every problem names the file, what was expected and what was found; all problems are collected before returning.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from saev_ops import errors
from saev_ops.shards import aligned, dtypes
from saev_ops.shards.format import Metadata, ShardPaths, read_json, shard_name
from saev_ops.shards.index import IndexReader
from saev_ops.shards.stats import load_stats
from saev_ops.shards.writer import labels_checksum, new_checksum, shard_fingerprint

_READ = 64 << 20
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Problem:
    file: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"{self.file}: expected {self.expected}, found {self.found}"


def file_checksum(path: pathlib.Path, nbytes: int) -> str:
    """blake2b-128 of the first ``nbytes`` of ``path`` (a shard's examples, without the last shard's zero tail)."""
    h = new_checksum()
    buf = aligned.empty(_READ, np.uint8)
    view = buf.data
    left = nbytes
    with open(path, "rb", buffering=0) as fh:
        while left > 0 and (n := fh.readinto(view[: min(len(buf), left)])):
            h.update(view[:n])
            left -= n
    return h.hexdigest()


def count_nonfinite(path: pathlib.Path, storage_dtype: str, nbytes: int) -> int:
    disk = dtypes.disk_dtype(storage_dtype)
    bad = 0
    left = nbytes
    with open(path, "rb", buffering=0) as fh:
        while left > 0 and (chunk := fh.read(min(_READ - _READ % 4, left))):
            left -= len(chunk)
            arr = dtypes.decode(np.frombuffer(chunk, dtype=disk), storage_dtype)
            bad += int(arr.size - np.count_nonzero(np.isfinite(arr)))
    return bad


def verify(root: pathlib.Path, *, full: bool = False) -> list[Problem]:
    """All problems found in the dataset at ``root`` (empty when it is sound)."""
    p = ShardPaths(pathlib.Path(root))
    out: list[Problem] = []
    if not p.root.is_dir():
        return [Problem(str(p.root), "a dataset directory", "nothing (deleted? scratch file systems purge old data)")]
    if p.progress.exists():
        out.append(Problem(str(p.progress), "no unfinished write", "a write in progress or interrupted"))
    try:
        md = Metadata.from_json_dict(read_json(p.metadata), source=str(p.metadata))
    except errors.DataError as exc:
        return [*out, Problem(str(p.metadata), "saev protocol 2.1 metadata", str(exc).split(": ", 1)[-1])]
    itemsize = dtypes.disk_dtype(md.dtype).itemsize
    shard_bytes = md.examples_per_shard * md.n_layers * md.tokens_per_example * md.d_model * itemsize
    try:
        listing = read_json(p.shards_json)
    except errors.DataError as exc:
        listing = None
        out.append(Problem(str(p.shards_json), "a JSON list of shards", str(exc).split(": ", 1)[-1]))
    if listing is not None:
        out += _check_listing(p.shards_json, listing, md)
    present = []
    for i in range(md.n_shards):
        f = p.shard(i)
        if not f.exists():
            out.append(Problem(str(f), f"a shard file of {shard_bytes} bytes", "no file"))
            continue
        size = f.stat().st_size
        if size != shard_bytes:
            out.append(Problem(str(f), f"{shard_bytes} bytes", f"{size} bytes"))
            continue
        present.append(i)
    sidecar = read_json(p.sidecar) if p.sidecar.exists() else None
    if sidecar is None:
        out.append(Problem(str(p.sidecar), "saev-ops' sidecar (run `saev-ops datasets import`)", "no file"))
    else:
        if not sidecar.get("complete"):
            out.append(Problem(str(p.sidecar), '"complete": true', "an incomplete dataset"))
        if sidecar.get("content_hash") != md.content_hash:
            out.append(Problem(str(p.sidecar), f"content_hash {md.content_hash[:12]}... (of metadata.json)",
                               f"{str(sidecar.get('content_hash'))[:12]}... (metadata.json was changed)"))
        if len(sidecar.get("checksums", [])) != md.n_shards:
            out.append(Problem(str(p.sidecar), f"{md.n_shards} checksums", f"{len(sidecar.get('checksums', []))}"))
    out += _check_index(p.index, md)
    out += _check_stats(p.stats, md)
    out += _check_labels(p.labels, md, sidecar)
    out += _check_fingerprints(p, md, present, sidecar)
    n_nonfinite = int(((sidecar or {}).get("stats") or {}).get("n_nonfinite", 0) or 0)
    if n_nonfinite:
        out.append(Problem(str(p.sidecar), "finite activations (recorded while writing)",
                           f"{n_nonfinite} NaN/Inf values; `--full` names the shards"))
    if full:
        sums = sidecar.get("checksums", []) if sidecar else []
        for i in present:
            f = p.shard(i)
            used = md.shard_n_examples(i) * (shard_bytes // md.examples_per_shard)
            if i < len(sums):
                got = file_checksum(f, used)
                if got != sums[i]:
                    out.append(Problem(str(f), f"checksum {sums[i]}", f"{got} (contents changed or corrupt)"))
            bad = count_nonfinite(f, md.dtype, used)
            if bad:
                out.append(Problem(str(f), "finite activations", f"{bad} NaN/Inf values"))
        if sidecar is not None:
            out += _check_index_digest(p.index, sidecar)
            out += _check_label_values(p.labels, sidecar)
    return out


def _check_listing(path: pathlib.Path, listing: Any, md: Metadata) -> list[Problem]:
    """shards.json: one entry per shard, each with the example count that shard must hold (loaders trust it)."""
    if not isinstance(listing, list) or len(listing) != md.n_shards:
        found = f"{len(listing)} entries" if isinstance(listing, list) else type(listing).__name__
        return [Problem(str(path), f"{md.n_shards} entries", found)]
    out = []
    for i, entry in enumerate(listing):
        want = {"name": shard_name(i), "n_examples": md.shard_n_examples(i)}
        if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in want.items()):
            out.append(Problem(f"{path} entry {i}", json.dumps(want), json.dumps(entry)))
    return out


def _read_index(path: pathlib.Path, read: Callable[[Any], T]) -> T | Problem:
    """``read(reader)`` over the LMDB index at ``path``, or the problem that it cannot be read."""

    try:
        reader = IndexReader(path)
        try:
            return read(reader)
        finally:
            reader.close()
    except errors.DataError as exc:
        return Problem(str(path), "a readable LMDB index", str(exc).split(": ", 1)[-1])


def _check_index(path: pathlib.Path, md: Metadata) -> list[Problem]:
    if not (path / "data.mdb").exists():
        return [Problem(str(path), "an LMDB index", "no index (rebuild with `saev-ops datasets import`)")]
    n = _read_index(path, lambda r: r.count())
    if isinstance(n, Problem):
        return [n]
    return [] if n == md.n_examples else [Problem(str(path), f"{md.n_examples} example entries", f"{n}")]


def _check_stats(path: pathlib.Path, md: Metadata) -> list[Problem]:
    if not path.exists():
        return [Problem(str(path), "activation statistics", "no file")]
    try:
        stats = load_stats(path)
    except errors.DataError as exc:
        return [Problem(str(path), "a readable .npz of statistics", str(exc).split(": ", 1)[-1])]
    shapes = {k: stats[k].shape if k in stats else None for k in ("mean", "scale")}
    want = {"mean": (md.n_layers, md.d_model), "scale": (md.n_layers,)}
    if shapes != want:
        return [Problem(str(path), f"arrays of shapes {want}", f"{shapes}")]
    return []


def _check_labels(path: pathlib.Path, md: Metadata, sidecar: dict[str, Any] | None) -> list[Problem]:
    """labels.bin (saev: uint8, one per content token of each example), when the sidecar says it was written or the
    file is there."""
    expected = bool((sidecar or {}).get("labels_bin"))
    if not path.exists():
        return [Problem(str(path), "per-patch labels (the sidecar says they were written)", "no file")] if expected \
            else []
    want = md.n_examples * md.content_tokens_per_example
    size = path.stat().st_size
    if size == want:
        return []
    shape = f"{md.n_examples} examples x {md.content_tokens_per_example} tokens, uint8"
    return [Problem(str(path), f"{want} bytes ({shape})", f"{size} bytes")]


def _check_fingerprints(p: ShardPaths, md: Metadata, present: list[int],
                        sidecar: dict[str, Any] | None) -> list[Problem]:
    """Each shard's first and last example against the sidecar's fingerprints (two reads a shard): two shard files
    swapped, or one from another dataset, are named here without reading the data. Sidecars written before
    fingerprints existed have none, and `--full`'s checksums cover them."""
    recorded = (sidecar or {}).get("fingerprints")
    if not isinstance(recorded, list) or len(recorded) != md.n_shards:
        return []
    out = []
    by_print = {fp: i for i, fp in enumerate(recorded)}
    for i in present:
        got = shard_fingerprint(p.shard(i), md, i)
        if got != recorded[i]:
            other = by_print.get(got)
            found = (f"the first and last examples of {shard_name(other)} (shard files swapped or renamed)"
                     if other is not None
                     else "other first or last examples (contents changed or from another dataset)")
            out.append(Problem(str(p.shard(i)), f"the examples recorded as shard {i} ({p.sidecar.name})", found))
    return out


def _check_index_digest(path: pathlib.Path, sidecar: dict[str, Any]) -> list[Problem]:
    want = sidecar.get("index_digest")
    if not want or not (path / "data.mdb").exists():
        return []
    got = _read_index(path, lambda r: r.digest())
    if isinstance(got, Problem):
        return [got]
    if got == want:
        return []
    return [Problem(str(path), f"index digest {want} (saev_ops.json)",
                    f"{got}: an entry (image path, label, place) was changed after recording")]


def _check_label_values(path: pathlib.Path, sidecar: dict[str, Any]) -> list[Problem]:
    """labels.bin against the sidecar's checksum and the label values recorded with it."""
    want, values = sidecar.get("labels_checksum"), sidecar.get("label_values")
    if not want or not path.exists():
        return []
    labels = np.fromfile(path, dtype=np.uint8)
    got = labels_checksum(labels)
    if got == want:
        return []
    out = [Problem(str(path), f"checksum {want} (saev_ops.json)", f"{got} (contents changed)")]
    if isinstance(values, list):
        allowed = np.zeros(256, dtype=bool)
        allowed[[int(v) for v in values if 0 <= int(v) < 256]] = True
        outside = np.flatnonzero(~allowed[labels])
        if outside.size:
            first = int(outside[0])
            out.append(Problem(str(path), f"labels among the dataset's classes {values}",
                               f"{outside.size} value(s) outside them (first: {int(labels[first])} at byte {first})"))
    return out
