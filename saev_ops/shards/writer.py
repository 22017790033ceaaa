"""``ShardWriter``: append examples to a dataset directory with bounded memory, resumably.

Each shard is written to ``actsNNNNNN.bin.tmp`` (pre-sized, so the last one has saev's full size too), hashed as it is
written, fsynced and renamed. After each shard the LMDB index gets its examples and ``.progress.json`` records the
shard, its checksum and its partial statistics. An interrupted write is resumed by opening the same directory again:
:attr:`ShardWriter.resume_from` says which example comes next. ``metadata.json``, ``shards.json``, ``labels.bin``,
``stats.npz`` are written by :meth:`finalize`, and ``saev_ops.json`` (``"complete": true``) last of all, so a directory
never looks complete before it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import pathlib
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from saev_ops import __version__, atomic, errors
from saev_ops.shards import dtypes
from saev_ops.shards.format import (
    SIDECAR_SCHEMA,
    Metadata,
    ShardPaths,
    TokenLayout,
    read_json,
    shard_name,
)
from saev_ops.shards.index import ExampleEntry, IndexReader, IndexWriter
from saev_ops.shards.stats import StatsAccumulator, save_stats

CHECKSUM_ALGO = "blake2b-128"
ROOM_MARGIN = 1 << 20
"""Free bytes a shard needs besides its file before it is begun (the index grows, the small files are rewritten)."""


def new_checksum() -> Any:
    return hashlib.blake2b(digest_size=16)


def labels_checksum(labels: np.ndarray) -> str:
    """The checksum of labels.bin's bytes, as the sidecar records it and `datasets verify --full` compares it."""
    h = new_checksum()
    h.update(labels.tobytes())
    return str(h.hexdigest())


