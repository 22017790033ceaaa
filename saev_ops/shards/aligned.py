"""Page-aligned numpy buffers: the one allocation for memory that file reads land in.

The kernel copies page-cache data with ``rep movsb``, which on this project's AMD EPYC host (``erms``/``fsrm``) runs
at a fifth of its speed when the destination lies 1-31 bytes past the source modulo 4096 (4K aliasing between the
copy's loads and stores): 1 MiB ``preadv`` calls into a buffer 8, 16 or 24 bytes past a page ran at 2.3-2.7 GB/s, at
0, 32, 80 or 528 bytes past a page at 10-13 GB/s (``benchmarks/read_alignment.py``). numpy's large allocations
start exactly 16 bytes past a page (glibc's chunk header), so every read into one from the start of a page of the
file hit the slow case. Page-aligned buffers keep destination and source at the same offset in their pages, or at a
multiple of the row size apart (a multiple of 64 bytes for shards of any usual ``d_model``), never in that window.
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
