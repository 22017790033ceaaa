"""``ShardReader``: opens and validates a dataset directory and reads example ranges with ``preadv``.

One reader per process: it keeps one file descriptor per shard and pickles as its path (``__getstate__``), so it can be
handed to worker processes or submitit jobs. Reads go straight into caller-provided numpy buffers and release the GIL,
so several threads can read at once.
"""

from __future__ import annotations

import os
import pathlib
import threading
from typing import Any

import numpy as np

from saev_ops import errors
from saev_ops.shards import aligned, dtypes
from saev_ops.shards.format import Metadata, ShardPaths, TokenLayout, read_json
from saev_ops.shards.stats import load_stats


class ShardReader:
    """Read access to the dataset in ``root``.

    Args:
        root: dataset directory.
        require_complete: refuse a directory that saev-ops has not marked complete (a write in progress, or a bare saev
            directory that was never imported).

    Raises:
        DataError: naming the file, what was expected and what was found.
    """

    def __init__(self, root: str | os.PathLike[str], *, require_complete: bool = True) -> None:
        self.root = pathlib.Path(root)
        self.require_complete = require_complete
        self.paths = ShardPaths(self.root)
        if not self.root.is_dir():
            raise errors.DataError(f"{self.root}: dataset directory does not exist (scratch file systems delete "
                                   "old data; re-record or re-import it)")
        if require_complete and self.paths.progress.exists():
            raise errors.DataError(f"{self.root}: incomplete dataset (a write is in progress or was interrupted: "
                                   f"{self.paths.progress.name} exists); rerun the recording to resume it")
        self.md = Metadata.from_json_dict(read_json(self.paths.metadata), source=str(self.paths.metadata))
        self.sidecar: dict[str, Any] | None = read_json(self.paths.sidecar) if self.paths.sidecar.exists() else None
        if require_complete and (self.sidecar is None or not self.sidecar.get("complete")):
            raise errors.DataError(f"{self.paths.sidecar}: missing or not complete; this directory was not written "
                                   "or imported by saev-ops (run `saev-ops datasets import PATH --name NAME`)")
        self.storage_dtype = self.md.dtype
        self.disk_dtype = dtypes.disk_dtype(self.md.dtype)
        if self.sidecar is not None:
            self.layout = TokenLayout.from_json_dict(self.sidecar["token_layout"])
        else:
            self.layout = TokenLayout(n_cls=1 if self.md.cls_token else 0, n_registers=0,
                                      n_patches=self.md.content_tokens_per_example)
        self.shard_sizes = self._validate_shards()
        self.example_bytes = self.md.n_layers * self.md.tokens_per_example * self.md.d_model * self.disk_dtype.itemsize
        self.layer_bytes = self.md.tokens_per_example * self.md.d_model * self.disk_dtype.itemsize
        self.row_bytes = self.md.d_model * self.disk_dtype.itemsize
        self._fds: dict[int, int] = {}
        self._rows: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._index: Any = None

    def _validate_shards(self) -> list[int]:
        md, p = self.md, self.paths
        listing = read_json(p.shards_json)
        if not isinstance(listing, list):
            raise errors.DataError(f"{p.shards_json}: expected a JSON list of {{name, n_examples}}, "
                                   f"found {type(listing).__name__}")
        if len(listing) != md.n_shards:
            raise errors.DataError(f"{p.shards_json}: lists {len(listing)} shards, metadata.json implies {md.n_shards} "
                                   f"({md.n_examples} examples, {md.examples_per_shard} per shard)")
        itemsize = dtypes.disk_dtype(md.dtype).itemsize
        expected_size = md.examples_per_shard * md.n_layers * md.tokens_per_example * md.d_model * itemsize
        sizes = []
        for i, entry in enumerate(listing):
            f = p.shard(i)
            if entry.get("name") != f.name or entry.get("n_examples") != md.shard_n_examples(i):
                raise errors.DataError(f"{p.shards_json}: entry {i} is {entry}, expected "
                                       f"{{'name': {f.name!r}, 'n_examples': {md.shard_n_examples(i)}}}")
            try:
                size = f.stat().st_size
            except FileNotFoundError:
                raise errors.DataError(f"{f}: missing shard file (expected {expected_size} bytes)") from None
            if size != expected_size:
                raise errors.DataError(f"{f}: {size} bytes, expected {expected_size} "
                                       f"({md.examples_per_shard} x {md.n_layers} x {md.tokens_per_example} x "
                                       f"{md.d_model} x {itemsize}); truncated or written with other metadata")
            sizes.append(entry["n_examples"])
        return sizes

    # -- pickling: keep only the path ----------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"root": str(self.root), "require_complete": self.require_complete}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], require_complete=state["require_complete"])  # type: ignore[misc]  # unpickling reopens

    # -- properties ---------------------------------------------------------------------------------------------------
    @property
    def n_examples(self) -> int:
        return self.md.n_examples

    @property
    def d_model(self) -> int:
        return self.md.d_model

    @property
    def tokens_per_example(self) -> int:
        return self.md.tokens_per_example

    def layer_index(self, layer: int) -> int:
        """Position of model layer ``layer`` on the layer axis (``-1`` is the last recorded layer)."""
        if layer == -1:
            return self.md.n_layers - 1
        try:
            return self.md.layers.index(layer)
        except ValueError:
            raise errors.ConfigError(f"layer {layer} was not recorded in {self.root}; recorded layers: "
                                     f"{list(self.md.layers)}") from None

    def stats(self) -> dict[str, np.ndarray]:
        if not self.paths.stats.exists():
            raise errors.DataError(f"{self.paths.stats}: missing statistics (re-import the dataset)")
        return load_stats(self.paths.stats)

    def labels(self) -> np.ndarray | None:
        """saev's ``labels.bin`` as uint8 (n_examples, content tokens), memory-mapped; None when the dataset has none.
        Content token ``j`` is token ``n_cls + j``: registers (255, no class) then patches."""
        if not self.paths.labels.exists():
            return None
        shape = (self.md.n_examples, self.md.content_tokens_per_example)
        size = self.paths.labels.stat().st_size
        if size != shape[0] * shape[1]:
            raise errors.DataError(f"{self.paths.labels}: {size} bytes, expected {shape[0] * shape[1]} (uint8, "
                                   f"{shape[0]} examples x {shape[1]} content tokens)")
        return np.memmap(self.paths.labels, dtype=np.uint8, mode="r", shape=shape) if size else np.zeros(shape,
                                                                                                         np.uint8)

    @property
    def labels_kind(self) -> str | None:
        """What ``labels.bin`` holds: ``patch`` (each patch's class: from masks, or a saev recording's), ``image``
        (each image's class in every patch slot: what saev-ops wrote for image folders before labels.bin meant what
        saev means, told by a sidecar without ``labels_kind``), or None without the file."""
        if not self.paths.labels.exists():
            return None
        side = self.sidecar or {}
        if side.get("labels_kind"):
            return str(side["labels_kind"])
        extra = side.get("extra") or {}
        return "patch" if extra.get("imported_from_saev") or (extra.get("provenance") or {}).get("masks") else "image"

    @property
    def index(self) -> Any:
        """The LMDB :class:`~saev_ops.shards.index.IndexReader`, opened on first use."""
        if self._index is None:
            from saev_ops.shards.index import IndexReader

            self._index = IndexReader(self.paths.index)
        return self._index

    # -- reading ------------------------------------------------------------------------------------------------------
    def fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = os.open(self.paths.shard(shard), os.O_RDONLY)
                    self._fds[shard] = fd
        return fd

    def pread_into(self, shard: int, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` from ``offset``, retrying short reads; a read past the end means the file shrank."""
        fd = self.fd(shard)
        done = 0
        total = len(buf)
        while done < total:
            n = os.preadv(fd, [buf[done:]], offset + done)
            if n <= 0:
                raise errors.DataError(f"{self.paths.shard(shard)}: short read at byte {offset + done} "
                                       f"(file truncated after it was opened?)")
            done += n

    def row_offsets(self, examples: Any, layer_idx: Any, token_idx: Any) -> tuple[np.ndarray, np.ndarray]:
        """Where rows (example, layer position, token) live on disk: their shard and byte offset in it, numpy
        broadcasting the three. The one place file offsets are computed."""
        if isinstance(examples, int) and isinstance(layer_idx, int) and isinstance(token_idx, int):
            shard_, row_ = divmod(examples, self.md.examples_per_shard)  # one row: plain ints, no numpy overhead
            return (np.asarray(shard_),
                    np.asarray(row_ * self.example_bytes + layer_idx * self.layer_bytes + token_idx * self.row_bytes))
        shard, row = np.divmod(np.asarray(examples, dtype=np.int64), self.md.examples_per_shard)
        offsets = (row * self.example_bytes + np.asarray(layer_idx, dtype=np.int64) * self.layer_bytes
                   + np.asarray(token_idx, dtype=np.int64) * self.row_bytes)
        return shard, offsets

    def rows(self, shard: int) -> np.ndarray:
        """Shard ``shard`` memory-mapped as (rows, d_model) in its disk dtype: row ``offset // row_bytes`` holds the row
        at a :meth:`row_offsets` offset. For gathering many scattered rows at once (the page cache serves them)."""
        mm = self._rows.get(shard)
        if mm is None:
            md = self.md
            mm = np.memmap(self.paths.shard(shard), dtype=self.disk_dtype, mode="r",
                           shape=(md.examples_per_shard * md.n_layers * md.tokens_per_example, md.d_model))
            self._rows[shard] = mm
        return mm

    def read_raw(self, example_start: int, n: int, layer_idx: int | None, out: np.ndarray) -> None:
        """Read examples ``[example_start, example_start + n)`` in storage dtype into ``out``.

        ``out`` is shaped (n, L, T, D) for all layers (``layer_idx`` None) or (n, T, D) for one layer, with the disk
        dtype. Ranges may cross shards.
        """
        eps = self.md.examples_per_shard
        pos = 0
        while pos < n:
            shard, row = divmod(example_start + pos, eps)
            take = min(n - pos, eps - row)
            dest = out[pos : pos + take]
            if layer_idx is None or self.md.n_layers == 1:
                self.pread_into(shard, row * self.example_bytes, dest.data.cast("B"))
            else:
                for j in range(take):
                    offset = (row + j) * self.example_bytes + layer_idx * self.layer_bytes
                    self.pread_into(shard, offset, dest[j].data.cast("B"))
            pos += take

    def read(self, example_start: int, n: int, layer_idx: int | None = None) -> np.ndarray:
        """Read examples as float32: (n, L, T, D), or (n, T, D) for one layer."""
        md = self.md
        shape = (n, md.n_layers, md.tokens_per_example, md.d_model) if layer_idx is None else (
            n, md.tokens_per_example, md.d_model)
        raw = aligned.empty(shape, self.disk_dtype)
        self.read_raw(example_start, n, layer_idx, raw)
        return dtypes.decode(raw, self.storage_dtype)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        if self._index is not None:
            self._index.close()
            self._index = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
