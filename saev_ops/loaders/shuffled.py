"""``ShuffledDataLoader``: every selected (example, layer, token) row exactly once per epoch, well mixed, resumable.

How it reads at disk speed and still mixes across the whole dataset:

1. The dataset is cut into *blocks* of consecutive examples, each at least ``read_mb`` of data, so each read covers a
   large contiguous stretch of a file.
2. Each epoch permutes the blocks (seeded by ``seed`` and the epoch) and groups consecutive blocks of that permutation
   into *groups* that fit a third of ``buffer_mb`` (one group is consumed, one waits, one is being read).
3. A group's rows are permuted (seeded by seed, epoch and group) and reader threads put every selected row straight at
   its permuted place in the group buffer: each thread takes several blocks at once, builds their iovec arrays with
   numpy and issues one ``preadv`` per few hundred rows through ctypes, with the GIL released
   (:mod:`saev_ops.loaders.iovec`; reduced-precision storage is read, widened, then scattered by numpy). A second
   thread cuts batches from the group while the next one loads; most batches are views of the group buffer.

So a batch holds rows from hundreds of examples spread over every shard, and the epoch's row order is a pure function of
(seed, epoch, dataset, selection, buffer and block sizes). The loader's state is (epoch, batches consumed): resuming
recomputes the plan and skips to the row where it stopped, so the batches after a resume equal the batches without one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np

from saev_ops import errors
from saev_ops.loaders import blocks
from saev_ops.loaders.selection import Batch, ShardSelection, plan, to_batch
from saev_ops.shards.reader import ShardReader

log = logging.getLogger(__name__)
_EPOCH_END = object()  # in the group and batch queues: the epoch's last group / batch has gone before it

STATE_VERSION = 1
DEFAULT_BUFFER_MB = 6144.0
"""Three groups of 2 GiB: a 16,384-patch batch then holds ~2,400 distinct examples of a ViT-B/16 dataset (saev's default
reservoir: ~1,900) at ~4.5 GB peak (saev: ~5.7 GB); docs/performance.md has the trade-off measured."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShuffledConfig:
    selection: ShardSelection = ShardSelection()
    """Layers and tokens to read."""
    batch_size: int = 16384
    """Rows (patches) per batch."""
    seed: int = 0
    """Seeds every permutation; with the epoch it fixes the order."""
    buffer_mb: float = DEFAULT_BUFFER_MB
    """Memory for loaded example groups, in MiB (three groups in flight; only as much as the dataset needs). Bigger
    mixes better: a batch is drawn from one group."""
    read_mb: float = 1.0
    """Smallest contiguous read, in MiB (sets examples per block)."""
    n_threads: int = dataclasses.field(default_factory=lambda: min(8, os.cpu_count() or 2))
    """Reader threads (default: the core count, at most 8; reads and scatters release the GIL, so threads beyond the
    cores only contend: on 2 cores, 2 GiB and a 1,536 MB buffer, 4 threads delivered 0.64-0.84M patches/s against
    1.1-1.2M for 2; at 4 GiB and 6,144 MB they were level)."""
    prefetch_batches: int = 4
    """Batches gathered ahead of the consumer (memory: prefetch x batch bytes)."""
    drop_last: bool = False
    """Drop the epoch's last, short batch."""
    pin_memory: bool = False
    """Pin batches (needs CUDA)."""

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
    """The group loader: reads scattering rows into group buffers (its reader threads work during it)."""
    load_wait_s: float = 0.0
    """The group loader waiting for the gatherer to take a loaded group (reading is ahead)."""
    gather_s: float = 0.0
    """The gatherer cutting and labelling batches, and handing them over (waiting while the batch queue is full: the
    loader is ahead of the consumer)."""
    gather_wait_s: float = 0.0
    """The gatherer waiting for a group (reading is behind)."""
    consumer_wait_s: float = 0.0
    """The consumer waiting for a batch (the loader is behind the consumer)."""
    groups: int = 0


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
        self.plan = plan(self.reader, cfg.selection)
        md = self.reader.md
        self._example_f32 = self.plan.rows_per_example * md.d_model * 4  # a group buffer holds selected rows only
        read_bytes = len(self.plan.layer_idx) * self.reader.layer_bytes
        self.block_examples = max(1, -(-int(cfg.read_mb * 2**20) // read_bytes))
        group_budget = int(cfg.buffer_mb * 2**20) // 3
        self.group_examples = max(self.block_examples, group_budget // self._example_f32)
        self.blocks_per_group = max(1, self.group_examples // self.block_examples)
        self.n_rows = md.n_examples * self.plan.rows_per_example
        self.epoch = 0
        self.batches_in_epoch = 0
        self.timings = LoaderTimings()

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
        stop = threading.Event()
        group_q: queue.Queue[Any] = queue.Queue(maxsize=1)
        batch_q: queue.Queue[Any] = queue.Queue(maxsize=self.cfg.prefetch_batches)
        loader = threading.Thread(target=self._load_groups, args=(epochs, start_row, group_q, stop),
                                  name="saev-shuffled-load", daemon=True)
        gatherer = threading.Thread(target=self._gather, args=(group_q, batch_q, stop),
                                    name="saev-shuffled-gather", daemon=True)
        loader.start()
        gatherer.start()
        try:
            timings = self.timings
            while True:
                t0 = time.perf_counter()
                item = blocks.get_or_raise(batch_q, "shuffled loader")
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
                     stop: threading.Event) -> None:
        """Load the groups of each epoch of ``epochs`` in turn (the first from ``start_row`` on), with one thread pool
        and one set of group buffers for all of them; after an epoch's groups, an end-of-epoch marker."""
        import concurrent.futures as cf

        group_buffers = blocks.BufferPool(max_buffers=3)
        staging = blocks.BufferPool(max_buffers=self.cfg.n_threads + 1)  # one block's rows per reader thread (fallback)
        try:
            with cf.ThreadPoolExecutor(self.cfg.n_threads, thread_name_prefix="saev-shuffled-read") as pool:
                for epoch in epochs:
                    groups = self._groups(epoch)
                    for gi, g in enumerate(groups):
                        if g.row_start + g.n_rows <= start_row:
                            continue  # consumed before the resume
                        t0 = time.perf_counter()
                        perm, buf = self._load_group(pool, epoch, gi, g, group_buffers, staging, stop)
                        t1 = time.perf_counter()
                        blocks.put_or_stop(group_q, (g, buf, perm, max(0, start_row - g.row_start)), stop)
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

    def _load_group(self, pool: Any, epoch: int, gi: int, g: _Group, group_buffers: blocks.BufferPool,
                    staging: blocks.BufferPool, stop: threading.Event) -> tuple[np.ndarray, np.ndarray]:
        """Read group ``gi`` of ``epoch`` into a group buffer, every row at its shuffled place: (perm, buffer). When
        the consumer stops (a closed stream: training ended), reads not yet started are cancelled (raises Stop), so
        closing does not wait for a whole group of the next epoch."""
        import concurrent.futures as cf

        rpe = self.plan.rows_per_example
        perm = self._group_perm(epoch, gi, g.n_rows)
        pos = np.concatenate([[0], np.cumsum(g.blocks[:, 1])]) * rpe
        buf = group_buffers.get((g.n_rows, self.reader.md.d_model))
        inv = np.empty_like(perm)
        inv[perm] = np.arange(g.n_rows, dtype=perm.dtype)
        # a few tasks per thread, each reading many blocks in one go (Python work is per task)
        futs = []
        for task in np.array_split(np.arange(len(g.blocks)), min(len(g.blocks), 4 * self.cfg.n_threads)):
            dest = np.concatenate([inv[pos[j] : pos[j + 1]] for j in task.tolist()])
            futs.append(pool.submit(blocks.scatter_examples, self.reader, self.plan, g.blocks[task, 0],
                                    g.blocks[task, 1], dest, buf, staging))
        pending = set(futs)
        while pending:
            done, pending = cf.wait(pending, timeout=0.05, return_when=cf.FIRST_EXCEPTION)
            for f in done:
                f.result()  # a reader's error goes to the consumer
            if stop.is_set():
                for f in pending:
                    f.cancel()
                cf.wait(pending)
                raise blocks.Stop
        return perm, buf

    def _gather(self, group_q: queue.Queue[Any], batch_q: queue.Queue[Any], stop: threading.Event) -> None:
        """Cut batches from loaded groups (rows already in shuffled order) and label each row with its example,
        token and layer; a batch that spans two groups is copied together, any other is a view. At an epoch's end
        the last partial batch goes out (unless ``drop_last``), then the end-of-epoch marker."""
        B = self.cfg.batch_size
        d_model = self.reader.d_model
        rpe_sel = self.plan.rows_per_example
        batch_buffers = blocks.BufferPool(max_buffers=self.cfg.prefetch_batches + 4)
        n_sel_tokens = len(self.plan.token_idx)
        layer_numbers = np.asarray(self.plan.layer_numbers, dtype=np.int64)
        token_idx = self.plan.token_idx
        # the batch being filled across two groups: activations and its example, token and layer columns
        pending: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        n_cur = 0
        try:
            while True:
                t0 = time.perf_counter()
                item = blocks.get_or_raise(group_q, "shuffled loader (reader thread)")
                t1 = time.perf_counter()
                self.timings.gather_wait_s += t1 - t0
                if item is None:
                    break
                if item is _EPOCH_END:
                    if pending is not None and n_cur and not self.cfg.drop_last:
                        act, ex, tok, layer = pending
                        batch = to_batch(act[:n_cur], ex[:n_cur], tok[:n_cur], layer[:n_cur], self.cfg.pin_memory)
                        blocks.put_or_stop(batch_q, batch, stop)
                    pending, n_cur = None, 0
                    blocks.put_or_stop(batch_q, _EPOCH_END, stop)
                    continue
                g, buf, perm, pos = item
                ex_ids = np.concatenate([np.arange(s, s + c, dtype=np.int64) for s, c in g.blocks])
                while pos < g.n_rows:
                    take = min(B - n_cur, g.n_rows - pos)
                    ex_local, r = np.divmod(perm[pos : pos + take], rpe_sel)
                    li, ti = np.divmod(r, n_sel_tokens)
                    if pending is None and take == B:  # a whole batch inside one group: a view, no copy
                        batch = to_batch(buf[pos : pos + take], np.take(ex_ids, ex_local), np.take(token_idx, ti),
                                         np.asarray(np.take(layer_numbers, li)), self.cfg.pin_memory)
                        blocks.put_or_stop(batch_q, batch, stop)
                        pos += take
                        continue
                    if pending is None:
                        pending = (batch_buffers.get((B, d_model)), np.empty(B, dtype=np.int64),
                                   np.empty(B, dtype=np.int64), np.empty(B, dtype=np.int64))
                        n_cur = 0
                    act, ex, tok, layer = pending
                    act[n_cur : n_cur + take] = buf[pos : pos + take]
                    np.take(layer_numbers, li, out=layer[n_cur : n_cur + take])
                    np.take(token_idx, ti, out=tok[n_cur : n_cur + take])
                    np.take(ex_ids, ex_local, out=ex[n_cur : n_cur + take])
                    n_cur += take
                    pos += take
                    if n_cur == B:
                        blocks.put_or_stop(batch_q, to_batch(act, ex, tok, layer, self.cfg.pin_memory), stop)
                        pending = None
                        n_cur = 0
                del buf, item
                self.timings.gather_s += time.perf_counter() - t1
            blocks.put_or_stop(batch_q, None, stop)
        except blocks.Stop:
            return
        except BaseException:
            try:
                blocks.put_or_stop(batch_q, blocks.failure(), stop)
            except blocks.Stop:
                pass
