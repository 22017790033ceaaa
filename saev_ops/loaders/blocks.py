"""The one block reader under every loader: contiguous example ranges -> float32 rows of the selected layers/tokens."""

from __future__ import annotations

import ctypes
import itertools
import os
import queue
import threading
import traceback
import weakref
from typing import Any

import numpy as np

from saev_ops.loaders import iovec
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
    """Large numpy buffers, reused once nothing handed out from them is alive.

    Reusing buffers avoids the page faults (and kernel zeroing) of fresh 64 MiB-1 GiB allocations, which otherwise cost
    as much as the reads. Each hand-out is a *lease*: a ctypes array over the pooled buffer, from which the returned
    array is made, so every view cut from it (numpy slices, the torch tensors of a batch) keeps the lease alive. A
    weak reference to the lease frees the buffer when the last of those is dropped: tracked explicitly, on any Python,
    not by reading reference counts. A consumer that keeps batches simply makes the pool allocate new buffers; at most
    ``max_buffers`` are pooled, further ones are allocated and dropped normally.
    """

    def __init__(self, max_buffers: int) -> None:
        self.max_buffers = max_buffers
        self._buffers: list[np.ndarray] = []
        self._leased: set[int] = set()  # indices into _buffers with a live lease
        self._lock = threading.RLock()  # a lease may be collected while this thread holds the lock

    def get(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        with self._lock:
            for i, buf in enumerate(self._buffers):
                if buf.nbytes >= nbytes and i not in self._leased:
                    return self._lease(i, nbytes).view(dtype).reshape(shape)
            buf = np.empty(nbytes, dtype=np.uint8)
            if len(self._buffers) < self.max_buffers:
                self._buffers.append(buf)
                return self._lease(len(self._buffers) - 1, nbytes).view(dtype).reshape(shape)
        return buf.view(dtype).reshape(shape)

    def _lease(self, i: int, nbytes: int) -> np.ndarray:
        owner = (ctypes.c_uint8 * nbytes).from_buffer(self._buffers[i].data)
        self._leased.add(i)
        weakref.finalize(owner, self._release, i)
        return np.frombuffer(memoryview(owner), dtype=np.uint8)  # arrays -> memoryview -> owner: all keep it

    def _release(self, i: int) -> None:
        with self._lock:
            self._leased.discard(i)

    def in_use(self) -> int:
        """Pooled buffers with a live lease (for tests and diagnostics)."""
        with self._lock:
            return len(self._leased)


def read_selected(reader: ShardReader, plan: Plan, start: int, n: int, out: np.ndarray) -> np.ndarray:
    """Examples ``[start, start + n)`` as their selected rows, in order, straight into ``out`` (n * rows, D).

    The kernel scatters each read: ``preadv`` gets one iovec per selected run of tokens (into ``out``) and one per
    short unselected run (into a scratch buffer), so selecting patches (no CLS) costs no extra copy. Unselected
    stretches longer than 256 KiB (whole layers not asked for) end the call and are skipped. For reduced-precision
    storage the same scatter fills a disk-dtype buffer, widened to float32 afterwards.
    """
    md = reader.md
    itemsize = reader.disk_dtype.itemsize
    row_bytes = md.d_model * itemsize
    T = md.tokens_per_example
    direct = reader.disk_dtype == np.float32
    target = out if direct else np.empty(out.shape, dtype=reader.disk_dtype)
    tview = target.reshape(-1).data.cast("B")
    selected = np.zeros(T, dtype=bool)
    selected[plan.token_idx] = True
    if not np.all(np.diff(plan.token_idx) > 0):
        raise AssertionError("token selection must be increasing")  # layout indices are always sorted
    # runs of (is_selected, first token, count) along one layer's token axis
    edges = np.flatnonzero(np.diff(selected.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [T]])
    runs = [(bool(selected[a]), int(a), int(b - a)) for a, b in itertools.pairwise(bounds)]
    max_gap = max([c for s, _, c in runs if not s] + [0]) * row_bytes
    scratch = memoryview(bytearray(min(max(max_gap, 1), iovec.GAP_BYTES)))
    layer_pos = {li: j for j, li in enumerate(plan.layer_idx)}
    eps = md.examples_per_shard
    dest = 0  # byte position in target
    ex = start
    while ex < start + n:
        shard, row = divmod(ex, eps)
        take = min(start + n - ex, eps - row)
        fd = reader.fd(shard)
        iov: list[memoryview] = []
        call_offset = row * reader.example_bytes
        pos = call_offset  # next file byte the pending call would read
        for e in range(row, row + take):
            for li in range(md.n_layers):
                layer_start = e * reader.example_bytes + li * reader.layer_bytes
                if li not in layer_pos:
                    continue
                for is_sel, first, count in runs:
                    run_off = layer_start + first * row_bytes
                    nbytes = count * row_bytes
                    if run_off != pos or (not is_sel and nbytes > len(scratch)) or len(iov) >= iovec.IOV_MAX:
                        iov = _flush(reader, fd, shard, iov, call_offset)
                        call_offset = pos = run_off
                    if is_sel:
                        iov.append(tview[dest : dest + nbytes])
                        dest += nbytes
                        pos += nbytes
                    elif nbytes <= len(scratch):
                        iov.append(scratch[:nbytes])
                        pos += nbytes
                    else:
                        pos = run_off + nbytes
                        call_offset = pos
        _flush(reader, fd, shard, iov, call_offset)
        ex += take
    if not direct:
        dtypes.decode(target, reader.storage_dtype, out)
    return out


def _flush(reader: ShardReader, fd: int, shard: int, iov: list[memoryview], offset: int) -> list[memoryview]:
    """Issue the pending scattered read at ``offset``; returns the emptied list."""
    if iov:
        got = os.preadv(fd, iov, offset)
        if got != sum(len(v) for v in iov):
            # rare: retry piecewise so a short read is either completed or reported
            _complete_short(reader, shard, iov, offset, got)
    return []


def _complete_short(reader: ShardReader, shard: int, iov: list[memoryview], offset: int, got: int) -> None:
    """A scattered read came back short: finish each buffer with the reader's own retrying read (which reports a
    truncated file)."""
    pos = offset
    for v in iov:
        done = max(0, min(len(v), got - (pos - offset)))
        if done < len(v):
            reader.pread_into(shard, pos + done, v[done:])
        pos += len(v)


def scatter_examples(reader: ShardReader, plan: Plan, starts: np.ndarray, counts: np.ndarray, dest_rows: np.ndarray,
                     out: np.ndarray, staging: BufferPool) -> None:
    """Read the selected rows of the example ranges ``[starts[i], starts[i] + counts[i])`` so that the k-th row (ranges
    in the given order, then examples, then rows in plan order) lands in ``out[dest_rows[k]]``.

    float32 on disk: the ranges are sorted into file order and the kernel puts every row straight in its place
    (:func:`saev_ops.loaders.iovec.read_rows`, iovecs built by numpy for all ranges at once, the GIL released for each
    call), so the Python work is a fixed cost per call of this function, not per row or per range, and reader threads
    scale with cores. Otherwise (reduced-precision storage, or no libc ``preadv``): per range one
    :func:`read_selected` into a reused staging buffer, widened to float32, then one numpy indexed assignment.
    """
    md = reader.md
    rpe = plan.rows_per_example
    if reader.disk_dtype != np.float32 or not iovec.AVAILABLE:
        k = 0
        for s, c in zip(starts.tolist(), counts.tolist(), strict=True):
            rows = staging.get((c * rpe, reader.d_model))
            read_selected(reader, plan, s, c, rows)
            out[dest_rows[k : k + c * rpe]] = rows
            k += c * rpe
        return
    row_bytes = md.d_model * 4
    layer_off = np.asarray(plan.layer_idx, dtype=np.int64)[:, None] * reader.layer_bytes
    sel_offsets = (layer_off + plan.token_idx[None, :] * row_bytes).ravel()  # selected rows of one example
    examples = np.concatenate([np.arange(s, s + c, dtype=np.int64)
                               for s, c in zip(starts.tolist(), counts.tolist(), strict=True)])
    order = np.argsort(examples, kind="stable")
    examples = examples[order]
    dest = dest_rows.reshape(-1, rpe)[order].astype(np.int64) * row_bytes
    shard, row = np.divmod(examples, md.examples_per_shard)
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(shard)) + 1, [len(shard)]])
    for a, b in itertools.pairwise(cuts.tolist()):
        offs = ((row[a:b] * reader.example_bytes)[:, None] + sel_offsets[None, :]).ravel()
        iovec.read_rows(reader, int(shard[a]), offs, dest[a:b].ravel(), row_bytes, out)
