"""Scattered reads with iovec arrays built by numpy and handed to libc's ``preadv`` through ctypes.

``os.preadv`` wants a Python list of buffers, so a read that puts every row in a different place costs a memoryview
and a list entry per row, all under the GIL: on a 16-core host that, not the disk, bounded the shuffled loader. Here
the iovec array (pointer, length pairs) is computed for a whole block of rows at once and the system call runs with
the GIL released (ctypes drops it for the call), so reader threads scale with cores and the kernel copies each row
straight to its destination: one copy, no Python per row.

``AVAILABLE`` is false where libc has no ``preadv`` (then :func:`saev_ops.loaders.blocks.scatter_block` falls back to
one contiguous read and a numpy scatter).
"""

from __future__ import annotations

import ctypes
import itertools
import os
from typing import Any

import numpy as np

from saev_ops.shards import aligned
from saev_ops.shards.reader import ShardReader

GAP_BYTES = 256 << 10
"""Unselected stretches up to this long are read into scratch (one call continues); longer ones end the call."""
IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
"""Buffers per ``preadv`` call."""
_SEGS_PER_CALL = IOV_MAX // 2  # each segment may bring one scratch iovec for the gap after it


def _libc_preadv() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).preadv
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong)
    fn.restype = ctypes.c_ssize_t
    return fn


_PREADV = _libc_preadv()
AVAILABLE = _PREADV is not None and ctypes.sizeof(ctypes.c_void_p) == 8


def read_rows(reader: ShardReader, shard: int, offsets: np.ndarray, dest: np.ndarray, row_bytes: int,
              out: np.ndarray) -> None:
    """Read ``row_bytes`` at each file offset of ``shard`` (ascending, non-overlapping) into byte offset ``dest[k]`` of
    ``out`` (C-contiguous). Short reads are finished row by row with the reader's retrying read, which reports a
    truncated file."""
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    n = len(offsets)
    if n == 0:
        return
    if n == 1:  # one row (IndexedDataset[i]): the reader's retrying read, without the set-up below
        start = int(dest[0])
        if start < 0 or start + row_bytes > out.nbytes:
            raise ValueError("a destination row lies outside out")
        reader.pread_into(shard, int(offsets[0]), out.reshape(-1).view(np.uint8).data[start : start + row_bytes])
        return
    if int(dest.min()) < 0 or int(dest.max()) + row_bytes > out.nbytes:
        raise ValueError("a destination row lies outside out")  # the pointers below must stay inside the buffer
    gap = np.diff(offsets) - row_bytes  # unselected bytes after each row but the last
    if int(gap.min()) < 0:
        raise ValueError("offsets must be ascending and rows must not overlap")
    if not AVAILABLE:
        _gather(reader, shard, offsets, dest, row_bytes, out)
        return
    fd = reader.fd(shard)
    # segments: runs of rows contiguous both in the file and in out, one iovec each
    brk = np.flatnonzero((gap != 0) | (np.diff(dest) != row_bytes)) + 1
    first = np.concatenate([[0], brk]).astype(np.int64)
    s_off = offsets[first]
    s_dest = dest[first]
    s_len = (np.append(brk, n) - first) * row_bytes
    m = len(first)
    s_gap = s_off[1:] - (s_off[:-1] + s_len[:-1])  # unselected bytes after each segment but the last
    # calls start at segment 0, after every long gap, and every _SEGS_PER_CALL segments within a stretch
    breaks = np.flatnonzero(s_gap > GAP_BYTES) + 1
    seg = np.concatenate([[0], breaks, [m]])
    starts = np.concatenate([np.arange(a, b, _SEGS_PER_CALL) for a, b in itertools.pairwise(seg) if b > a])
    ends = np.append(starts[1:], m)
    scratch_after = np.zeros(m, dtype=bool)
    scratch_after[:-1] = (s_gap > 0) & (s_gap <= GAP_BYTES)
    scratch_after[ends - 1] = False  # a call never reads past its last segment
    n_iov = 1 + scratch_after.astype(np.int64)
    first_iov = np.cumsum(n_iov) - n_iov
    iov = np.empty((int(n_iov[-1] + first_iov[-1]), 2), dtype=np.uint64)
    iov[first_iov, 0] = out.ctypes.data + s_dest.astype(np.uint64)
    iov[first_iov, 1] = s_len
    scratch = aligned.empty(GAP_BYTES if scratch_after.any() else 1, np.uint8)
    after = first_iov[scratch_after] + 1
    iov[after, 0] = scratch.ctypes.data
    iov[after, 1] = s_gap[scratch_after[:-1]].astype(np.uint64)
    base = iov.ctypes.data
    for a, b, ia, ib in zip(starts.tolist(), ends.tolist(), first_iov[starts].tolist(),
                            (first_iov[ends - 1] + 1).tolist(), strict=True):
        off_a, off_b = int(s_off[a]), int(s_off[b - 1] + s_len[b - 1])
        _call(reader, shard, fd, base + ia * 16, ib - ia, off_a, off_b - off_a, s_off[a:b], s_dest[a:b],
              s_len[a:b], out)
    del scratch  # alive until every call above returned


def _gather(reader: ShardReader, shard: int, offsets: np.ndarray, dest: np.ndarray, row_bytes: int,
            out: np.ndarray) -> None:
    """The fallback where libc has no ``preadv``: one numpy gather from the shard's memory map
    (:meth:`ShardReader.rows`), served by the page cache without a call per row. Rows start at multiples of
    ``row_bytes`` in the file and in ``out``, so both sides are arrays of rows."""
    rows_out = out.reshape(-1).view(np.uint8).reshape(-1, row_bytes)
    src = reader.rows(shard).reshape(-1).view(np.uint8).reshape(-1, row_bytes)
    rows_out[dest // row_bytes] = src[offsets // row_bytes]


def _call(reader: ShardReader, shard: int, fd: int, iov_ptr: int, n_iov: int, offset: int, want: int,
          offsets: np.ndarray, dest: np.ndarray, lengths: np.ndarray, out: np.ndarray) -> None:
    got = _PREADV(fd, iov_ptr, n_iov, offset)
    if got == want:
        return
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{reader.paths.shard(shard)}: preadv at byte {offset}: {os.strerror(err)}")
    flat = out.reshape(-1).view(np.uint8).data  # short read: finish these segments with the retrying read
    for off, d, length in zip(offsets.tolist(), dest.tolist(), lengths.tolist(), strict=True):
        reader.pread_into(shard, off, flat[d : d + length])
