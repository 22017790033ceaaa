"""``ShuffledDataLoader``: every selected (example, layer, token) row exactly once per epoch, well mixed, resumable.

How it reads at disk speed and still mixes across the whole dataset:

1. The dataset is cut into *blocks* of consecutive examples, each at least ``read_mb`` of data, so each read covers a
   large contiguous stretch of a file.
2. Each epoch permutes the blocks (seeded by ``seed`` and the epoch) and groups consecutive blocks of that permutation
   into *groups* of a third of ``buffer_mb`` (one group is cut into batches, one waits, one is being read).
3. A group is *warmed*: reader threads put its blocks in the page cache with large sequential reads, skipping what is
   already cached (:class:`saev_ops.loaders.rowmap.RowMap`). Its rows are permuted (seeded by seed, epoch and group)
   and cut into batches: each batch is one gather of its rows, in that order, from a memory map of the shard files
   straight into the batch (``np.take``, the GIL released; reduced precision is widened after it), spread over the
   same number of cutter threads, handed to the consumer in order.

So a batch holds rows from hundreds of examples spread over every shard, and the epoch's row order is a pure function of
(seed, epoch, dataset, selection, buffer and block sizes). The loader's state is (epoch, batches consumed): resuming
recomputes the plan and skips to the row where it stopped, so the batches after a resume equal the batches without one.
The groups live in the page cache, not in the loader's memory: the loader itself holds only the batches in flight.
When the selected rows are larger than the page cache the process can count on (a Slurm job's memory limit
included), each group's pages are dropped once its batches are cut (``release_groups``), so the kernel evicts used
groups rather than warmed ones.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np

from saev_ops import errors, host
from saev_ops.loaders import blocks, iovec, sizing
from saev_ops.loaders.rowmap import CHUNK_BYTES, RowMap
from saev_ops.loaders.selection import Batch, ShardSelection, plan, to_batch
from saev_ops.shards import dtypes
from saev_ops.shards.reader import ShardReader

log = logging.getLogger(__name__)
_EPOCH_END = object()  # in the group and batch queues: the epoch's last group / batch has gone before it

STATE_VERSION = 1
DEFAULT_BUFFER_MB = 6144.0
"""Three groups of 2 GiB: a 16,384-patch batch then holds ~2,400 distinct examples of a ViT-B/16 dataset (saev's default
reservoir: ~1,900, in ~5.7 GB of its own memory); the groups are page cache, the loader's own memory is the batches in
flight (~0.5 GB); docs/performance.md has the trade-off measured."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShuffledConfig:
    selection: ShardSelection = ShardSelection()
    """Layers and tokens to read."""
    batch_size: int = 16384
    """Rows (patches) per batch."""
    seed: int = 0
    """Seeds every permutation; with the epoch it fixes the order."""
    buffer_mb: float = DEFAULT_BUFFER_MB
    """Page cache for example groups, in MiB (three groups in flight: a group is a third of it; only as much as the
    dataset needs). Bigger mixes better: a batch is drawn from one group. The groups are the files' cached pages,
    not the loader's own memory; a host whose memory cannot hold them re-reads evicted pages (slower, same batches)."""
    read_mb: float = sizing.READ_MB
    """Smallest contiguous read, in MiB (sets examples per block)."""
    n_threads: int = dataclasses.field(default_factory=lambda: sizing.default_threads(host.usable_cpus()))
    """Reader threads, and as many threads cutting batches (default: the CPUs this process may use, at most 8 (in a
    Slurm job, its allocation, not the node's); reads and gathers release the GIL, so threads beyond the cores only
    contend)."""
    prefetch_batches: int = sizing.PREFETCH_BATCHES
    """Batches ready ahead of the consumer, besides the ``n_threads`` being cut (memory: batch bytes each)."""
    drop_last: bool = False
    """Drop the epoch's last, short batch."""
    release_groups: bool | None = None
    """Once a group's batches are all cut, drop its pages from the page cache (and from this process's map), so that
    a dataset larger than memory evicts the groups already used, not the ones warmed and waiting to be cut (whose
    pages would otherwise come back one fault at a time while cutting). None: when the selected rows' bytes exceed
    the page cache this process can count on at the start, the smallest of the machine's available memory and the
    room under its control groups' memory limits (a Slurm job's ``--mem``; :mod:`saev_ops.host`); a
    dataset that fits keeps its pages for the next epoch. Batches are the same either way."""
    pin_memory: bool = False
    """Cut batches into page-locked buffers, allocated once and reused, for copies to a GPU that leave the host free
    (needs CUDA; see :class:`saev_ops.loaders.feed.DeviceFeed`)."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "buffer_mb", "read_mb", "n_threads", "prefetch_batches"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if problems:
            raise errors.ConfigError("ShuffledConfig: " + "; ".join(problems))


@dataclasses.dataclass
class LoaderTimings:
    """Where a shuffled loader's time goes, summed over its iterations (seconds of wall time per thread): what the
    loader benchmark prints, and what to read when training waits on data."""

    load_s: float = 0.0
    """The group loader warming groups: reads putting their pages in the page cache (its reader threads work
    during it)."""
    load_wait_s: float = 0.0
    """The group loader waiting for the gatherer to take a warmed group (reading is ahead)."""
    gather_s: float = 0.0
    """The gatherer handing a group's batches to the cutter threads and on to the consumer (waiting while the batch
    queue is full: the loader is ahead of the consumer)."""
    gather_wait_s: float = 0.0
    """The gatherer waiting for a group (reading is behind)."""
    cut_s: float = 0.0
    """The cutter threads gathering and labelling batches, summed over threads."""
    read_bytes: int = 0
    """Bytes the warming reads asked for (chunks not wholly in the page cache; the kernel's read-ahead of those
    reads may bring more, uncounted)."""
    consumer_wait_s: float = 0.0
    """The consumer waiting for a batch (the loader is behind the consumer)."""
    groups: int = 0


class _Lifetimes:
    """When every batch holding rows of a group has been cut, hand that group's byte ranges to ``release``.

    A group is *issued* once all its rows are in submitted batches (its last rows may wait in the batch being
    assembled, which then also holds rows of the next group, or be dropped at an epoch's end with ``drop_last``);
    from then on, the last of its batches to finish releases it. Callbacks run in cutter threads, hence the lock."""

    def __init__(self, release: Any) -> None:
        self._release = release
        self._lock = threading.Lock()
        self._groups: dict[int, list[Any]] = {}  # serial -> [batches not yet cut, issued, ranges]

    def start(self, serial: int, ranges: np.ndarray) -> None:
        with self._lock:
            self._groups[serial] = [0, False, ranges]

    def batch(self, serials: list[int], fut: cf.Future[Any]) -> None:
        """``fut`` cuts rows of the groups ``serials``."""
        with self._lock:
            for s in serials:
                self._groups[s][0] += 1
        fut.add_done_callback(lambda _f: self._finished(serials, cut=True))

    def issued(self, serials: list[int]) -> None:
        """All rows of the groups ``serials`` are in submitted batches (or dropped)."""
        self._finished(serials, cut=False)

    def _finished(self, serials: list[int], cut: bool) -> None:
        ready = []
        with self._lock:
            for s in serials:
                st = self._groups[s]
                if cut:
                    st[0] -= 1
                else:
                    st[1] = True
                if st[0] == 0 and st[1]:
                    ready.append(self._groups.pop(s)[2])
        for ranges in ready:
            self._release(ranges)


@dataclasses.dataclass(frozen=True)
class _Group:
    blocks: np.ndarray  # (n_blocks, 2): example start, count
    row_start: int  # first row of this group in the epoch's row stream
    n_rows: int


class ShuffledDataLoader:
    """Shuffled batches from ``root`` (a dataset directory or an open :class:`ShardReader`).

    ``iter(loader)`` runs the rest of the current epoch, then advances the epoch. ``state_dict()`` after any batch and
    ``load_state_dict()`` on a new loader continue exactly from there.
    """

    def __init__(self, root: str | os.PathLike[str] | ShardReader, cfg: ShuffledConfig = ShuffledConfig()) -> None:
        self.reader = root if isinstance(root, ShardReader) else ShardReader(root)
        self.cfg = cfg
        if cfg.pin_memory:
            blocks.require_pinnable("ShuffledConfig")
        self.plan = plan(self.reader, cfg.selection)
        md = self.reader.md
        read_bytes = len(self.plan.layer_idx) * self.reader.layer_bytes
        self.sizing = sizing.sizing(
            n_examples=md.n_examples, rows_per_example=self.plan.rows_per_example, d_model=md.d_model,
            row_bytes=self.reader.row_bytes, read_bytes=read_bytes, buffer_mb=cfg.buffer_mb, read_mb=cfg.read_mb,
            batch_size=cfg.batch_size, n_threads=cfg.n_threads, prefetch_batches=cfg.prefetch_batches)
        self.block_examples = self.sizing.block_examples
        self.group_examples = self.sizing.group_examples
        self.blocks_per_group = self.sizing.blocks_per_group
        self.n_rows = md.n_examples * self.plan.rows_per_example
        data_bytes = self.sizing.data_bytes
        room = host.page_cache_room()
        warning = self.sizing.fit_warning(cfg.buffer_mb, room)
        if warning:
            log.warning("%s", warning)
        if cfg.release_groups is None:
            self.release_groups = data_bytes > room.bytes
            if self.release_groups:
                log.info("the selected rows of %s (%.1f GB) exceed the page cache this process can count on (%.1f GB: "
                         "%s): each group's pages are dropped once its batches are cut", self.reader.root,
                         data_bytes / 1e9, room.bytes / 1e9, room.source)
        else:
            self.release_groups = cfg.release_groups
        self.epoch = 0
        self.batches_in_epoch = 0
        self.timings = LoaderTimings()
        self._timings_lock = threading.Lock()

    # -- the plan of an epoch -----------------------------------------------------------------------------------------
    def _groups(self, epoch: int) -> list[_Group]:
        n = self.reader.n_examples
        starts = np.arange(0, n, self.block_examples, dtype=np.int64)
        counts = np.minimum(self.block_examples, n - starts)
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(starts))
        groups = []
        row = 0
        # The first group is an eighth of the others: nothing overlaps its read, so a small one starts the epoch sooner.
        cuts = [0, max(1, self.blocks_per_group // 8)]
        while cuts[-1] < len(order):
            cuts.append(cuts[-1] + self.blocks_per_group)
        for a, b in itertools.pairwise(cuts):
            sel = order[a:b]
            blk = np.stack([starts[sel], counts[sel]], axis=1)
            n_rows = int(blk[:, 1].sum()) * self.plan.rows_per_example
            groups.append(_Group(blk, row, n_rows))
            row += n_rows
        return groups

    def _group_perm(self, epoch: int, g: int, n_rows: int) -> np.ndarray:
        return np.random.default_rng([self.cfg.seed, epoch, g, 1]).permutation(n_rows)

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.n_rows, self.cfg.batch_size)
        return full + (1 if rest and not self.cfg.drop_last else 0)

    # -- state ---------------------------------------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        return {
            "dataset": self.reader.md.content_hash,
            "layers": list(self.plan.layer_numbers),
            "tokens": self.cfg.selection.tokens,
            "batch_size": self.cfg.batch_size,
            "seed": self.cfg.seed,
            "block_examples": self.block_examples,
            "blocks_per_group": self.blocks_per_group,
        }

    def state_dict(self) -> dict[str, Any]:
        """Where the consumer is: (epoch, batches consumed in it), plus what must match to resume."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                **self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self._fingerprint()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if state.get("version") != STATE_VERSION or diff:
            raise errors.ConfigError(
                "cannot resume: the loader state was saved with other settings "
                + ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            )
        self.epoch = int(state["epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])

    # -- iteration -----------------------------------------------------------------------------------------------------
    def __iter__(self) -> Generator[Batch, None, None]:
        """One epoch (the rest of the current one, after a resume)."""
        return self._run(endless=False)

    def stream(self) -> Generator[Batch, None, None]:
        """Epoch after epoch without a pause: the reader and gatherer threads, their buffers and the loading of the
        next epoch's first group carry on across epoch boundaries (what a training run of many epochs needs; a new
        ``iter()`` per epoch would restart them and wait for the first group each time). Yields the same batches, in
        the same order, as successive ``iter()`` calls; ``state_dict()`` follows the consumer as before."""
        return self._run(endless=True)

    def _run(self, endless: bool) -> Generator[Batch, None, None]:
        first_epoch = self.epoch
        start_row = self.batches_in_epoch * self.cfg.batch_size
        epochs = itertools.count(first_epoch) if endless else iter((first_epoch,))
        rowmap = RowMap(self.reader)
        stop = threading.Event()
        group_q: queue.Queue[Any] = queue.Queue(maxsize=1)
        # futures of batches, in order: those being cut and those ready
        batch_q: queue.Queue[Any] = queue.Queue(maxsize=self.cfg.prefetch_batches + self.cfg.n_threads)
        loader = threading.Thread(target=self._load_groups, args=(epochs, start_row, group_q, stop, rowmap),
                                  name="saev-shuffled-load", daemon=True)
        gatherer = threading.Thread(target=self._gather, args=(group_q, batch_q, stop, rowmap),
                                    name="saev-shuffled-gather", daemon=True)
        del rowmap  # the threads hold it: the files stay mapped until both are done
        loader.start()
        gatherer.start()
        try:
            timings = self.timings
            while True:
                t0 = time.perf_counter()
                item = blocks.get_or_raise(batch_q, "shuffled loader")
                if isinstance(item, cf.Future):
                    item = blocks.check(item.result(), "shuffled loader (cutter thread)")
                timings.consumer_wait_s += time.perf_counter() - t0
                if item is None:
                    break
                if item is _EPOCH_END:
                    self.epoch += 1
                    self.batches_in_epoch = 0
                    continue
                self.batches_in_epoch += 1
                yield item
        finally:
            stop.set()
            for q in (batch_q, group_q):  # unblock producers waiting on a full queue
                try:
                    while True:
                        q.get_nowait()
                except queue.Empty:
                    pass
            loader.join(timeout=5)
            with contextlib.suppress(queue.Full):  # wake the gatherer if it waits for a group that will not come
                group_q.put_nowait(None)
            gatherer.join(timeout=5)
            if loader.is_alive() or gatherer.is_alive():
                log.warning("shuffled loader threads still running 5 s after the consumer stopped")

    def _load_groups(self, epochs: Iterator[int], start_row: int, group_q: queue.Queue[Any],
                     stop: threading.Event, rowmap: RowMap) -> None:
        """Warm the groups of each epoch of ``epochs`` in turn (the first from ``start_row`` on) with one thread pool
        for all of them, and hand each on with its permutation; after an epoch's groups, an end-of-epoch marker."""
        scratch = blocks.BufferPool(max_buffers=self.cfg.n_threads + 1)  # one chunk per reader thread
        try:
            with cf.ThreadPoolExecutor(self.cfg.n_threads, thread_name_prefix="saev-shuffled-read") as pool:
                for epoch in epochs:
                    groups = self._groups(epoch)
                    for gi, g in enumerate(groups):
                        if g.row_start + g.n_rows <= start_row:
                            continue  # consumed before the resume
                        t0 = time.perf_counter()
                        ex_ids = np.concatenate([np.arange(s, s + c, dtype=np.int64) for s, c in g.blocks])
                        ranges = self._group_ranges(ex_ids)
                        # what a release lets go: the rows' own bytes, not the gaps read with them
                        own = self._group_ranges(ex_ids, gap=0) if self.release_groups else None
                        perm = self._load_group(pool, epoch, gi, g, ranges, rowmap, scratch, stop)
                        t1 = time.perf_counter()
                        blocks.put_or_stop(group_q, (g, perm, ex_ids, ranges, own, max(0, start_row - g.row_start)),
                                           stop)
                        self.timings.load_s += t1 - t0
                        self.timings.load_wait_s += time.perf_counter() - t1
                        self.timings.groups += 1
                    start_row = 0
                    blocks.put_or_stop(group_q, _EPOCH_END, stop)
            blocks.put_or_stop(group_q, None, stop)
        except blocks.Stop:
            return
        except BaseException:  # forwarded to the consumer with its traceback
            try:
                blocks.put_or_stop(group_q, blocks.failure(), stop)
            except blocks.Stop:
                pass

    def _group_ranges(self, ex_ids: np.ndarray, gap: int = iovec.GAP_BYTES) -> np.ndarray:
        """The byte ranges (shard, start, length) holding the selected rows of examples ``ex_ids`` (a group's, in
        block order), in file order: each run of consecutive selected tokens of each selected layer of each example,
        joined with the next when the bytes between are at most ``gap`` (``iovec.GAP_BYTES``: reading them costs
        less than another call)."""
        reader = self.reader
        examples = np.sort(ex_ids)
        tok = self.plan.token_idx
        run_start = np.flatnonzero(np.diff(tok, prepend=-2) != 1)  # where a run of consecutive tokens begins
        run_len = np.diff(np.append(run_start, len(tok))) * reader.row_bytes
        layers = np.asarray(self.plan.layer_idx, dtype=np.int64)
        shard, start = reader.row_offsets(examples[:, None, None], layers[None, :, None], tok[run_start][None, None, :])
        shard, start = np.broadcast_to(shard, start.shape).ravel(), start.ravel()  # examples, layers, runs: file order
        end = start + np.tile(run_len, len(examples) * len(layers))
        new = np.ones(len(start), dtype=bool)  # a range begins where the shard changes or the gap is long
        new[1:] = (shard[1:] != shard[:-1]) | (start[1:] - end[:-1] > gap)
        first = np.flatnonzero(new)
        last = np.append(first[1:], len(start)) - 1
        return np.stack([shard[first], start[first], end[last] - start[first]], axis=1)

    def _load_group(self, pool: cf.ThreadPoolExecutor, epoch: int, gi: int, g: _Group, ranges: np.ndarray,
                    rowmap: RowMap, scratch: blocks.BufferPool, stop: threading.Event) -> np.ndarray:
        """Warm group ``gi`` of ``epoch`` (``ranges``, its bytes, into the page cache) and return its row permutation.
        When the consumer stops (a closed stream: training ended), reads not yet started are cancelled (raises Stop),
        so closing does not wait for a whole group of the next epoch."""
        rowmap.check_sizes()
        futs = [pool.submit(self._warm, rowmap, part, scratch)
                for part in np.array_split(ranges, min(len(ranges), 4 * self.cfg.n_threads))]
        perm = self._group_perm(epoch, gi, g.n_rows)
        pending = set(futs)
        while pending:
            done, pending = cf.wait(pending, timeout=0.05, return_when=cf.FIRST_EXCEPTION)
            for f in done:
                self.timings.read_bytes += f.result()  # a reader's error goes to the consumer
            if stop.is_set():
                for f in pending:
                    f.cancel()
                cf.wait(pending)
                raise blocks.Stop
        return perm

    @staticmethod
    def _warm(rowmap: RowMap, ranges: np.ndarray, scratch: blocks.BufferPool) -> int:
        return rowmap.warm(ranges, scratch.get((CHUNK_BYTES,), np.uint8))

    def _gather(self, group_q: queue.Queue[Any], batch_q: queue.Queue[Any], stop: threading.Event,
                rowmap: RowMap) -> None:
        """Split warmed groups (their rows in permuted order) into batches and hand each to a cutter thread, the
        futures to the consumer in order; a batch may span two groups. At an epoch's end the last partial batch goes
        out (unless ``drop_last``), then the end-of-epoch marker."""
        B = self.cfg.batch_size
        serials = itertools.count()
        batch_buffers = blocks.BufferPool(max_buffers=self.sizing.batch_buffers,
                                          pinned=self.cfg.pin_memory)
        staging = blocks.BufferPool(max_buffers=self.cfg.n_threads + 1)  # reduced-precision rows before widening
        chunks = blocks.BufferPool(max_buffers=self.cfg.n_threads + 1)  # chunks read again (see below)
        parts: list[tuple[np.ndarray, np.ndarray]] = []  # the batch being assembled: (example ids, group rows)
        n_cur = 0
        pool = cf.ThreadPoolExecutor(self.cfg.n_threads, thread_name_prefix="saev-shuffled-cut")
        life = _Lifetimes(functools.partial(rowmap.release, drop=True)) if self.release_groups else None
        in_parts: list[int] = []  # the groups (serial numbers) with rows in ``parts``

        def send(open_group: int | None = None) -> None:
            """Submit ``parts``; every group in it but ``open_group`` (rows of it still to come) is then issued."""
            nonlocal parts, n_cur, in_parts
            fut = pool.submit(self._cut, rowmap, parts, n_cur, batch_buffers, staging)
            if life is not None:
                life.batch(in_parts, fut)
                life.issued([s for s in in_parts if s != open_group])
            parts, n_cur, in_parts = [], 0, []
            blocks.put_or_stop(batch_q, fut, stop)

        try:
            while True:
                t0 = time.perf_counter()
                item = blocks.get_or_raise(group_q, "shuffled loader (reader thread)")
                t1 = time.perf_counter()
                self.timings.gather_wait_s += t1 - t0
                if item is None:
                    break
                if item is _EPOCH_END:
                    if n_cur and not self.cfg.drop_last:
                        send()
                    if life is not None:  # rows left out by drop_last: their groups are done
                        life.issued(in_parts)
                    parts, n_cur, in_parts = [], 0, []
                    blocks.put_or_stop(batch_q, _EPOCH_END, stop)
                    continue
                g, perm, ex_ids, ranges, own, pos = item
                serial = next(serials)
                if life is not None:
                    life.start(serial, own)
                # pages evicted since the group was warmed (memory pressure) come back in large reads, not by faults;
                # when all are cached this is one mincore call per chunk
                for f in [pool.submit(self._warm, rowmap, part, chunks)
                          for part in np.array_split(ranges, min(len(ranges), self.cfg.n_threads))]:
                    self.timings.read_bytes += f.result()
                while pos < g.n_rows:
                    take = min(B - n_cur, g.n_rows - pos)
                    parts.append((ex_ids, perm[pos : pos + take]))
                    in_parts.append(serial)
                    n_cur += take
                    pos += take
                    if n_cur == B:
                        send(open_group=serial if pos < g.n_rows else None)
                del item
                self.timings.gather_s += time.perf_counter() - t1
            blocks.put_or_stop(batch_q, None, stop)
        except blocks.Stop:
            return
        except BaseException:
            try:
                blocks.put_or_stop(batch_q, blocks.failure(), stop)
            except blocks.Stop:
                pass
        finally:
            pool.shutdown(wait=True, cancel_futures=stop.is_set())  # an ended epoch's batches are still wanted

    def _cut(self, rowmap: RowMap, parts: list[tuple[np.ndarray, np.ndarray]], n: int,
             batch_buffers: blocks.BufferPool, staging: blocks.BufferPool) -> Any:
        """One batch: the rows ``parts`` name (group example ids, positions in the group's rows), gathered from the
        map in that order and labelled with example, token and layer. Returns the batch, or the failure."""
        try:
            t0 = time.perf_counter()
            plan, rpe = self.plan, self.plan.rows_per_example
            ex = np.concatenate([ids[p // rpe] for ids, p in parts])
            li, ti = np.divmod(np.concatenate([p % rpe for _, p in parts]), len(plan.token_idx))
            layer_idx = np.asarray(plan.layer_idx, dtype=np.int64)[li]
            token = plan.token_idx[ti]
            rows = rowmap.global_rows(*self.reader.row_offsets(ex, layer_idx, token))
            act = batch_buffers.get((n, self.reader.d_model))
            if self.reader.disk_dtype == np.float32:
                rowmap.take(rows, act)
            else:
                raw = staging.get((n, self.reader.d_model), self.reader.disk_dtype)
                dtypes.decode(rowmap.take(rows, raw), self.reader.storage_dtype, act)
                del raw
            layer = np.asarray(plan.layer_numbers, dtype=np.int64)[li]
            batch = to_batch(act, ex, token, layer)
            with self._timings_lock:  # cutters run at once; a bare += could lose an update
                self.timings.cut_s += time.perf_counter() - t0
            return batch
        except BaseException:
            return blocks.failure()
