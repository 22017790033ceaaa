"""A design not yet in the loaders: cut each shuffled batch straight from the shard files' memory maps.

    python benchmarks/mmap_gather.py --data /tmp/lb/data4/saev/shards/<hash>   # a dataset made by loaders.py --keep

The Shuffled loader reads each group into a 2 GiB buffer, every row to its shuffled place, then cuts batches from it.
With the files in the page cache the batch rows could instead be gathered from the files' maps directly: the same
rows in the same order (so the same batches), one copy with sequential writes, and no group buffers (4.5 GB less).
This measures that gather alone (``torch.index_select`` of random rows from the maps into a page-aligned batch
buffer, 1..N threads, every page mapped once first, as in steady state) against the plain one-thread read of the same
files in the same run.

``--cold`` follows the Shuffled loader's own plan for one epoch (its groups and permutations, all tokens of the last
layer), first checking that the gathered batches equal the loader's, then drops the files' pages and cuts the epoch
from disk: while a group is cut, the next group's examples are read ahead into the page cache
(``posix_fadvise(WILLNEED)``, in a thread). Against the plain read from disk with 1 and 2 threads in the same run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import threading
import time
import warnings
from typing import Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def shard_maps(reader: Any) -> list[Any]:
    """Each shard's examples (not the last shard's zero tail) as a torch tensor of byte rows over its memory map."""
    import torch

    with warnings.catch_warnings():  # the maps are read-only; torch warns that it could not write them
        warnings.simplefilter("ignore")
        return [torch.from_numpy(np.asarray(reader.rows(i)).reshape(-1).view(np.uint8)
                                 [: reader.md.shard_n_examples(i) * reader.example_bytes].reshape(-1, reader.row_bytes))
                for i in range(reader.md.n_shards)]


def main() -> None:
    import torch
    from loaders import _read_valid, raw_buffers, valid_ranges, warm_cache

    from saev_ops.shards import ShardReader, aligned

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=pathlib.Path, required=True)
    ap.add_argument("--batch-size", type=int, default=16384)
    ap.add_argument("--batches", type=int, default=24, help="batches per thread")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cold", action="store_true", help="one epoch of the loader's plan from disk (see above)")
    args = ap.parse_args()
    if args.cold:
        cold(args)
        return
    reader = ShardReader(args.data)
    md = reader.md
    row_bytes = reader.row_bytes
    warm_cache(args.data)
    bufs = raw_buffers(1)
    t0 = time.perf_counter()
    raw = _read_valid(valid_ranges(reader), bufs) // row_bytes / (time.perf_counter() - t0)
    torch.set_num_threads(1)  # one gather per thread, as reader threads would run them
    maps = shard_maps(reader)
    for m in maps:  # map every page once: steady state, as after a training run's first epoch
        int(m[:, 0].sum())
    rng = np.random.default_rng(0)
    B = args.batch_size
    print(f"raw read, 1 thread: {raw / 1e6:.2f}M rows/s")
    for n_threads in args.threads:
        plans = []
        for _ in range(args.batches * n_threads):
            shard = rng.integers(0, md.n_shards, B)
            row = (rng.random(B) * np.asarray([len(m) for m in maps])[shard]).astype(np.int64)
            order = np.argsort(shard, kind="stable")
            plans.append((shard[order], torch.from_numpy(row[order])))
        outs = [torch.from_numpy(aligned.empty((B, row_bytes), np.uint8)) for _ in range(n_threads)]
        for o in outs:
            o.zero_()

        def work(t: int, out: torch.Tensor, plans: list = plans, n_threads: int = n_threads) -> None:
            for shard, row in plans[t::n_threads]:
                cuts = np.searchsorted(shard, np.arange(md.n_shards + 1))
                for s in range(md.n_shards):
                    a, b = int(cuts[s]), int(cuts[s + 1])
                    if a < b:
                        torch.index_select(maps[s], 0, row[a:b], out=out[a:b])

        threads = [threading.Thread(target=work, args=(t, outs[t])) for t in range(n_threads)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        rate = len(plans) * B / (time.perf_counter() - t0)
        print(f"gather from the maps, {n_threads} thread(s): {rate / 1e6:.2f}M rows/s = {rate / raw:.2f}x the raw read")


def cold(args: argparse.Namespace) -> None:
    import torch
    from loaders import _read_valid, drop_cache, raw_buffers, valid_ranges

    from saev_ops.loaders import ShardSelection, ShuffledConfig, ShuffledDataLoader
    from saev_ops.shards import ShardReader, aligned

    reader = ShardReader(args.data)
    md = reader.md
    if reader.storage_dtype != "float32":
        raise SystemExit("--cold gathers float32 shards only")
    loader = ShuffledDataLoader(reader, ShuffledConfig(selection=ShardSelection(tokens="all"),
                                                       batch_size=args.batch_size))
    rpe, eps, B = loader.plan.rows_per_example, md.examples_per_shard, args.batch_size
    layer_row = loader.plan.layer_idx[0] * md.tokens_per_example
    torch.set_num_threads(1)
    maps = shard_maps(reader)
    groups = loader._groups(0)

    def group_rows(gi: int) -> np.ndarray:  # global (example, row) ids of group gi in its shuffled order
        g = groups[gi]
        ex = np.concatenate([np.arange(s, s + c) for s, c in g.blocks])
        perm = loader._group_perm(0, gi, g.n_rows)
        return ex[perm // rpe] * rpe + perm % rpe

    def gather(rows: np.ndarray, out: torch.Tensor) -> None:
        ex, r = np.divmod(rows, rpe)
        shard, local = np.divmod(ex, eps)
        map_row = local * md.n_layers * md.tokens_per_example + layer_row + r
        order = np.argsort(shard, kind="stable")
        cuts = np.searchsorted(shard[order], np.arange(md.n_shards + 1))
        for s in range(md.n_shards):
            a, b = int(cuts[s]), int(cuts[s + 1])
            if a < b:
                idx = torch.from_numpy(order[a:b])
                out[idx] = torch.index_select(maps[s], 0, torch.from_numpy(map_row[order[a:b]]))

    fds = [reader.fd(i) for i in range(md.n_shards)]

    def read_ahead(gi: int) -> None:
        for s0, c in groups[gi].blocks.tolist():
            for e in range(s0, s0 + c):
                shard, local = divmod(e, eps)
                os.posix_fadvise(fds[shard], local * reader.example_bytes, reader.example_bytes,
                                 os.POSIX_FADV_WILLNEED)

    out = torch.from_numpy(aligned.empty((B, reader.row_bytes), np.uint8))
    first = group_rows(0)
    for k, batch in zip(range(3), loader, strict=False):  # the same batches as the loader (its first group)
        gather(first[k * B : (k + 1) * B], out)
        if not torch.equal(out.view(torch.float32), batch["act"]):
            raise SystemExit(f"batch {k}: the gathered rows differ from the loader's")
    print("the first 3 gathered batches equal the loader's")
    ranges = valid_ranges(reader)
    rates = {}
    for n_threads in (1, 2):
        bufs = raw_buffers(n_threads)
        drop_cache(args.data)
        t0 = time.perf_counter()
        rates[f"raw read from disk, {n_threads} thread(s)"] = (
            _read_valid(ranges, bufs) // reader.row_bytes / (time.perf_counter() - t0))
    drop_cache(args.data)
    outs = [torch.from_numpy(aligned.empty((B, reader.row_bytes), np.uint8)) for _ in range(2)]
    t0 = time.perf_counter()
    total = 0
    read_ahead(0)
    for gi in range(len(groups)):
        ahead = threading.Thread(target=read_ahead, args=(gi + 1,)) if gi + 1 < len(groups) else None
        if ahead is not None:
            ahead.start()
        rows = group_rows(gi)
        cut = [rows[i : i + B] for i in range(0, len(rows), B)]

        def work(t: int, cut: list = cut) -> None:
            for x in cut[t::2]:
                gather(x, outs[t][: len(x)])

        workers = [threading.Thread(target=work, args=(t,)) for t in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        total += len(rows)
        if ahead is not None:
            ahead.join()
    rates["gather from the maps, read-ahead of the next group, 2 threads"] = total / (time.perf_counter() - t0)
    best = max(v for k, v in rates.items() if k.startswith("raw"))
    for k, v in rates.items():
        print(f"cold {k:62} {v / 1e6:.3f}M rows/s = {v / best:.2f}x the best raw read")


if __name__ == "__main__":
    main()
