"""The one block reader under every loader: contiguous example ranges -> float32 rows of the selected layers/tokens."""

from __future__ import annotations

import ctypes
import itertools
import queue
import threading
import traceback
import weakref
from typing import Any

import numpy as np

from saev_ops import errors
from saev_ops.loaders import iovec
from saev_ops.loaders.selection import Plan
from saev_ops.shards import aligned, dtypes
from saev_ops.shards.reader import ShardReader


def read_examples(reader: ShardReader, plan: Plan, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """Examples ``[start, start + n)`` as float32 (n, layers_selected, T, D), with every token.

    One ``preadv`` per contiguous piece: the whole range when all layers (or the only layer) are read, else one per
    example and layer. ``out`` (float32, that shape) is filled in place when given.
    """
    md = reader.md
    shape = (n, len(plan.layer_idx), md.tokens_per_example, md.d_model)
    if out is None:
        out = aligned.empty(shape, np.float32)
    same_dtype = reader.disk_dtype == np.float32
    if plan.layer_idx == tuple(range(md.n_layers)):
        raw = out if same_dtype else aligned.empty(shape, reader.disk_dtype)
        reader.read_raw(start, n, None, raw)
        if not same_dtype:
            dtypes.decode(raw, reader.storage_dtype, out)
        return out
    for j, li in enumerate(plan.layer_idx):
        raw = aligned.empty((n, md.tokens_per_example, md.d_model), reader.disk_dtype)
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
    return check(q.get(), who)


def check(item: Any, who: str) -> Any:
    """``item``, unless it is a thread's :func:`failure`: then raise it as a ``WorkerError`` naming ``who``."""
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

    ``pinned=True`` allocates page-locked memory (through torch, so it needs CUDA): a batch cut into it goes to the GPU
    in one DMA transfer that leaves the host free. Pinning is paid once per pooled buffer, not per batch. Whoever copies
    from such a batch without waiting (``non_blocking``) must keep the batch until the copy is done, or its buffer may
    be refilled under the copy (:class:`saev_ops.loaders.feed.DeviceFeed` does).
    """

    def __init__(self, max_buffers: int, pinned: bool = False) -> None:
        self.max_buffers = max_buffers
        self.pinned = pinned
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
            buf = _pinned(nbytes) if self.pinned else aligned.empty(nbytes, np.uint8)  # see saev_ops.shards.aligned
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


def _pinned(nbytes: int) -> np.ndarray:
    import torch

    # the array keeps the tensor, and so the page-locked block, alive; the block starts on a page boundary
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy()


def require_pinnable(who: str) -> None:
    """Raise ``ConfigError`` naming ``who`` unless pinned memory can be allocated (it needs CUDA)."""
    import torch

    if not torch.cuda.is_available():
        raise errors.ConfigError(f"{who}: pin_memory needs CUDA, and torch.cuda.is_available() is False here "
                                 "(set pin_memory=False; pinning only speeds copies to a GPU)")


def scatter_examples(reader: ShardReader, plan: Plan, starts: np.ndarray, counts: np.ndarray, dest_rows: np.ndarray,
                     out: np.ndarray, staging: BufferPool) -> None:
    """Read the selected rows of the example ranges ``[starts[i], starts[i] + counts[i])`` so that the k-th row (ranges
    in the given order, then examples, then rows in plan order) lands in ``out[dest_rows[k]]`` (float32).

    The read path of the Ordered loader and of indexed access (the Shuffled loader gathers from the files' maps
    instead: :mod:`saev_ops.loaders.rowmap`). The ranges are sorted into file order and
    :func:`saev_ops.loaders.iovec.read_rows` puts every row in its place (native ``preadv`` with iovecs built by numpy,
    the GIL released for each call; else its one numpy fallback), so the Python work is a fixed cost per call of this
    function, not per row or per range. float32 storage lands straight in ``out``; reduced precision lands in a
    staging buffer of the disk dtype and is widened into ``out`` with one indexed assignment.
    """
    rpe = plan.rows_per_example
    examples = np.concatenate([np.arange(s, s + c, dtype=np.int64)
                               for s, c in zip(np.atleast_1d(starts).tolist(), np.atleast_1d(counts).tolist(),
                                               strict=True)])
    order = np.argsort(examples, kind="stable")
    n_tok = len(plan.token_idx)
    layers = np.repeat(np.asarray(plan.layer_idx, dtype=np.int64), n_tok)[None, :]  # layer-major, as plan rows are
    tokens = np.tile(plan.token_idx, len(plan.layer_idx))[None, :]
    shard, offsets = reader.row_offsets(examples[order][:, None], layers, tokens)
    shard = shard[:, 0]
    rows_sorted = np.asarray(dest_rows, dtype=np.int64).reshape(-1, rpe)[order]
    if reader.disk_dtype == np.float32:
        target, dest = out, rows_sorted * reader.row_bytes
    else:
        target = staging.get((len(examples) * rpe, reader.d_model), reader.disk_dtype)
        dest = np.arange(len(examples) * rpe, dtype=np.int64).reshape(-1, rpe) * reader.row_bytes
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(shard)) + 1, [len(shard)]])
    for a, b in itertools.pairwise(cuts.tolist()):
        iovec.read_rows(reader, int(shard[a]), offsets[a:b].ravel(), dest[a:b].ravel(), reader.row_bytes, target)
    if target is not out:
        out[rows_sorted.ravel()] = dtypes.decode(target, reader.storage_dtype)
