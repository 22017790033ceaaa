"""A design not yet in the loaders: cut each shuffled batch straight from the shard files' memory maps.

    python benchmarks/mmap_gather.py --data /tmp/lb/data4/saev/shards/<hash>   # a dataset made by loaders.py --keep

The Shuffled loader reads each group into a 2 GiB buffer, every row to its shuffled place, then cuts batches from it.
With the files in the page cache the batch rows could instead be gathered from the files' maps directly: the same
rows in the same order (so the same batches), one copy with sequential writes, and no group buffers (4.5 GB less).
This measures that gather alone (``torch.index_select`` of random rows from the maps into a page-aligned batch
buffer, 1..N threads, every page mapped once first, as in steady state) against the plain one-thread read of the same
files in the same run. Cold data would need the group's blocks read ahead into the page cache (not measured here).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import threading
import time
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def main() -> None:
    import torch
    from loaders import _read_valid, warm_cache

    from saev_ops.shards import ShardReader, aligned

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=pathlib.Path, required=True)
    ap.add_argument("--batch-size", type=int, default=16384)
    ap.add_argument("--batches", type=int, default=24, help="batches per thread")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    reader = ShardReader(args.data)
    md = reader.md
    row_bytes = reader.row_bytes
    warm_cache(args.data)
    ranges = [(reader.paths.shard(i), md.shard_n_examples(i) * reader.example_bytes) for i in range(md.n_shards)]
    t0 = time.perf_counter()
    raw = _read_valid(ranges, 1) // row_bytes / (time.perf_counter() - t0)
    torch.set_num_threads(1)  # one gather per thread, as reader threads would run them
    with warnings.catch_warnings():  # the maps are read-only; torch warns that it could not write them
        warnings.simplefilter("ignore")
        maps = [torch.from_numpy(np.asarray(reader.rows(i)).reshape(-1).view(np.uint8)
                                 [: md.shard_n_examples(i) * reader.example_bytes].reshape(-1, row_bytes))
                for i in range(md.n_shards)]
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


if __name__ == "__main__":
    main()