class ShardWriter:
    """Write a dataset described by ``metadata`` into ``root``.

    Args:
        root: the dataset directory (``<data_root>/saev/shards/<hash>`` for saev compatibility).
        metadata: saev metadata; ``n_examples`` must be the final count.
        layout: CLS/register/patch positions on the token axis (CLS + registers + patches = tokens per example).
        extra: anything to keep in ``saev_ops.json`` (provenance).
    """

    def __init__(self, root: pathlib.Path, metadata: Metadata, layout: TokenLayout, *,
                 extra: dict[str, Any] | None = None) -> None:
        if layout.n_tokens != metadata.tokens_per_example or layout.n_cls != (1 if metadata.cls_token else 0):
            raise errors.ConfigError(
                f"token layout {layout} does not match metadata ({metadata.tokens_per_example} tokens, "
                f"cls_token={metadata.cls_token})"
            )
        self.paths = ShardPaths(pathlib.Path(root))
        self.md = metadata
        self.layout = layout
        self.extra = dict(extra or {})
        self.paths.root.mkdir(parents=True, exist_ok=True)
        if self.paths.sidecar.exists() and read_json(self.paths.sidecar).get("complete"):
            raise errors.DuplicateError(f"{self.paths.root} is already a complete dataset")
        self._disk_dtype = dtypes.disk_dtype(metadata.dtype)
        self._row_bytes = metadata.n_layers * metadata.tokens_per_example * metadata.d_model * self._disk_dtype.itemsize
        self._completed: list[dict[str, Any]] = self._load_progress()
        self.resume_from = sum(s["n_examples"] for s in self._completed)
        self._next = self.resume_from
        self._index = IndexWriter(self.paths.index)
        self._fh: Any = None
        self._hash: Any = None
        self._shard_stats: StatsAccumulator | None = None
        self._shard_entries: list[ExampleEntry] = []
        self._shard_patch_labels: list[np.ndarray] = []

    # -- progress ----------------------------------------------------------------------------------------------------
    def _load_progress(self) -> list[dict[str, Any]]:
        if not self.paths.progress.exists():
            return []
        progress = read_json(self.paths.progress)
        if progress.get("content_hash") != self.md.content_hash:
            raise errors.DataError(
                f"{self.paths.progress}: an unfinished write of a different dataset is in this directory "
                f"(hash {progress.get('content_hash', '?')[:8]}, expected {self.md.hash}); remove the directory"
            )
        done: list[dict[str, Any]] = []
        for s in progress["shards"]:  # keep only the prefix whose files are really there
            f = self.paths.shard(s["shard"])
            full_size = self.md.examples_per_shard * self._row_bytes
            if s["shard"] != len(done) or not f.exists() or f.stat().st_size != full_size:
                break
            done.append(s)
        return done

    def _save_progress(self) -> None:
        atomic.write_json(self.paths.progress, {"content_hash": self.md.content_hash, "shards": self._completed},
                          indent=None)

    def written_paths(self) -> list[str | None]:
        """Image paths of the examples already written (for a resumed recording)."""
        return self._index.paths(self.resume_from)

    # -- writing -----------------------------------------------------------------------------------------------------
    @property
    def n_written(self) -> int:
        return self._next

    @property
    def shard_bytes(self) -> int:
        """The size of one shard file (saev's full size, the last shard's too)."""
        return self.md.examples_per_shard * self._row_bytes

    def _no_room(self) -> str:
        free = shutil.disk_usage(self.paths.root).free
        return (f"{self.paths.root}: no room on its file system: a shard needs {self.shard_bytes + ROOM_MARGIN:,} "
                f"bytes (its file, and {ROOM_MARGIN:,} for the index and the small files) and "
                f"{free:,} are free; free space (or record with another --data-root) and run the same command again: "
                "it resumes after the last finished shard")

    @contextlib.contextmanager
    def _room(self) -> Iterator[None]:
        """A full disk (or quota) while writing is one DataError naming the directory, the bytes needed and free."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise errors.DataError(self._no_room()) from None

    def write(self, acts: np.ndarray,
              entries: Sequence[tuple[str | None, int | None, str | None]] | None = None,
              patch_labels: np.ndarray | None = None) -> None:
        """Append examples. ``acts``: float32 (n, layers, tokens, d_model); ``entries``: (image path, label, label name)
        per example, or None; ``patch_labels``: uint8 (n, patches), each patch's class (from a segmentation mask),
        written to saev's labels.bin (register rows get 255) instead of the image labels."""
        with self._room():
            self._write(acts, entries, patch_labels)

    def _write(self, acts: np.ndarray, entries: Sequence[tuple[str | None, int | None, str | None]] | None,
               patch_labels: np.ndarray | None) -> None:
        md = self.md
        expected = (md.n_layers, md.tokens_per_example, md.d_model)
        if acts.ndim != 4 or tuple(acts.shape[1:]) != expected:
            raise errors.ConfigError(f"activations must be shaped (n, {expected[0]}, {expected[1]}, {expected[2]}), "
                                     f"got {tuple(acts.shape)}")
        n = acts.shape[0]
        if entries is not None and len(entries) != n:
            raise errors.ConfigError(f"{n} examples but {len(entries)} index entries")
        if patch_labels is not None and patch_labels.shape != (n, self.layout.n_patches):
            raise errors.ConfigError(f"patch labels must be shaped ({n}, {self.layout.n_patches}), got "
                                     f"{tuple(patch_labels.shape)}")
        if patch_labels is None and (self._shard_patch_labels or any(s.get("patch_labels") for s in self._completed)):
            raise errors.ConfigError("patch labels were given for earlier examples; give them for every example")
        if self._next + n > md.n_examples:
            raise errors.ConfigError(f"writing {n} more examples would exceed n_examples={md.n_examples} "
                                     f"({self._next} written)")
        acts = np.ascontiguousarray(acts, dtype=np.float32)
        i = 0
        while i < n:
            shard, row = divmod(self._next, md.examples_per_shard)
            if self._fh is None:
                self._open_shard(shard)
            take = min(n - i, md.examples_per_shard - row)
            chunk = acts[i : i + take]
            stored = dtypes.encode(chunk, md.dtype)
            assert self._fh is not None and self._hash is not None and self._shard_stats is not None  # opened above
            self._fh.write(stored.data.cast("B"))
            self._hash.update(stored.data.cast("B"))
            self._shard_stats.update(chunk, None if md.dtype == "float32" else dtypes.decode(stored, md.dtype))
            for j in range(take):
                path, label, name = entries[i + j] if entries is not None else (None, None, None)
                self._shard_entries.append(ExampleEntry(self._next + j, shard, row + j, path, label, name))
            if patch_labels is not None:
                self._shard_patch_labels.append(np.asarray(patch_labels[i : i + take], dtype=np.uint8))
            self._next += take
            i += take
            if row + take == md.shard_n_examples(shard):
                self._close_shard(shard)

    def _open_shard(self, shard: int) -> None:
        if shutil.disk_usage(self.paths.root).free < self.shard_bytes + ROOM_MARGIN:  # not a traceback halfway
            raise errors.DataError(self._no_room())
        tmp = self.paths.shard_tmp(shard)
        self._fh = open(tmp, "wb")
        self._fh.truncate(self.md.examples_per_shard * self._row_bytes)  # saev's full size, also for the last shard
        self._hash = new_checksum()
        self._shard_stats = StatsAccumulator(self.md.n_layers, self.md.d_model)
        self._shard_entries = []
        self._shard_patch_labels = []

    def _close_shard(self, shard: int) -> None:
        fh, h = self._fh, self._hash
        # The checksum covers the examples the shard holds; the zero tail that saev's full-size layout gives the last
        # shard is left out (hashing gigabytes of padding would cost more than writing the data).
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        os.replace(self.paths.shard_tmp(shard), self.paths.shard(shard))
        self._index.put_many(self._shard_entries)
        has_patch_labels = bool(self._shard_patch_labels)
        if has_patch_labels:
            with atomic.atomic_file(self.paths.patch_labels_part(shard)) as tmp, open(tmp, "wb") as fh:
                np.save(fh, np.concatenate(self._shard_patch_labels))
        self._completed.append({
            "shard": shard,
            "name": shard_name(shard),
            "n_examples": self.md.shard_n_examples(shard),
            "checksum": h.hexdigest(),
            "stats": self._shard_stats.to_json() if self._shard_stats is not None else {},
            "patch_labels": has_patch_labels,
        })
        self._save_progress()
        self._fh = self._hash = self._shard_stats = None
        self._shard_entries = []
        self._shard_patch_labels = []

    # -- joining the parts of a split recording -----------------------------------------------------------------------
    def seal(self) -> list[dict[str, Any]]:
        """End this writer as one part of a recording split across jobs: an open shard (short, when images were
        skipped) is closed as it is and the index is closed; nothing of saev's is written. Returns the finished shards
        (name, examples, checksum, statistics), what :meth:`adopt` takes."""
        if self._next != self.md.n_examples:
            self.md = dataclasses.replace(self.md, n_examples=self._next)
        if self._fh is not None:
            self._close_shard(self._next // self.md.examples_per_shard)
        self._index.close()
        return list(self._completed)

    def adopt(self, src: pathlib.Path, shard_info: dict[str, Any], entries: Sequence[ExampleEntry],
              patch_labels: pathlib.Path | None = None) -> None:
        """Take a shard that another writer finished (``src``, as :meth:`seal` described it) as this dataset's next
        shard: hard-linked, not copied, with its checksum and statistics; ``entries`` are its examples (ids are
        renumbered here). The next example must start a shard, and a shard shorter than a full one must be the last."""
        md = self.md
        shard, row = divmod(self._next, md.examples_per_shard)
        n = int(shard_info["n_examples"])
        if self._fh is not None or row != 0 or not 0 < n <= md.examples_per_shard or len(entries) != n:
            raise errors.DataError(f"{src}: cannot take it as shard {shard} ({n} examples, {len(entries)} index "
                                   f"entries; {self._next} examples written)")
        if src.stat().st_size != md.examples_per_shard * self._row_bytes:
            raise errors.DataError(f"{src}: {src.stat().st_size} bytes, expected a full shard of "
                                   f"{md.examples_per_shard * self._row_bytes}")
        target = self.paths.shard(shard)
        target.unlink(missing_ok=True)
        os.link(src, target)
        if patch_labels is not None:
            self.paths.patch_labels_part(shard).unlink(missing_ok=True)
            os.link(patch_labels, self.paths.patch_labels_part(shard))
        self._index.put_many(dataclasses.replace(e, example_id=self._next + j, shard=shard, row=j)
                             for j, e in enumerate(entries))
        self._completed.append({**shard_info, "shard": shard, "name": shard_name(shard),
                                "patch_labels": patch_labels is not None})
        self._next += n
        self._save_progress()

    # -- finishing ---------------------------------------------------------------------------------------------------
    def finalize(self, n_examples: int | None = None) -> dict[str, Any]:
        """Write the saev files, statistics and the ``complete`` sidecar. Returns the sidecar contents.

        ``n_examples`` below the planned count ends the dataset early (a recording that skipped unreadable images):
        the open shard becomes the last one and the metadata says the real count. Its hash then differs from the
        planned one; :attr:`md` holds the final metadata.
        """
        with self._room():
            return self._finalize(n_examples)

    def _finalize(self, n_examples: int | None) -> dict[str, Any]:
        if n_examples is not None and n_examples != self.md.n_examples:
            if not 0 < n_examples <= self.md.n_examples or n_examples != self._next:
                raise errors.DataError(f"{self.paths.root}: cannot end with {n_examples} examples: {self._next} "
                                       f"written of {self.md.n_examples} planned")
            self.md = dataclasses.replace(self.md, n_examples=n_examples)
            if self._fh is not None:
                self._close_shard(self._next // self.md.examples_per_shard)
        md = self.md
        if self._next != md.n_examples or len(self._completed) != md.n_shards:
            raise errors.DataError(f"{self.paths.root}: cannot finalize, {self._next} of {md.n_examples} examples "
                                   f"written ({len(self._completed)} of {md.n_shards} shards complete)")
        stats = StatsAccumulator(md.n_layers, md.d_model)
        for s in self._completed:
            stats.merge(StatsAccumulator.from_json(s["stats"], md.n_layers, md.d_model))
        summary = stats.summary()
        self._index.put_meta({"n_examples": md.n_examples, "content_hash": md.content_hash})
        self._index.close()
        labels_bin = self._write_labels()
        atomic.write_json(self.paths.shards_json, [{"name": s["name"], "n_examples": s["n_examples"]}
                                                   for s in self._completed])
        atomic.write_json(self.paths.metadata, md.to_json_dict(), indent=None)
        save_stats(self.paths.stats, summary, md.layers)
        sidecar = build_sidecar(md, self.layout, [s["checksum"] for s in self._completed], summary, self.extra,
                                labels_bin=labels_bin, paths=self.paths)
        atomic.write_json(self.paths.sidecar, sidecar)
        self.paths.progress.unlink(missing_ok=True)
        return sidecar

    def _write_labels(self) -> bool:
        """saev's labels.bin: uint8 (n_examples, content tokens), each patch's class from its mask, written only when
        patch labels were given, as saev writes it only for segmentation data (an image's class stays in the index).
        Returns whether it was written."""
        if self._completed and all(s.get("patch_labels") for s in self._completed):
            parts = [np.load(self.paths.patch_labels_part(s["shard"])) for s in self._completed]
            patches = np.concatenate(parts)
            regs = np.full((len(patches), self.layout.n_registers), 255, dtype=np.uint8)  # registers: no class
            with atomic.atomic_file(self.paths.labels) as tmp:
                np.ascontiguousarray(np.concatenate([regs, patches], axis=1)).tofile(tmp)
            for s in self._completed:
                self.paths.patch_labels_part(s["shard"]).unlink(missing_ok=True)
            return True
        return False

    def abort(self) -> None:
        """Close files without finalizing; completed shards stay for a later resume."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._index.close()


def shard_fingerprint(path: pathlib.Path, md: Metadata, shard: int) -> str:
    """blake2b-128 of a shard's first and last example (two reads): what the quick `datasets verify` compares, so two
    shard files swapped or a shard from another dataset are caught without reading the data."""
    row = md.n_layers * md.tokens_per_example * md.d_model * dtypes.disk_dtype(md.dtype).itemsize
    h = new_checksum()
    with open(path, "rb", buffering=0) as fh:
        for r in (0, md.shard_n_examples(shard) - 1):
            h.update(os.pread(fh.fileno(), row, r * row))
    return h.hexdigest()


def integrity(paths: ShardPaths, md: Metadata) -> dict[str, Any]:
    """What the sidecar records beside the shards' checksums, from the finished files: each shard's fingerprint, the
    index's digest, and labels.bin's checksum and the label values it holds."""
    out: dict[str, Any] = {"fingerprints": [shard_fingerprint(paths.shard(i), md, i) for i in range(md.n_shards)]}
    reader = IndexReader(paths.index)
    try:
        out["index_digest"] = reader.digest()
    finally:
        reader.close()
    if paths.labels.exists():
        labels = np.fromfile(paths.labels, dtype=np.uint8)
        out["labels_checksum"] = labels_checksum(labels)
        out["label_values"] = [int(v) for v in np.flatnonzero(np.bincount(labels, minlength=256))]
    return out


def build_sidecar(md: Metadata, layout: TokenLayout, checksums: list[str], summary: dict[str, Any],
                  extra: dict[str, Any], *, labels_bin: bool, paths: ShardPaths) -> dict[str, Any]:
    return {
        "schema": SIDECAR_SCHEMA,
        "saev_ops_version": __version__,
        "content_hash": md.content_hash,
        "storage_dtype": md.dtype,
        "token_layout": layout.to_json_dict(),
        "checksum_algo": CHECKSUM_ALGO,
        "checksums": checksums,
        "labels_bin": labels_bin,
        "labels_kind": "patch" if labels_bin else None,
        **integrity(paths, md),
        "stats": {
            "n_tokens": summary["n_tokens"],
            "mean_norm": [float(x) for x in summary["mean_norm"]],
            "scale": [float(x) for x in summary["scale"]],
            "storage_nmse": summary["storage_nmse"],
            "storage_rel_err": summary["storage_rel_err"],
            "n_nonfinite": summary["n_nonfinite"],
        },
        "extra": extra,
        "complete": True,
    }
