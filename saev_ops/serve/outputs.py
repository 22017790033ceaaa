"""What the explorer knows of one inference output: its registry row, ``output.json``, the mapped CSR matrix, the
latent statistics, the latent index, and the dataset's image and patch labels. Torch-free; opened once per output and
kept in a small cache (:class:`OutputCache`)."""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import threading
from typing import Any

import numpy as np

from saev_ops import errors
from saev_ops.infer.read import patch_layout
from saev_ops.registry import DatasetRecord, OutputRecord, Registry
from saev_ops.serve.mapped import LatentIndex, MappedCsr, latent_index
from saev_ops.shards.index import IndexReader

DENSE = 0.1  # as the report: a latent firing on more than this share of rows marks background, not a feature


@dataclasses.dataclass
class ExampleLabels:
    """Each example's image label (-1: none), the names of the labels, and each example's path (None: unknown)."""

    labels: np.ndarray
    names: dict[int, str]

    def name(self, label: int) -> str | None:
        """A label's name (its number where the index records none); None for -1, no label."""
        return self.names.get(int(label), str(int(label))) if label >= 0 else None

    def of(self, example: int) -> str | None:
        """The name of ``example``'s image label, or None."""
        return self.name(int(self.labels[example])) if 0 <= example < len(self.labels) else None


def example_labels(dataset: DatasetRecord) -> ExampleLabels:
    """The image labels of the dataset's examples, read from its LMDB index once."""

    idx = IndexReader(pathlib.Path(dataset.path) / "index.lmdb")
    labels = np.full(dataset.n_examples, -1, dtype=np.int32)
    names: dict[int, str] = {}
    try:
        for i in range(dataset.n_examples):
            try:
                e = idx.get(i)
            except errors.NotFoundError:
                continue
            if e.label is not None:
                labels[i] = int(e.label)
                if e.label_name is not None:
                    names.setdefault(int(e.label), str(e.label_name))
    finally:
        idx.close()
    return ExampleLabels(labels, names)


@dataclasses.dataclass
class OutputView:
    record: OutputRecord
    dataset: DatasetRecord
    path: pathlib.Path
    info: dict[str, Any]
    csr: MappedCsr
    stats: dict[str, np.ndarray]
    labels: ExampleLabels
    _index: LatentIndex | None = None
    _patch_labels: Any = None

    @classmethod
    def open(cls, registry: Registry, output_id: int) -> OutputView:
        rec = registry.get_output(output_id)
        path = pathlib.Path(rec.path)
        try:
            info = json.loads((path / "output.json").read_text())
        except (OSError, ValueError) as exc:
            raise errors.DataError(f"{path}: inference output {output_id} is missing or damaged on disk ({exc}); "
                                   "re-run `saev-ops infer`") from None
        csr = MappedCsr.open(path)
        if (csr.n_rows, csr.n_cols) != (rec.n_rows, rec.n_cols):
            raise errors.DataError(f"{path}: {csr.n_rows}x{csr.n_cols}, but the registry says {rec.n_rows}x"
                                   f"{rec.n_cols}")
        with np.load(path / "latent_stats.npz") as z:
            stats = {k: np.asarray(z[k]) for k in z.files}
        dataset = registry.get_dataset_by_id(rec.dataset_id)
        return cls(rec, dataset, path, info, csr, stats, example_labels(dataset))

    @property
    def per(self) -> int:
        """Rows per example."""
        return int(self.info["tokens_per_example"])

    @property
    def token_idx(self) -> np.ndarray:
        return np.asarray(self.info["token_idx"], dtype=np.int64)

    @property
    def index(self) -> LatentIndex:
        if self._index is None:
            self._index = latent_index(self.path, self.csr, self.labels.labels, self.per)
        return self._index

    @property
    def n_examples(self) -> int:
        return self.csr.n_rows // max(self.per, 1)

    def layout(self) -> tuple[int, int, int]:
        """(first patch token, patches, side of the patch grid; 0 when the patches form no square grid)."""

        return patch_layout(self.dataset.extra.get("token_layout") or {})

    def check_latent(self, latent: int) -> None:
        if not 0 <= latent < self.csr.n_cols:
            raise errors.NotFoundError(f"latent {latent} is not in output {self.record.id} "
                                       f"(it has latents 0..{self.csr.n_cols - 1})")

    def check_example(self, example: int) -> None:
        if not 0 <= example < self.n_examples:
            raise errors.NotFoundError(f"image {example} is not in output {self.record.id} "
                                       f"(it has images 0..{self.n_examples - 1})")

    def example_rows(self, example: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Example ``example``'s entries: (token of each, latent, value)."""
        rows, cols, vals = self.csr.row_range(example * self.per, (example + 1) * self.per)
        tokens = self.token_idx[(rows - example * self.per) % len(self.token_idx)]
        return tokens, cols, vals

    def patch_grid(self, tokens: np.ndarray, values: np.ndarray) -> list[list[float]] | None:
        """Values at ``tokens`` placed on the (side, side) patch grid; None without a square grid."""
        first, n_patches, side = self.layout()
        if not side:
            return None
        grid = np.zeros(n_patches, dtype=np.float64)
        t = tokens - first
        ok = (t >= 0) & (t < n_patches)
        np.maximum.at(grid, t[ok], values[ok])
        return grid.reshape(side, side).tolist()

    def patch_labels(self) -> np.ndarray | None:
        """saev's labels.bin (examples x content tokens) when it holds patch labels; else None."""
        if self._patch_labels is None:
            from saev_ops.shards.reader import ShardReader

            reader = ShardReader(self.dataset.path)
            try:
                arr = reader.labels() if reader.labels_kind == "patch" else None
                self._patch_labels = (arr, reader.layout.n_cls)
            finally:
                reader.close()
        return self._patch_labels[0]

    def patch_label_of(self, rows: np.ndarray) -> np.ndarray | None:
        """The patch label of each row (255: none, as saev), or None without patch labels."""
        labels = self.patch_labels()
        if labels is None:
            return None
        n_cls = self._patch_labels[1]
        ex, pos = np.divmod(np.asarray(rows, dtype=np.int64), self.per)
        j = self.token_idx[pos % len(self.token_idx)] - n_cls
        ok = (j >= 0) & (j < labels.shape[1]) & (ex < labels.shape[0])
        out = np.full(len(ex), 255, dtype=np.int64)
        out[ok] = labels[ex[ok], j[ok]]
        return out


class OutputCache:
    """The last few outputs opened, by id (bounded: each holds mapped files and a label array)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: collections.OrderedDict[int, OutputView] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, registry: Registry, output_id: int) -> OutputView:
        rec = registry.get_output(output_id)  # raises NotFoundError; a replaced output (infer --force) reopens
        with self._lock:
            view = self._items.get(output_id)
            if view is not None and view.record.path == rec.path and view.record.nnz == rec.nnz:
                self._items.move_to_end(output_id)
                return view
        view = OutputView.open(registry, output_id)
        with self._lock:
            self._items[output_id] = view
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return view
