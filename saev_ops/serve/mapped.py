"""An inference output read through memory maps, and its index from each latent to its rows.

``latents.npz`` is written uncompressed (scipy's ``save_npz`` layout, :func:`saev_ops.infer.run.assemble_csr`), so each
of its arrays lies whole inside the zip file and is mapped in place: the explorer's memory follows what a page touches,
not the output's size. A row's latents are one slice of the CSR arrays; a latent's rows need the transpose, which
:func:`build_latent_index` writes once beside the output (``by_latent/``; under the home's cache when the output's
directory is read-only): for each latent its rows and values, strongest first, built in fixed blocks of entries with
bounded memory. The index records the size and entry count of the ``latents.npz`` it was built from and is rebuilt
when they change (``infer --force``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import struct
import threading
import zipfile
from typing import Any

import numpy as np

from saev_ops import atomic, errors, paths

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
BLOCK = 1 << 22  # CSR entries per step of the index build


def npz_member(path: pathlib.Path, name: str) -> np.ndarray:
    """Array ``name`` of the uncompressed ``.npz`` at ``path``, memory-mapped (read-only)."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(f"{name}.npy")
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise errors.DataError(f"{path}: cannot read array {name!r}: {exc}") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise errors.DataError(f"{path}: array {name!r} is compressed; the explorer maps outputs written by "
                               "`saev-ops infer` (uncompressed)")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise errors.DataError(f"{path}: damaged zip entry for {name!r}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


@dataclasses.dataclass
class MappedCsr:
    """The CSR arrays of an output, mapped: ``indptr`` (rows + 1), ``indices`` (latent of each entry), ``data``."""

    path: pathlib.Path
    n_rows: int
    n_cols: int
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    @classmethod
    def open(cls, output_dir: pathlib.Path) -> MappedCsr:
        path = output_dir / "latents.npz"
        if not path.exists():
            raise errors.DataError(f"{path}: missing (re-run `saev-ops infer`)")
        shape = np.asarray(npz_member(path, "shape"))
        indptr, indices, data = (npz_member(path, k) for k in ("indptr", "indices", "data"))
        n_rows, n_cols = int(shape[0]), int(shape[1])
        if len(indptr) != n_rows + 1 or len(indices) != len(data) or int(indptr[-1]) != len(indices):
            raise errors.DataError(f"{path}: inconsistent CSR arrays (indptr {len(indptr)}, indices {len(indices)}, "
                                   f"data {len(data)}, shape {n_rows}x{n_cols})")
        return cls(path, n_rows, n_cols, indptr, indices, data)

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def row_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``start..stop-1``: (row of each entry, latent, value)."""
        a, b = int(self.indptr[start]), int(self.indptr[stop])
        counts = np.diff(np.asarray(self.indptr[start : stop + 1]))
        rows = np.repeat(np.arange(start, stop, dtype=np.int64), counts)
        return rows, np.asarray(self.indices[a:b]), np.asarray(self.data[a:b])


@dataclasses.dataclass
class LatentIndex:
    """For each latent, its rows and values, strongest first: ``rows[indptr[j]:indptr[j+1]]``."""

    path: pathlib.Path
    indptr: np.ndarray
    rows: np.ndarray
    values: np.ndarray
    top_label: np.ndarray
    """Per latent, the image label most of its activations fall on (-1: none)."""
    purity: np.ndarray
    """Per latent, the share of its activations on images of ``top_label`` (NaN: never fires or no labels)."""

    def of(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.indptr[latent]), int(self.indptr[latent + 1])
        return self.rows[a:b], self.values[a:b]


def _source(csr: MappedCsr, labels: np.ndarray, per: int) -> dict[str, Any]:
    return {"format": INDEX_FORMAT, "npz_bytes": csr.path.stat().st_size, "nnz": csr.nnz,
            "shape": [csr.n_rows, csr.n_cols], "rows_per_example": per,
            "labels": hashlib.blake2b(np.ascontiguousarray(labels).tobytes(), digest_size=8).hexdigest()}


_ARRAYS = ("indptr", "rows", "values", "top_label", "purity")


def _read_index(folder: pathlib.Path, source: dict[str, Any], csr: MappedCsr) -> LatentIndex | None:
    try:
        meta = json.loads((folder / "index.json").read_text())
    except (OSError, ValueError):
        return None
    if meta != source:
        return None
    try:
        arrays = [np.load(folder / f"{k}.npy", mmap_mode="r") for k in _ARRAYS]
    except (OSError, ValueError):
        return None
    if len(arrays[0]) != csr.n_cols + 1 or len(arrays[1]) != csr.nnz or len(arrays[2]) != csr.nnz:
        return None
    return LatentIndex(folder, *arrays)


def _purity(rows: np.ndarray, labels: np.ndarray, per: int) -> tuple[int, float]:
    """(most common image label, its share) over the activations at ``rows``; (-1, NaN) without labels."""
    if len(rows) == 0 or len(labels) == 0:
        return -1, float("nan")
    lab = labels[np.asarray(rows) // per]
    lab = lab[lab >= 0]
    if len(lab) == 0:
        return -1, float("nan")
    counts = np.bincount(lab)
    top = int(counts.argmax())
    return top, float(counts[top] / len(lab))


def _write_index(csr: MappedCsr, folder: pathlib.Path, labels: np.ndarray, per: int) -> None:
    """The transpose of ``csr`` into ``folder`` (a fresh directory), in blocks of :data:`BLOCK` entries; ``labels``:
    each example's image label (-1: none), for each latent's purity."""
    nnz, d = csr.nnz, csr.n_cols
    counts = np.zeros(d, dtype=np.int64)
    for a in range(0, nnz, BLOCK):
        counts += np.bincount(np.asarray(csr.indices[a : a + BLOCK]), minlength=d)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    row_dtype = np.int32 if csr.n_rows < 2**31 else np.int64
    np.save(folder / "indptr.npy", indptr)
    shape = (max(nnz, 1),)  # a memmap cannot be empty; trimmed below
    rows = np.lib.format.open_memmap(folder / "rows.tmp.npy", mode="w+", dtype=row_dtype, shape=shape)
    values = np.lib.format.open_memmap(folder / "values.tmp.npy", mode="w+", dtype=np.float32, shape=shape)
    fill = indptr[:-1].copy()
    for a in range(0, nnz, BLOCK):
        cols = np.asarray(csr.indices[a : a + BLOCK])
        vals = np.asarray(csr.data[a : a + BLOCK])
        row_of = np.searchsorted(csr.indptr, np.arange(a, a + len(cols)), side="right") - 1
        order = np.argsort(cols, kind="stable")
        c = cols[order]
        uniq, first, n = np.unique(c, return_index=True, return_counts=True)
        dest = fill[c] + (np.arange(len(c)) - np.repeat(first, n))
        rows[dest] = row_of[order]
        values[dest] = vals[order]
        fill[uniq] += n
    top_label = np.full(d, -1, dtype=np.int32)
    purity = np.full(d, np.nan, dtype=np.float32)
    for j in range(d):  # strongest first within each latent (ties: lower row first)
        a, b = int(indptr[j]), int(indptr[j + 1])
        if b - a > 1:
            order = np.lexsort((rows[a:b], -values[a:b]))
            rows[a:b], values[a:b] = rows[a:b][order], values[a:b][order]
        top_label[j], purity[j] = _purity(rows[a:b], labels, per)
    np.save(folder / "top_label.npy", top_label)
    np.save(folder / "purity.npy", purity)
    for name, arr in (("rows", rows), ("values", values)):
        arr.flush()
        np.save(folder / f"{name}.npy", np.asarray(arr[:nnz]))
    del rows, values
    for name in ("rows", "values"):
        (folder / f"{name}.tmp.npy").unlink()
    atomic.write_json(folder / "index.json", _source(csr, labels, per))


_BUILD_LOCK = threading.Lock()  # one build at a time in this process: concurrent requests wait for the first


def latent_index(output_dir: pathlib.Path, csr: MappedCsr, labels: np.ndarray, per: int) -> LatentIndex:
    """The output's latent index, built on first use: beside the output, or under the home's cache when the output's
    directory cannot be written. Never changes the output's own files. ``labels``: each example's image label (-1:
    none); ``per``: rows per example."""
    source = _source(csr, labels, per)
    places = [paths.latent_index_dir(output_dir), paths.latent_index_cache_dir(output_dir)]
    for place in places:
        found = _read_index(place, source, csr)
        if found is not None:
            return found
    with _BUILD_LOCK:
        for place in places:
            found = _read_index(place, source, csr)
            if found is not None:
                return found
        problems = []
        for place in places:
            tmp = place.with_name(f".{place.name}.tmp-{os.getpid()}")
            try:
                atomic.fresh_dir(tmp)
                log.info("building the latent index of %s (%d entries) in %s", output_dir, csr.nnz, place)
                _write_index(csr, tmp, labels, per)
                atomic.replace_dir(tmp, place)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                problems.append(f"{place}: {exc.strerror or exc}")
                continue
            found = _read_index(place, source, csr)
            if found is not None:
                return found
        raise errors.DataError(f"cannot write the latent index of {output_dir}: " + "; ".join(problems))
