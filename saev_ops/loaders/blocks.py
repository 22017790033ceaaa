"""The one block reader under every loader: contiguous example ranges -> float32 rows of the selected layers/tokens."""

from __future__ import annotations

import queue
import sys
import threading
import traceback
from typing import Any

import numpy as np

from saev_ops.loaders.selection import Plan
from saev_ops.shards import dtypes
from saev_ops.shards.reader import ShardReader


def read_examples(reader: ShardReader, plan: Plan, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """Examples ``[start, start + n)`` as float32 (n, layers_selected, T, D), with every token.

    One ``preadv`` per contiguous piece: the whole range when all layers (or the only layer) are read, else one per
    example and layer. ``out`` (float32, that shape) is filled in place when given.
    """
    md = reader.md
    shape = (n, len(plan.layer_idx), md.tokens_per_example, md.d_model)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    same_dtype = reader.disk_dtype == np.float32
    if plan.layer_idx == tuple(range(md.n_layers)):
        raw = out if same_dtype else np.empty(shape, dtype=reader.disk_dtype)
        reader.read_raw(start, n, None, raw)
        if not same_dtype:
            dtypes.decode(raw, reader.storage_dtype, out)
        return out
    for j, li in enumerate(plan.layer_idx):
        raw = np.empty((n, md.tokens_per_example, md.d_model), dtype=reader.disk_dtype)
        reader.read_raw(start, n, li, raw)
        dtypes.decode(raw, reader.storage_dtype, out[:, j])
    return out


def select_rows(block: np.ndarray, plan: Plan, out: np.ndarray | None = None) -> np.ndarray:
    """(n, layers_selected, T, D) -> (n * rows_per_example, D): a view when every token is selected, else a gather
    (into ``out`` when given)."""
    n, nl, t, d = block.shape
    if plan.all_tokens:
        return block.reshape(n * nl * t, d)
    rows = (np.arange(n * nl, dtype=np.int64)[:, None] * t + plan.token_idx[None, :]).ravel()
    if out is None:
        out = np.empty((len(rows), d), dtype=block.dtype)
    # mode="clip" avoids numpy's buffered out= path (mode="raise" copies through a temporary)
    return np.take(block.reshape(n * nl * t, d), rows, axis=0, out=out, mode="clip")


class WorkerError(RuntimeError):
    """A loader thread failed; the message carries its traceback."""


class Stop(Exception):
    pass


def put_or_stop(q: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    """Put into a bounded queue, giving up when the consumer has stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
    raise Stop


def get_or_raise(q: queue.Queue[Any], who: str) -> Any:
    item = q.get()
    if isinstance(item, _Failure):
        raise WorkerError(f"{who} crashed:\n{item.tb}")
    return item


class _Failure:
    def __init__(self, tb: str) -> None:
        self.tb = tb


def failure() -> _Failure:
    return _Failure(traceback.format_exc())


class BufferPool:
    """Large numpy buffers, reused once nothing else references them.

    Batches handed to the consumer are views of (or tensors over) pooled buffers, and a numpy view keeps its base
    alive, so a buffer whose reference count is back to the pool's own references is free: the consumer has dropped
    every batch cut from it. Reusing buffers avoids the page faults (and kernel zeroing) of fresh 64 MiB-1 GiB
    allocations, which otherwise cost as much as the reads. A consumer that keeps batches simply makes the pool allocate
    new buffers; at most ``max_buffers`` are pooled, further ones are allocated and dropped normally.
    """

    _POOL_REFS = 3  # the pool's list, the loop variable, getrefcount's argument

    def __init__(self, max_buffers: int) -> None:
        self.max_buffers = max_buffers
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def get(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        with self._lock:
            for buf in self._buffers:
                if buf.nbytes >= nbytes and sys.getrefcount(buf) <= self._POOL_REFS:
                    return buf[:nbytes].view(dtype).reshape(shape)
            buf = np.empty(nbytes, dtype=np.uint8)
            if len(self._buffers) < self.max_buffers:
                self._buffers.append(buf)
        return buf.view(dtype).reshape(shape)
