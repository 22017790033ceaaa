"""Loader throughput against plain sequential reads of the same files, in one run.

    python benchmarks/loaders.py                     # ~4 GiB, d_model 768, 257 tokens (CLS + 256 patches), 1 layer
    python benchmarks/loaders.py --gib 1 --d-model 512 --tokens 197 --layers 1
    git worktree add /tmp/base HEAD~3 && python benchmarks/loaders.py --compare /tmp/base   # old vs new loaders

Generates the dataset once (kept with --keep DIR), then measures, each in a fresh process (so peak memory is the
loader's own):

- raw baselines: sequential reads of the *valid bytes* of the shard files (each shard's examples, not the sparse tail
  of saev's full-size last shard), 1 MiB at a time (the fastest size here), with one thread (``raw:1``) and with as many threads as the
  shuffled loader uses (``raw:N``, the files' ranges split between them);
- OrderedDataLoader, ShuffledDataLoader, IndexedDataset random access.

Warm figures (page cache full) are what a training run sees: --epochs epochs back to back on one loader object,
epoch boundaries included. The rate is that of epochs 2..N, timed as one window, against the raw reads repeated as
many times; the first epoch, which includes the loader's start and the first touch of its buffers, is shown apart
("epoch 1"): on this project's VM, memory the host has taken back costs ~3 s/GiB to touch again, which made single
runs vary 2-3x. Cold figures: the loader reads one epoch warm, then the files' pages are dropped
(posix_fadvise(DONTNEED), after dropping this process's maps of them) and the second epoch is timed, the data coming
from disk; "cold1" is the first epoch of a fresh loader with the files' pages dropped before it starts (what the first
epoch of a training run sees; start-up included). A loader that reads ahead has part of the next epoch in memory or
in the page cache when the pages are dropped under it (cold), and none at its start (cold1). Rates are patches (rows of
d_model) per second; "x raw1" and "x rawN" divide by the two raw reads of the same run. With --repeats R every
reader is measured R times, the order rotated each time, and the median run is shown with the range.

Mixing (shuffled loaders, epoch 2 onwards): distinct examples per batch and the mean |Pearson correlation| between
consecutive batches' example ids, next to uniformly random rows of the same shape (the ideal); computed after the clock
stops, from the example ids kept, so the consumer does no work of its own while the loader is timed.
Targets: Ordered >= 0.9x raw, Shuffled >= 0.7x raw, Indexed >= 100,000 random patches/s, peak memory within the
configured buffer + 500 MB.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing as mp
import os
import pathlib
import queue
import re
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

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


def _unmap_pages(path: pathlib.Path) -> None:
    """Drop this process's page-table entries for every map of the files under ``path`` (``madvise(DONTNEED)``;
    the maps stay valid and fault the pages back in): the kernel never evicts a page some process maps, so a loader
    that reads through maps would otherwise stay warm after :func:`drop_cache`."""
    import ctypes

    # not saev_ops.loaders.rowmap's libc: with --compare this runs beside a version of saev_ops that has no rowmap
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    root = str(path.resolve())
    for line in pathlib.Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(root + "/"):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if libc.madvise(lo, hi - lo, 4) != 0:  # 4: MADV_DONTNEED
                raise OSError(ctypes.get_errno(), f"madvise(DONTNEED) of {fields[5]} failed")


def drop_cache(path: pathlib.Path) -> float:
    """Evict the shard files' pages from the page cache (this process's maps of them first). Returns the fraction of
    their pages still cached after it: a sandbox or file system that ignores the advice (gVisor, tmpfs) keeps them
    all, and then a "cold" figure is a warm one; the benchmark prints a warning for it."""
    _unmap_pages(path)
    for f in sorted(path.glob("acts*.bin")):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return cached_fraction(path)


def cached_fraction(path: pathlib.Path) -> float:
    """The fraction of the shard files' pages in the page cache (``mincore`` over a fresh map of each; Linux reports
    a file's cached pages to a process that may write it, so the files must be this user's)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    cached = total = 0
    for f in sorted(path.glob("acts*.bin")):
        size = f.stat().st_size
        if not size:
            continue
        with open(f, "rb") as fh, mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ) as m:
            vec = np.zeros(-(-size // mmap.PAGESIZE), dtype=np.uint8)
            view = np.frombuffer(m, dtype=np.uint8)  # for its address; dropped before the map closes
            ok = libc.mincore(view.ctypes.data, size, vec.ctypes.data) == 0
            del view
            if not ok:
                raise OSError(ctypes.get_errno(), f"mincore of {f} failed")
        cached += int(np.count_nonzero(vec & 1))
        total += len(vec)
    return cached / total if total else 0.0


def warm_cache(path: pathlib.Path) -> None:
    buf = bytearray(64 << 20)
    for f in sorted(path.glob("acts*.bin")):
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (``VmHWM``, ``RssAnon``) in MB; None where there is no /proc."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_anon_mb() -> float:
    """The process's anonymous memory now (its own allocations; VmHWM also counts mapped file pages, which the
    page cache holds for any reader of the files)."""
    anon = _status_mb("RssAnon")
    return anon if anon is not None else float("nan")


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
    epochs = args["epochs"]
    cold = args.get("cold", False)
    mixing: dict[str, float] = {}
    first: tuple[float, int] | None = None  # (time, rows) when the first epoch ended
    dropped: dict[str, float] = {}

    def first_epoch_done() -> None:  # the steady window starts here; cold runs drop the files' pages now
        nonlocal first
        if first is None:
            if cold:
                dropped["cached_after_drop"] = drop_cache(pathlib.Path(path))
            first = (time.perf_counter(), rows)

    if kind.startswith("raw"):  # the raw reads' buffers, touched before the clock starts: the first touch is no read
        bufs = raw_buffers(int(kind.split(":")[1]), RAWMEM_BYTES if kind.startswith("rawmem") else 0)
    t0 = time.perf_counter()
    if kind.startswith("raw"):  # raw:THREADS or rawmem:THREADS, the valid bytes of every shard, `epochs` times
        ranges = valid_ranges(reader)
        for _ in range(epochs):
            rows += _read_valid(ranges, bufs) // row_bytes
            first_epoch_done()
    elif kind.startswith("ordered"):
        tokens = kind.split(":")[1]
        loader = OrderedDataLoader(reader, OrderedConfig(selection=ShardSelection(tokens=tokens),
                                                         batch_size=args["batch_size"]))
        for _ in range(epochs):
            for b in loader:
                rows += len(b["act"])
            first_epoch_done()
    elif kind.startswith("shuffled"):  # shuffled:TOKENS[:THREADS]
        _, tokens, *threads = kind.split(":")
        extra = {"n_threads": int(threads[0])} if threads else {}
        loader = ShuffledDataLoader(reader, ShuffledConfig(selection=ShardSelection(tokens=tokens),
                                                           batch_size=args["batch_size"], buffer_mb=args["buffer_mb"],
                                                           **extra))
        ids, anon = [], 0.0
        stream = loader.stream()  # as a training run reads it: epoch after epoch, never restarted
        for i in range(epochs * len(loader)):
            b = next(stream)
            rows += len(b["act"])
            if i % 8 == 0:
                anon = max(anon, _rss_anon_mb())
            if i == len(loader) - 1:
                first_epoch_done()
            if i >= len(loader) or epochs == 1:  # mixing from the second epoch on, computed after the clock
                ids.append(b["example_idx"].numpy())
        dt_stream = time.perf_counter() - t0  # up to the last batch, as a training run sees it
        stream.close()
        distinct = [len(np.unique(ex)) for ex in ids]
        corr = []
        for prev, ex in itertools.pairwise(ids):
            if len(prev) == len(ex):
                c = np.corrcoef(prev, ex)[0, 1]
                corr.append(abs(c) if np.isfinite(c) else 1.0)
        mixing = {"distinct": float(np.mean(distinct)), "corr": float(np.mean(corr)) if corr else float("nan"),
                  "timings": dataclasses.asdict(loader.timings), "anon_mb": anon}
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
    if kind.startswith("shuffled"):
        dt = dt_stream
    epoch1: dict[str, float] = {}
    if first is not None and epochs > 1:  # the steady window: epochs 2..N; the first (start-up included) apart
        epoch1 = {"first_epoch_rows_per_s": first[1] / (first[0] - t0)}
        rows -= first[1]
        dt = t0 + dt - first[0]
    peak_mb = _peak_rss_mb()
    # patches/s counts rows actually delivered; GB/s counts float32 bytes delivered
    q.put([{"kind": kind + (" (compare)" if code else ""), "seconds": dt, "rows": rows, "rows_per_s": rows / dt,
             "gb_per_s": rows * reader.d_model * 4 / dt / 1e9, "peak_mb": peak_mb, "epochs": epochs, **epoch1,
             **mixing, **dropped}])


RAW_CHUNK = 1 << 20
"""Bytes per raw read, into one page-aligned buffer that stays in the CPU cache: the fastest plain read here (about
12 GB/s from the page cache; into consecutive places of a large buffer, as loaders must, 5-8 GB/s). The buffer must
be page-aligned: a large ``np.empty`` starts 16 bytes past a page, and reads into it ran at 2-2.6 GB/s on this AMD
host (4K aliasing: benchmarks/read_alignment.py, saev_ops.shards.aligned); an earlier "64 MiB reads at 2.6 GB/s"
was that effect."""


RAWMEM_BYTES = 256 << 20
"""``rawmem``: the same reads, each to the next place of a buffer this large per thread (well past the CPU caches), as a
loader's reads land in batches in memory: what any loader that hands out batches could reach at best (a reference,
not the targets' baseline)."""


def valid_ranges(reader: Any) -> list[tuple[pathlib.Path, int]]:
    """(shard file, bytes of its examples) for every shard of ``reader`` (a ShardReader): what the raw reads read."""
    return [(reader.paths.shard(i), reader.md.shard_n_examples(i) * reader.example_bytes)
            for i in range(reader.md.n_shards)]


def rotated(seq: list[str], k: int) -> list[str]:
    """``seq`` started at its ``k``-th item (modulo its length), so repeats do not always measure in one order."""
    k = k % len(seq) if seq else 0
    return seq[k:] + seq[:k]


def raw_buffers(n_threads: int, spread: int = 0) -> list[np.ndarray]:
    """One page-aligned, touched buffer per raw-read thread: :data:`RAW_CHUNK`, or ``spread`` bytes (``rawmem``).
    Aligned: numpy's or a bytearray's 16-byte offset makes the read 5x slower here."""
    from saev_ops.shards import aligned

    bufs = [aligned.empty(max(RAW_CHUNK, spread // RAW_CHUNK * RAW_CHUNK), np.uint8) for _ in range(n_threads)]
    for buf in bufs:
        buf[:] = 0
    return bufs


def _read_valid(ranges: list[tuple[pathlib.Path, int]], bufs: list[np.ndarray]) -> int:
    """Read the first ``size`` bytes of each file once, :data:`RAW_CHUNK` at a time, split into one equal span of
    the concatenated ranges per buffer of ``bufs`` (:func:`raw_buffers`), one thread each (os.preadv releases the
    GIL); each read goes to the next place of its thread's buffer. Returns the bytes read."""
    import threading

    n_threads = len(bufs)
    total = sum(size for _, size in ranges)
    chunk = RAW_CHUNK
    spans = [(total * i // n_threads, total * (i + 1) // n_threads) for i in range(n_threads)]
    done = [0] * n_threads

    def work(t: int) -> None:
        buf = bufs[t]
        at = 0
        lo, hi = spans[t]
        base = 0
        for path, size in ranges:
            a, b = max(lo, base), min(hi, base + size)
            if a < b:
                fd = os.open(path, os.O_RDONLY)
                try:
                    off = a - base
                    while off < b - base:
                        n = os.preadv(fd, [buf[at : at + min(chunk, b - base - off)]], off)
                        at = (at + chunk) % len(buf)
                        if n <= 0:
                            break
                        off += n
                        done[t] += n
                finally:
                    os.close(fd)
            base += size

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(done)


def uniform_mixing(n_rows: int, rows_per_example: int, batch_size: int, n_batches: int = 20) -> dict[str, float]:
    """Distinct examples per batch and consecutive-batch id correlation of uniformly random rows (the ideal)."""
    rng = np.random.default_rng(0)
    batches = [rng.choice(n_rows, size=batch_size, replace=False) // rows_per_example for _ in range(n_batches)]
    corr = [abs(np.corrcoef(a, b)[0, 1]) for a, b in zip(batches, batches[1:], strict=False)]
    return {"distinct": float(np.mean([len(np.unique(b)) for b in batches])), "corr": float(np.mean(corr))}


KIND = re.compile(r"(ordered:\w+|shuffled:\w+(:\d+)?|indexed|indexed-batch)")
"""The loader kinds ``--only`` takes."""


def median_runs(results: list[dict], keys: list[tuple[str, str]]) -> list[dict]:
    """One record per (cache, kind), in ``keys`` order: the run with the median rate, with the lowest and highest
    rates of all its runs as ``lo``/``hi``."""
    out = []
    for cache, kind in dict.fromkeys(keys):
        label = kind.partition("@")[0] + (" (compare)" if "@" in kind else "")
        runs = sorted((r for r in results if r["cache"] == cache and r["kind"] == label), key=lambda r: r["rows_per_s"])
        if runs:
            out.append({**runs[(len(runs) - 1) // 2], "lo": runs[0]["rows_per_s"], "hi": runs[-1]["rows_per_s"],
                        "runs": len(runs)})
    return out


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
    ap.add_argument("--buffer-mb", type=float, default=6144, help="shuffled buffer (default: the loader's default)")
    ap.add_argument("--indexed-n", type=int, default=200_000)
    ap.add_argument("--indexed-batches", type=int, default=50)
    ap.add_argument("--keep", type=pathlib.Path, help="generate into (or reuse) this directory")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--generate-only", action="store_true", help="make the dataset (with --keep) and stop")
    ap.add_argument("--epochs", type=int, default=3,
                    help="warm: epochs back to back on one loader (and raw reads repeated as often), timed as one")
    ap.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 2),
                    help="threads of raw:N (default: the shuffled loader's n_threads, the core count up to 8)")
    ap.add_argument("--json", type=pathlib.Path, help="also write results as JSON here")
    ap.add_argument("--compare", type=pathlib.Path,
                    help="a directory holding another version's saev_ops package: its loaders are measured too")
    ap.add_argument("--rawmem", action="store_true",
                    help="also the raw read into consecutive places of a large buffer (rawmem:N, a reference)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="measure every reader this many times, rotating the order (the first reader measured after "
                         "the raw reads ran up to 2x slow here), and report the median run with the range")
    ap.add_argument("--only", help="comma-separated loader kinds to measure besides the raw reads, e.g. shuffled:all "
                    "or shuffled:patches:8 (8 reader threads)")
    args = ap.parse_args()
    for k in args.only.split(",") if args.only else []:
        if not KIND.fullmatch(k):
            ap.error(f"--only: {k!r} is not a loader kind; expected ordered:TOKENS, shuffled:TOKENS[:THREADS], "
                     "indexed or indexed-batch (TOKENS: all, patches, cls, ...)")
    tmp = None
    root = args.keep
    if root is None:
        tmp = tempfile.mkdtemp(prefix="saev-bench-")
        root = pathlib.Path(tmp)
    try:
        path = generate(root, args.gib, args.d_model, args.tokens, args.layers, args.dtype)
        if args.generate_only:
            return
        margs = {"epochs": args.epochs, "batch_size": args.batch_size, "buffer_mb": args.buffer_mb,
                 "indexed_n": args.indexed_n, "indexed_batches": args.indexed_batches}
        results = []
        raws = ["raw:1", f"raw:{args.threads}"] + ([f"rawmem:{args.threads}"] if args.rawmem else [])
        kinds = ["ordered:all", "ordered:patches", "shuffled:all", "shuffled:patches", "indexed", "indexed-batch"]
        if args.only:
            kinds = args.only.split(",")
        if args.compare:
            kinds += [f"{k}@{args.compare.resolve()}" for k in kinds]
        warm_cache(path)
        warm_kinds = raws + kinds
        first_pass_kinds = [k for k in kinds if k.partition("@")[0] in ("ordered:all", "shuffled:all")]
        cold_kinds = raws + first_pass_kinds
        for rep in range(args.repeats):  # each repeat rotates the order: no reader always runs first
            for kind in rotated(warm_kinds, rep):
                results += [{"cache": "warm", **r} for r in measure(kind, path, margs)]
            if not args.no_cold:
                for kind in rotated(cold_kinds, rep):
                    cold_args = {**margs, "epochs": 2, "cold": True}
                    results += [{"cache": "cold", **r} for r in measure(kind, path, cold_args)]
                for kind in rotated(first_pass_kinds, rep):  # a fresh loader's first epoch, the files not cached
                    left = drop_cache(path)
                    results += [{"cache": "cold1", **r, "cached_after_drop": left}
                                for r in measure(kind, path, {**margs, "epochs": 1})]
                warm_cache(path)
        stayed = max((r.get("cached_after_drop", 0.0) for r in results), default=0.0)
        results = median_runs(results, [("warm", k) for k in warm_kinds] + [("cold", k) for k in cold_kinds]
                              + [("cold1", k) for k in first_pass_kinds])
        from saev_ops.shards import ShardReader

        reader = ShardReader(path)
        print(f"\nncpu={os.cpu_count()} dataset={path} ({reader.md.n_examples} examples x "
              f"{reader.md.tokens_per_example} tokens x d{reader.md.d_model}) batch={args.batch_size} shuffled "
              f"buffer={args.buffer_mb} MB; warm = epochs 2-{args.epochs} back to back, cold = a second epoch after "
              f"dropping the pages")
        span = f"range of {args.repeats} runs" if args.repeats > 1 else ""
        print(f"{'cache':5} {'loader':34} {'patches/s':>12} {'epoch 1':>10} {'x raw1':>7} {'x rawN':>7} {'peak MB':>8} "
              f"{'examples/batch':>14} {'|corr|':>7}  {span}")
        raw = {(r["cache"], r["kind"]): r["rows_per_s"] for r in results if r["kind"].startswith("raw")}
        for r in results:
            base = "cold" if r["cache"] == "cold1" else r["cache"]  # a first pass from disk: the cold raw reads
            r1 = raw[(base, "raw:1")]
            rn = raw[(base, f"raw:{args.threads}")]
            nan = r["kind"].startswith("indexed")
            mix = (f"{r['distinct']:14,.0f} {r['corr']:7.3f}" if "distinct" in r else "")
            print(f"{r['cache']:5} {r['kind']:34} {r['rows_per_s']:12,.0f} {r.get('first_epoch_rows_per_s', 0):10,.0f} "
                  f"{float('nan') if nan else r['rows_per_s'] / r1:7.2f} {float('nan') if nan else r['rows_per_s'] / rn:7.2f} "
                  f"{r['peak_mb']:8.0f} {mix:22}  "
                  f"{'' if args.repeats == 1 else format(r['lo'], ',.0f') + ' - ' + format(r['hi'], ',.0f')}")
        for r in results:
            if "timings" in r:
                t = r["timings"]
                cut = (f", cutter threads {t['cut_s']:.1f} s, {t['read_bytes'] / 2**30:.1f} GiB read by the warming"
                       if "cut_s" in t else "")  # --compare with a version before batches were cut from the maps
                print(f"{r['cache']:5} {r['kind']:34} where the time goes (whole run, "
                      f"{t['groups']} groups): group loads {t['load_s']:.1f} s (then waiting for the gatherer "
                      f"{t['load_wait_s']:.1f} s), gatherer {t['gather_s']:.1f} s (waiting for groups "
                      f"{t['gather_wait_s']:.1f} s){cut}, consumer waiting for batches {t['consumer_wait_s']:.1f} s; "
                      f"anonymous memory at most {r.get('anon_mb', float('nan')):,.0f} MB")
        for tokens in ("all", "patches"):
            per = reader.md.tokens_per_example if tokens == "all" else reader.layout.n_patches
            u = uniform_mixing(reader.md.n_examples * per, per, args.batch_size)
            print(f"{'':5} {'uniform random rows, ' + tokens:34} {'':>12} {'':>7} {'':>7} {'':>8} "
                  f"{u['distinct']:14,.0f} {u['corr']:7.3f}")
        if stayed > 0.5:  # a loader running through the drop reads some back at once: only most pages staying counts
            print(f"WARNING: {stayed:.0%} of the files' pages stayed cached after dropping them (this kernel or file "
                  "system ignores posix_fadvise DONTNEED): the cold figures above are not reads from disk")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
