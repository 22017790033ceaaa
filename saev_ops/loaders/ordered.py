"""``OrderedDataLoader``: the dataset in exact order, for inference, with large sequential reads.

Rows come example by example; inside an example, layer by layer (file order), then token by token. Chunks of whole
batches (about ``chunk_mb``) are read by a small thread pool (``preadv`` releases the GIL) ahead of the consumer, each
read scattering the selected tokens straight into a reused chunk buffer
(:func:`~saev_ops.loaders.blocks.scatter_examples`); every batch is a view into one chunk, so the read is the only
copy.
``start``/``stop`` split a dataset between jobs by example.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from saev_ops import errors, host
from saev_ops.loaders import sizing
from saev_ops.loaders.blocks import BufferPool, require_pinnable, scatter_examples
from saev_ops.loaders.selection import Batch, ShardSelection, plan, to_batch
from saev_ops.shards.reader import ShardReader


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrderedConfig:
    selection: ShardSelection = ShardSelection()
    """Layers and tokens to read."""
    batch_size: int = 16384
    """Rows (patches) per batch; the last batch may be shorter."""
    start: int = 0
    """First example (inclusive)."""
    stop: int | None = None
    """Last example (exclusive); None for the end of the dataset."""
    chunk_mb: float = 64.0
    """Bytes read per request, in MiB."""
    n_threads: int = dataclasses.field(default_factory=lambda: sizing.default_threads(host.usable_cpus()))
    """Reader threads (default: the CPUs this process may use, at most 8)."""
    prefetch: int = 4
    """Chunks read ahead of the consumer (memory: about prefetch x chunk_mb)."""
    pin_memory: bool = False
    """Cut batches into page-locked buffers, allocated once and reused, for copies to a GPU that leave the host free
    (needs CUDA; see :class:`saev_ops.loaders.feed.DeviceFeed`)."""

    def __post_init__(self) -> None:
        problems = []
        if self.batch_size <= 0:
            problems.append(f"batch_size must be > 0, got {self.batch_size}")
        if self.start < 0 or (self.stop is not None and self.stop < self.start):
            problems.append(f"need 0 <= start <= stop, got start={self.start} stop={self.stop}")
        if self.chunk_mb <= 0 or self.n_threads <= 0 or self.prefetch <= 0:
            problems.append("chunk_mb, n_threads and prefetch must be > 0")
        if problems:
            raise errors.ConfigError("OrderedConfig: " + "; ".join(problems))


class OrderedDataLoader:
    """Iterate ``root`` (a dataset directory or an open :class:`ShardReader`) in order. Each ``iter()`` is one pass."""

    def __init__(self, root: str | os.PathLike[str] | ShardReader, cfg: OrderedConfig = OrderedConfig()) -> None:
        self.reader = root if isinstance(root, ShardReader) else ShardReader(root)
        self.cfg = cfg
        self.plan = plan(self.reader, cfg.selection)
        self.stop = self.reader.n_examples if cfg.stop is None else cfg.stop
        if self.stop > self.reader.n_examples:
            raise errors.ConfigError(f"stop={cfg.stop} is past the dataset's {self.reader.n_examples} examples")
        self.start = cfg.start
        if cfg.pin_memory:
            require_pinnable("OrderedConfig")
        # chunk buffers live as long as the loader: a second pass reuses them instead of faulting fresh pages in
        self._buffers = BufferPool(max_buffers=2 * (cfg.prefetch + cfg.n_threads) + 2, pinned=cfg.pin_memory)
        self._staging = BufferPool(max_buffers=cfg.n_threads + 1)  # reduced-precision rows before widening

    @property
    def n_rows(self) -> int:
        return (self.stop - self.start) * self.plan.rows_per_example

    def __len__(self) -> int:
        return -(-self.n_rows // self.cfg.batch_size)

    def _load(self, pool: BufferPool, staging: BufferPool, first_row: int, n_rows: int) -> np.ndarray:
        """Rows ``[first_row, first_row + n_rows)`` (counted from ``start``): the whole examples that hold them are read
        (at most one partial example at each end is read twice), and the rows are a view of that buffer."""
        rpe = self.plan.rows_per_example
        e0, e1 = first_row // rpe, -(-(first_row + n_rows) // rpe)
        out = pool.get(((e1 - e0) * rpe, self.reader.d_model))
        scatter_examples(self.reader, self.plan, np.asarray([self.start + e0]), np.asarray([e1 - e0]),
                         np.arange((e1 - e0) * rpe), out, staging)
        skip = first_row - e0 * rpe
        return out[skip : skip + n_rows]

    def __iter__(self) -> Iterator[Batch]:
        cfg = self.cfg
        B = cfg.batch_size
        rpe = self.plan.rows_per_example
        # chunks are whole batches, so every batch is a view of one chunk (no copy, no fresh allocation per batch)
        row_bytes = self.reader.d_model * 4
        per_chunk = B * max(1, int(cfg.chunk_mb * 2**20) // (B * row_bytes))
        chunks = [(r, min(per_chunk, self.n_rows - r)) for r in range(0, self.n_rows, per_chunk)]
        n_tok = len(self.plan.token_idx)
        token_idx = self.plan.token_idx
        layer_numbers = np.asarray(self.plan.layer_numbers, dtype=np.int64)

        def emit(act: np.ndarray, row: int) -> Batch:
            ex, within = np.divmod(np.arange(row, row + len(act), dtype=np.int64), rpe)
            li, ti = np.divmod(within, n_tok)
            return to_batch(act, ex + self.start, token_idx[ti], layer_numbers[li])

        buffers, staging = self._buffers, self._staging
        with cf.ThreadPoolExecutor(cfg.n_threads, thread_name_prefix="saev-ordered") as pool:
            futures: collections.deque[tuple[int, cf.Future[np.ndarray]]] = collections.deque()
            it = iter(chunks)
            for r, n in it:
                futures.append((r, pool.submit(self._load, buffers, staging, r, n)))
                if len(futures) >= cfg.prefetch:
                    break
            try:
                while futures:
                    r, fut = futures.popleft()
                    rows = fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        futures.append((nxt[0], pool.submit(self._load, buffers, staging, *nxt)))
                    for pos in range(0, len(rows), B):
                        yield emit(rows[pos : pos + B], r + pos)
                    del rows, fut  # the chunk buffer goes back to the pool once the consumer drops its batches
            finally:
                for _, f in futures:
                    f.cancel()
