"""The Shuffled loader's gather alone: random rows from the shards' map into a batch, by method and thread count.

    python benchmarks/gather.py --data /tmp/lb/data4/saev/shards/<hash>   # a dataset made by loaders.py --keep

Each batch is ``--batch-size`` rows drawn uniformly from every shard's examples, gathered from
:class:`saev_ops.loaders.rowmap.RowMap` (all shards in one map, 2 MiB aligned) into a page-aligned batch buffer per
thread, with every page of the map touched first (steady state, as after a training run's first epoch). Methods:
``np.take`` with ``mode="clip"`` (what the loader does), with ``mode="raise"`` (numpy then gathers into a temporary
and copies again), ``torch.index_select`` (one intra-op thread per call), ``np.take`` of the rows sorted by
offset (a batch in file order: the same rows, another order) and the same followed by an un-permuting take.
Against the plain one-thread read of the same valid bytes, in the same run. Last, ``np.take`` again from a second
map of the same files placed one page past 2 MiB boundaries (the kernel can then map no large folio whole:
``FilePmdMapped`` stays 0).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

if TYPE_CHECKING:
    from saev_ops.shards import ShardReader


def misaligned_rows(reader: ShardReader, slot_bytes: int) -> np.ndarray:
    """The shards mapped like RowMap does, but each one page past a 2 MiB boundary (kept mapped for the run)."""
    import ctypes
    import mmap

    from saev_ops.loaders import rowmap

    md = reader.md
    total = slot_bytes * md.n_shards + 2 * rowmap.SLOT_ALIGN
    reserved = rowmap._LIBC.mmap(None, total, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    base = -(-reserved // rowmap.SLOT_ALIGN) * rowmap.SLOT_ALIGN + mmap.PAGESIZE
    for i in range(md.n_shards):
        size = md.shard_n_examples(i) * reader.example_bytes
        rowmap._LIBC.mmap(base + i * slot_bytes, size, mmap.PROT_READ, mmap.MAP_SHARED | rowmap._MAP_FIXED,
                          reader.fd(i), 0)
    buf = (ctypes.c_uint8 * (slot_bytes * md.n_shards)).from_address(base)
    return np.frombuffer(memoryview(buf), dtype=reader.disk_dtype).reshape(-1, md.d_model)


def main() -> None:
    import torch
    from loaders import _read_valid, raw_buffers, valid_ranges, warm_cache

    from saev_ops.loaders import rowmap
    from saev_ops.shards import ShardReader, aligned

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=pathlib.Path, required=True)
    ap.add_argument("--batch-size", type=int, default=16384)
    ap.add_argument("--batches", type=int, default=48, help="batches per measurement, split between the threads")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    reader = ShardReader(args.data)
    md = reader.md
    warm_cache(args.data)
    bufs = raw_buffers(1)
    t0 = time.perf_counter()
    raw = _read_valid(valid_ranges(reader), bufs) // reader.row_bytes / (time.perf_counter() - t0)
    m = rowmap.RowMap(reader)
    rows = m.rows
    n_valid = np.asarray([md.shard_n_examples(i) * reader.example_bytes // reader.row_bytes
                          for i in range(md.n_shards)])
    off_page = misaligned_rows(reader, m.slot_bytes)
    for table_ in (rows, off_page):
        for i in range(md.n_shards):  # map every page once
            start = i * m.slot_rows
            int(table_[start : start + n_valid[i] : max(1, 4096 // reader.row_bytes), 0].sum())
    rng = np.random.default_rng(0)
    B = args.batch_size
    plans = []
    for _ in range(args.batches):
        shard = rng.integers(0, md.n_shards, B)
        plans.append(shard * m.slot_rows + (rng.random(B) * n_valid[shard]).astype(np.int64))
    in_file_order = {id(p): np.sort(p) for p in plans}
    torch.set_num_threads(1)
    with warnings.catch_warnings():  # the map is read-only; torch warns that it could not write it
        warnings.simplefilter("ignore")
        table = torch.from_numpy(rows)
    scratch: dict[int, np.ndarray] = {}

    def sorted_take(ids: np.ndarray, out: np.ndarray) -> None:
        order = np.argsort(ids)
        tmp = scratch.setdefault(threading.get_ident(), aligned.empty(out.shape, out.dtype))
        np.take(rows, ids[order], axis=0, out=tmp, mode="clip")
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        np.take(tmp, inv, axis=0, out=out, mode="clip")

    methods: dict[str, Callable[[np.ndarray, np.ndarray], object]] = {
        "np.take, clip (the loader)": lambda ids, out: np.take(rows, ids, axis=0, out=out, mode="clip"),
        "np.take, raise": lambda ids, out: np.take(rows, ids, axis=0, out=out),
        "np.take, rows in file order": lambda ids, out: np.take(rows, in_file_order[id(ids)], axis=0, out=out,
                                                                mode="clip"),
        "torch.index_select": lambda ids, out: torch.index_select(table, 0, torch.from_numpy(ids),
                                                                  out=torch.from_numpy(out)),
        "np.take sorted, then un-permuted": sorted_take,
        "np.take, map one page off 2 MiB": lambda ids, out: np.take(off_page, ids, axis=0, out=out, mode="clip"),
    }
    print(f"raw read, 1 thread: {raw / 1e6:.2f}M rows/s")
    for name, fn in methods.items():
        for n_threads in args.threads:
            outs = [aligned.empty((B, md.d_model), reader.disk_dtype) for _ in range(n_threads)]
            for o in outs:
                o[:] = 0

            def work(t: int, fn: Callable = fn, outs: list = outs, n_threads: int = n_threads) -> None:
                for ids in plans[t::n_threads]:
                    fn(ids, outs[t])

            threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
            t0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            rate = len(plans) * B / (time.perf_counter() - t0)
            print(f"{name:34} {n_threads} thread(s): {rate / 1e6:.2f}M rows/s = {rate / raw:.2f}x the raw read")


if __name__ == "__main__":
    main()
