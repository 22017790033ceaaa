"""Check a dataset directory: sizes, metadata consistency, index, checksums and (with ``full``) NaN/Inf.

Every problem names the file, what was expected and what was found; all problems are collected before returning.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from saev_ops import errors
from saev_ops.shards import dtypes
from saev_ops.shards.format import Metadata, ShardPaths, read_json
from saev_ops.shards.writer import new_checksum

_READ = 64 << 20


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
    buf = bytearray(_READ)
    view = memoryview(buf)
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
        return out + [Problem(str(p.metadata), "saev protocol 2.1 metadata", str(exc).split(": ", 1)[-1])]
    itemsize = dtypes.disk_dtype(md.dtype).itemsize
    shard_bytes = md.examples_per_shard * md.n_layers * md.tokens_per_example * md.d_model * itemsize
    try:
        listing = read_json(p.shards_json)
    except errors.DataError as exc:
        listing = None
        out.append(Problem(str(p.shards_json), "a JSON list of shards", str(exc).split(": ", 1)[-1]))
    if listing is not None:
        if not isinstance(listing, list) or len(listing) != md.n_shards:
            out.append(Problem(str(p.shards_json), f"{md.n_shards} entries", f"{len(listing) if isinstance(listing, list) else type(listing).__name__}"))
        else:
            total = sum(int(e.get("n_examples", -1)) for e in listing)
            if total != md.n_examples:
                out.append(Problem(str(p.shards_json), f"{md.n_examples} examples in all (metadata.json)", f"{total}"))
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
    if not (p.index / "data.mdb").exists():
        out.append(Problem(str(p.index), "an LMDB index", "no index (rebuild with `saev-ops datasets import`)"))
    else:
        from saev_ops.shards.index import IndexReader

        reader = IndexReader(p.index)
        try:
            n = reader.count()
        finally:
            reader.close()
        if n != md.n_examples:
            out.append(Problem(str(p.index), f"{md.n_examples} example entries", f"{n}"))
    if not p.stats.exists():
        out.append(Problem(str(p.stats), "activation statistics", "no file"))
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
    return out
