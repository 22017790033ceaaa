"""``IndexedDataset``: random access to single rows by global index, or to whole examples by id or image path.

A global index ``i`` enumerates the selected rows in the same order as :class:`OrderedDataLoader`:
``example = i // rows_per_example``, then layer, then token. Works as a ``torch.utils.data.Dataset`` with a default
``DataLoader`` (its ``__getitems__`` reads a batch of rows in one vectorised call); :meth:`IndexedDataset.get_batch`
returns the collated batch without the per-row samples.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from saev_ops import errors
from saev_ops.loaders.blocks import read_examples
from saev_ops.loaders.rowmap import RowMap
from saev_ops.loaders.selection import Batch, ShardSelection, plan, to_batch
from saev_ops.shards import aligned, dtypes
from saev_ops.shards.reader import ShardReader


class IndexedDataset:
    def __init__(self, root: str | os.PathLike[str] | ShardReader,
                 selection: ShardSelection = ShardSelection()) -> None:
        self.reader = root if isinstance(root, ShardReader) else ShardReader(root)
        self.selection = selection
        self.plan = plan(self.reader, selection)
        md = self.reader.md
        self._rpe = self.plan.rows_per_example
        self._n_tok = len(self.plan.token_idx)
        self._tokens = self.plan.token_idx.tolist()
        self._layer_idx = list(self.plan.layer_idx)
        self._eps = md.examples_per_shard
        self._row_bytes = self.reader.row_bytes
        self._len = md.n_examples * self._rpe
        self._map: RowMap | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"root": str(self.reader.root), "selection": self.selection}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["selection"])  # type: ignore[misc]  # unpickling reopens the files

    def __len__(self) -> int:
        return self._len

    def _locate(self, i: int) -> tuple[int, int, int, int, int]:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"index {i} out of range for {self._len} rows")
        ex, within = divmod(i, self._rpe)
        li, ti = divmod(within, self._n_tok)
        tok = self._tokens[ti]
        shard, offset = self.reader.row_offsets(ex, self._layer_idx[li], tok)
        return ex, int(shard), int(offset), li, tok

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One row: ``act`` (d_model,) float32 tensor, ``example_idx``, ``token_idx``, ``layer`` ints."""
        ex, shard, offset, li, tok = self._locate(int(i))
        arr = np.empty(self.reader.md.d_model, dtype=self.reader.disk_dtype)
        self.reader.pread_into(shard, offset, arr.data)  # read_rows' one-row case, without building arrays
        if self.reader.storage_dtype != "float32":
            arr = dtypes.decode(arr, self.reader.storage_dtype)
        return {"act": torch.from_numpy(arr), "example_idx": ex,
                "token_idx": tok, "layer": self.plan.layer_numbers[li]}

    def get_batch(self, indices: Any) -> Batch:
        """Many rows at once (vectorised): a :class:`Batch` in the order of ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -self._len or idx.max() >= self._len):
            raise IndexError(f"indices out of range for {self._len} rows")
        idx = np.where(idx < 0, idx + self._len, idx)
        ex, within = np.divmod(idx, self._rpe)
        li, ti = np.divmod(within, self._n_tok)
        tok = self.plan.token_idx[ti]
        shard, offsets = self.reader.row_offsets(ex, np.asarray(self._layer_idx, dtype=np.int64)[li], tok)
        # one gather from the map of all shards, in the order asked (repeats included), as the Shuffled loader cuts
        rowmap = self._rowmap()
        rowmap.check_sizes()  # a truncated shard is named here, not met as SIGBUS in the gather
        rows = rowmap.global_rows(shard, offsets)
        out = aligned.empty((len(idx), self.reader.d_model), np.float32)
        if self.reader.disk_dtype == np.float32:
            rowmap.take(rows, out)
        else:
            raw = rowmap.take(rows, aligned.empty((len(idx), self.reader.d_model), self.reader.disk_dtype))
            dtypes.decode(raw, self.reader.storage_dtype, out)
        layers = np.asarray(self.plan.layer_numbers, dtype=np.int64)[li]
        return to_batch(out, ex, tok, layers)

    def _rowmap(self) -> RowMap:
        """The shards' map, made on first use in this process (a pickled dataset makes its own after unpickling)."""
        if self._map is None:
            self._map = RowMap(self.reader)
        return self._map

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """torch's batched fetch: one vectorised read, returned as the list of samples (``__getitem__``'s dicts) that
        a DataLoader's collate expects; :meth:`get_batch` gives the collated :class:`Batch` directly."""
        b = self.get_batch(indices)
        ex, tok, layer = (b[k].tolist() for k in ("example_idx", "token_idx", "layer"))
        return [{"act": b["act"][j], "example_idx": ex[j], "token_idx": tok[j], "layer": layer[j]}
                for j in range(len(ex))]

    def example(self, key: int | str) -> dict[str, Any]:
        """A whole example by id or image path: ``act`` (layers_selected, tokens_selected, d_model) plus its index
        entry (image path, label)."""
        if isinstance(key, str):
            example_id = self.reader.index.find_path(key)
        else:
            example_id = int(key)
            if not 0 <= example_id < self.reader.n_examples:
                raise errors.NotFoundError(f"example {example_id} out of range (dataset has {self.reader.n_examples})")
        entry = self.reader.index.get(example_id)
        block = read_examples(self.reader, self.plan, example_id, 1)[0]
        return {"act": torch.from_numpy(np.ascontiguousarray(block[:, self.plan.token_idx])),
                "example_idx": example_id, "path": entry.path, "label": entry.label, "label_name": entry.label_name}
