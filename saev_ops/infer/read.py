"""Reading inference outputs without activations or checkpoints: the CSR matrix, latent statistics, and the example
behind any row."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np

from saev_ops import errors
from saev_ops.registry import OutputRecord, Registry
from saev_ops.shards.index import IndexReader


def patch_layout(token_layout: dict[str, int]) -> tuple[int, int, int]:
    """(first patch token, number of patches, side of the square patch grid; 0 when the patches form none) of a
    dataset's stored token layout."""
    n_patches = int(token_layout.get("n_patches", 0))
    first = int(token_layout.get("n_cls", 0)) + int(token_layout.get("n_registers", 0))
    side = int(np.sqrt(n_patches))
    return first, n_patches, side if n_patches and side * side == n_patches else 0


@dataclasses.dataclass
class Output:
    record: OutputRecord
    path: pathlib.Path
    info: dict[str, Any]
    dataset_path: str
    token_layout: dict[str, int] = dataclasses.field(default_factory=dict)
    """The dataset's stored token layout (n_cls, n_registers, n_patches), to place patch rows on the image grid."""
    _csr: Any = dataclasses.field(default=None, repr=False)
    _labels: Any = dataclasses.field(default=None, repr=False)

    @classmethod
    def open(cls, registry: Registry, output_id: int) -> Output:
        rec = registry.get_output(output_id)
        path = pathlib.Path(rec.path)
        if not (path / "output.json").exists():
            raise errors.DataError(f"{path}: inference output {output_id} is missing on disk (re-run `saev-ops infer`)")
        ds = registry.get_dataset_by_id(rec.dataset_id)
        return cls(rec, path, json.loads((path / "output.json").read_text()), ds.path,
                   dict(ds.extra.get("token_layout") or {}))

    def matrix(self) -> Any:
        """The CSR matrix (loaded once per Output)."""
        import scipy.sparse

        if self._csr is None:
            self._csr = scipy.sparse.load_npz(self.path / "latents.npz").tocsr()
        return self._csr

    def patch_grid(self, example: int, latent: int) -> np.ndarray | None:
        """``latent``'s activation on each patch of ``example`` as a (side, side) array in the image's layout, or None
        when the output holds no patch rows or the patches do not form a square grid."""
        first_patch, n_patches, side = patch_layout(self.token_layout)
        if not side:
            return None
        token_idx = np.asarray(self.info["token_idx"])
        per = self.info["tokens_per_example"]
        rows = self.matrix()[example * per : (example + 1) * per, latent].toarray().ravel()
        grid = np.zeros(n_patches, dtype=np.float32)
        for pos in range(per):
            t = int(token_idx[pos % len(token_idx)]) - first_patch
            if 0 <= t < n_patches:
                grid[t] = rows[pos]
        return grid.reshape(side, side)

    def latent_stats(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "latent_stats.npz") as z:
            return {k: z[k] for k in z.files}

    def row_example(self, row: int) -> dict[str, Any]:
        """The example (image path, label) and token behind a row."""

        per = self.info["tokens_per_example"]
        ex, pos = divmod(int(row), per)
        idx = IndexReader(pathlib.Path(self.dataset_path) / "index.lmdb")
        try:
            e = idx.get(ex)
        finally:
            idx.close()
        token_idx = self.info["token_idx"]
        tok = int(token_idx[pos % len(token_idx)])
        return {"row": int(row), "example_idx": ex, "token_idx": tok, "path": e.path,
                "label": e.label, "label_name": e.label_name, "patch_label": self.patch_label(ex, tok)}

    def patch_label(self, example: int, token: int) -> int | None:
        """The class saev's labels.bin gives this patch token (its mask's class), or None for CLS and register tokens
        and datasets without patch labels (an older dataset's labels.bin of image classes is not read as one)."""
        if self._labels is None:
            from saev_ops.shards.reader import ShardReader

            reader = ShardReader(self.dataset_path)  # the directory's own layout: what labels.bin's columns are
            try:
                labels = reader.labels() if reader.labels_kind == "patch" else None
                arr = np.asarray(labels) if labels is not None else np.zeros((0, 0), np.uint8)
                self._labels = (arr, reader.layout.n_cls, reader.layout.n_registers)
            finally:
                reader.close()
        labels, n_cls, n_reg = self._labels
        j = token - n_cls
        if token < n_cls + n_reg or not 0 <= example < labels.shape[0] or j >= labels.shape[1]:
            return None
        return int(labels[example, j])

    def top_rows(self, latent: int, n: int = 20) -> list[tuple[int, float]]:
        """The n rows where ``latent`` is largest, without densifying the matrix."""
        if not 0 <= latent < self.record.n_cols:
            raise errors.QueryError(f"latent {latent} out of range: output {self.record.id} has {self.record.n_cols}")
        with np.load(self.path / "latents.npz") as z:
            indices, data, indptr = z["indices"], z["data"], z["indptr"]
        hits = np.flatnonzero(indices == latent)
        if hits.size == 0:
            return []
        vals = data[hits]
        order = np.argsort(-vals, kind="stable")[:n]
        rows = np.searchsorted(indptr, hits[order], side="right") - 1
        return [(int(r), float(v)) for r, v in zip(rows, vals[order], strict=True)]
