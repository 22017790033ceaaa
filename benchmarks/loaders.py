"""Loader throughput against plain sequential reads of the same files, in one run.

    python benchmarks/loaders.py                     # ~4 GiB, d_model 768, 257 tokens (CLS + 256 patches), 1 layer
    python benchmarks/loaders.py --gib 1 --d-model 512 --tokens 197 --layers 1
    git worktree add /tmp/base HEAD~3 && python benchmarks/loaders.py --compare /tmp/base   # old vs new loaders

Generates the dataset once (kept with --keep DIR), then measures, each in a fresh process (so peak memory is the
loader's own): a raw baseline (sequential ``readinto`` of every shard file with a 64 MiB buffer), OrderedDataLoader,
ShuffledDataLoader and IndexedDataset random access. Rates are in patches (rows of d_model) per second and GB/s, with
the page cache warm and, where possible, cold (pages dropped per file with posix_fadvise(DONTNEED)). The shuffled
loaders are timed over a first epoch (which includes allocating and first touching their group buffers, about
--buffer-mb) and a second one (steady state, what a long training run sees).
Targets: Ordered >= 0.9x raw, Shuffled >= 0.7x raw, Indexed >= 100,000 random patches/s, peak memory within the
configured buffer + 500 MB.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pathlib
import queue
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def generate(root: pathlib.Path, gib: float, d_model: int, tokens: int, n_layers: int, dtype: str) -> pathlib.Path:
    from saev_ops.shards import Metadata, ShardWriter, TokenLayout
    from saev_ops.shards.format import dataset_dir, encode_data_field

    example_bytes = n_layers * tokens * d_model * 4
    n_examples = max(1, int(gib * 2**30) // example_bytes)
    md = Metadata(family="clip", ckpt="bench", layers=tuple(range(11 - n_layers + 1, 12)),
                  content_tokens_per_example=tokens - 1, cls_token=True, d_model=d_model, n_examples=n_examples,
                  max_tokens_per_shard=2_000_000 * n_layers, data=encode_data_field({"kind": "bench"}),
                  dataset="/bench", dtype=dtype)
    path = dataset_dir(root, md.hash)
    if (path / "saev_ops.json").exists():
        return path
    t0 = time.perf_counter()
    w = ShardWriter(path, md, TokenLayout(n_cls=1, n_registers=0, n_patches=tokens - 1))
    rng = np.random.default_rng(0)
    step = max(1, (256 << 20) // example_bytes)
    for s in range(0, n_examples, step):
        n = min(step, n_examples - s)
        w.write(rng.standard_normal((n, n_layers, tokens, d_model), dtype=np.float32))
    w.finalize()
    print(f"generated {n_examples} examples ({n_examples * example_bytes / 2**30:.2f} GiB) in "
          f"{time.perf_counter() - t0:.0f} s at {path}", flush=True)
    return path


def drop_cache(path: pathlib.Path) -> None:
    for f in sorted(path.glob("acts*.bin")):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(path: pathlib.Path) -> None:
    buf = bytearray(64 << 20)
    for f in sorted(path.glob("acts*.bin")):
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def _peak_rss_mb() -> float:
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(kind: str, path: str, args: dict, q: mp.Queue) -> None:
    kind, _, code = kind.partition("@")
    if code:  # another version's saev_ops (a checkout), measured in the same run as this one
        sys.path.insert(0, code)
    from saev_ops.loaders import (IndexedDataset, OrderedConfig, OrderedDataLoader, ShardSelection, ShuffledConfig,
                                  ShuffledDataLoader)
    from saev_ops.shards import ShardReader

    try:  # reset the peak-RSS counter: a fresh process starts with its parent's high-water mark
        pathlib.Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    reader = ShardReader(path)
    row_bytes = reader.d_model * reader.disk_dtype.itemsize
    rows = 0
    t0 = time.perf_counter()
    if kind == "raw":
        buf = bytearray(64 << 20)
        nbytes = 0
        for f in sorted(pathlib.Path(path).glob("acts*.bin")):
            with open(f, "rb", buffering=0) as fh:
                while (n := fh.readinto(buf)):
                    nbytes += n
        rows = nbytes // row_bytes
    elif kind.startswith("ordered"):
        tokens = kind.split(":")[1]
        loader = OrderedDataLoader(reader, OrderedConfig(selection=ShardSelection(tokens=tokens),
                                                         batch_size=args["batch_size"]))
        for b in loader:
            rows += len(b["act"])
    elif kind.startswith("shuffled"):  # shuffled:TOKENS[:THREADS]
        _, tokens, *threads = kind.split(":")
        extra = {"n_threads": int(threads[0])} if threads else {}
        loader = ShuffledDataLoader(reader, ShuffledConfig(selection=ShardSelection(tokens=tokens),
                                                           batch_size=args["batch_size"], buffer_mb=args["buffer_mb"],
                                                           **extra))
        for b in loader:
            rows += len(b["act"])
        if args["second_epoch"]:  # steady state: the group buffers exist (the first epoch also paid for allocating them)
            first = {"kind": kind + (" (compare)" if code else ""), "seconds": time.perf_counter() - t0, "rows": rows}
            rows = 0
            t0 = time.perf_counter()
            for b in loader:
                rows += len(b["act"])
            kind += ", 2nd epoch"
    elif kind == "indexed":
        ds = IndexedDataset(reader, ShardSelection(tokens="all"))
        idx = np.random.default_rng(0).integers(0, len(ds), size=args["indexed_n"]).tolist()
        t0 = time.perf_counter()
        for i in idx:
            ds[i]
        rows = len(idx)
    elif kind == "indexed-batch":
        ds = IndexedDataset(reader, ShardSelection(tokens="all"))
        rng = np.random.default_rng(1)
        t0 = time.perf_counter()
        for _ in range(args["indexed_batches"]):
            b = ds.get_batch(rng.integers(0, len(ds), size=args["batch_size"]))
            rows += len(b["act"])
    dt = time.perf_counter() - t0
    peak_mb = _peak_rss_mb()
    # patches/s counts rows actually delivered; GB/s counts float32 bytes delivered
    out = []
    if kind.startswith("shuffled") and args["second_epoch"]:
        out.append({**first, "rows_per_s": first["rows"] / first["seconds"],
                    "gb_per_s": first["rows"] * reader.d_model * 4 / first["seconds"] / 1e9, "peak_mb": peak_mb})
    out.append({"kind": kind + (" (compare)" if code else ""), "seconds": dt, "rows": rows, "rows_per_s": rows / dt,
                "gb_per_s": rows * reader.d_model * 4 / dt / 1e9, "peak_mb": peak_mb})
    q.put(out)


def measure(kind: str, path: pathlib.Path, args: dict) -> list[dict]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(kind, str(path), args, q))
    p.start()
    while True:  # a measuring process that dies (an import error, say) must not leave this waiting forever
        try:
            res = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise SystemExit(f"measuring {kind!r} failed (exit code {p.exitcode}); see its traceback above")
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.0)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--tokens", type=int, default=257)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--batch-size", type=int, default=16384)
    ap.add_argument("--buffer-mb", type=float, default=1536)
    ap.add_argument("--indexed-n", type=int, default=200_000)
    ap.add_argument("--indexed-batches", type=int, default=50)
    ap.add_argument("--keep", type=pathlib.Path, help="generate into (or reuse) this directory")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--one-epoch", action="store_true",
                    help="shuffled loaders: measure only the first epoch (by default a second, steady-state one too)")
    ap.add_argument("--json", type=pathlib.Path, help="also write results as JSON here")
    ap.add_argument("--compare", type=pathlib.Path,
                    help="a directory holding another version's saev_ops package: its loaders are measured too")
    ap.add_argument("--only", help="comma-separated loader kinds to measure besides raw, e.g. shuffled:all or "
                    "shuffled:patches:8 (8 reader threads)")
    args = ap.parse_args()
    tmp = None
    root = args.keep
    if root is None:
        tmp = tempfile.mkdtemp(prefix="saev-bench-")
        root = pathlib.Path(tmp)
    try:
        path = generate(root, args.gib, args.d_model, args.tokens, args.layers, args.dtype)
        margs = {"second_epoch": not args.one_epoch, "batch_size": args.batch_size, "buffer_mb": args.buffer_mb, "indexed_n": args.indexed_n,
                 "indexed_batches": args.indexed_batches}
        results = []
        kinds = ["raw", "ordered:all", "ordered:patches", "shuffled:all", "shuffled:patches", "indexed",
                 "indexed-batch"]
        if args.only:
            kinds = ["raw", *args.only.split(",")]
        if args.compare:
            kinds += [f"{k}@{args.compare.resolve()}" for k in kinds if k != "raw"]
        warm_cache(path)
        for kind in kinds:
            results += [{"cache": "warm", **r} for r in measure(kind, path, margs)]
        if not args.no_cold:
            for kind in [k for k in kinds if k.partition("@")[0] in ("raw", "ordered:all", "shuffled:all")]:
                drop_cache(path)
                # one epoch only: a second one would read from the cache the first filled
                results += [{"cache": "cold", **r} for r in measure(kind, path, {**margs, "second_epoch": False})]
        print(f"\nncpu={os.cpu_count()} dataset={path} batch={args.batch_size} shuffled buffer={args.buffer_mb} MB")
        print(f"{'cache':5} {'loader':40} {'patches/s':>12} {'GB/s':>7} {'x raw':>7} {'peak MB':>8}")
        raw = {r["cache"]: r["rows_per_s"] for r in results if r["kind"] == "raw"}
        for r in results:
            ratio = r["rows_per_s"] / raw[r["cache"]] if not r["kind"].startswith("indexed") else float("nan")
            print(f"{r['cache']:5} {r['kind']:40} {r['rows_per_s']:12,.0f} {r['gb_per_s']:7.2f} {ratio:7.2f} "
                  f"{r['peak_mb']:8.0f}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
