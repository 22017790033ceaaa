"""Page-aligned numpy buffers: the one allocation for memory that file reads land in.

numpy's allocations start 16 bytes past a page boundary (glibc's chunk header), so every row a read puts there is off
a cache line. The kernel copies page-cache data with ``rep movsb``; on AMD EPYC (``erms``/``fsrm``) that copy runs
about 5x slower into a destination that is not 64-byte aligned: 1 MiB ``preadv`` calls from the page cache reached
2.1 GB/s into a numpy buffer and 11.9 GB/s into the same buffer 16 bytes further on (docs/performance.md). Rows of
saev's shards are multiples of 64 bytes, so a page-aligned buffer keeps every row aligned.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ALIGN = 4096
"""Bytes: a page, so a buffer is aligned for any cache line and for the page cache's pages."""


def empty(shape: int | tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose first byte is :data:`ALIGN`-aligned (its ``base`` keeps the
    allocation alive)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)
