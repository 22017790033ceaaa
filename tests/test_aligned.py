"""Buffers that file reads land in start on a page: numpy's own allocations sit 16 bytes off a cache line, which made
the kernel's copy from the page cache ~5x slower on AMD hosts (saev_ops.shards.aligned)."""

from __future__ import annotations

import numpy as np
import pytest

from saev_ops.loaders import blocks
from saev_ops.loaders.selection import ShardSelection, plan
from saev_ops.shards import ShardReader, aligned
from tests.shard_helpers import write_dataset


def _aligned(a: np.ndarray) -> bool:
    return a.ctypes.data % aligned.ALIGN == 0


@pytest.mark.parametrize("shape,dtype", [((3, 5), np.float32), (7, np.uint8), ((2, 3, 4), np.uint16),
                                         ((1,), np.float32)])
def test_empty_is_page_aligned_contiguous_and_writable(shape, dtype):
    a = aligned.empty(shape, dtype)
    assert _aligned(a) and a.flags.c_contiguous and a.flags.writeable
    assert a.shape == (shape if isinstance(shape, tuple) else (shape,)) and a.dtype == np.dtype(dtype)
    a[...] = 1
    assert (a == 1).all()


def test_buffer_pool_hands_out_aligned_buffers_pooled_and_beyond():
    pool = blocks.BufferPool(max_buffers=1)
    first = pool.get((1000, 3))
    second = pool.get((1000, 3))  # the pool is full: a buffer outside it
    assert _aligned(first) and _aligned(second)
    del first
    assert _aligned(pool.get((10, 3)))  # the pooled one again


def test_reads_land_in_aligned_buffers(tmp_path):
    reader = ShardReader(write_dataset(tmp_path, n_examples=6))
    assert _aligned(blocks.read_examples(reader, plan(reader, ShardSelection()), 1, 3))
    assert _aligned(reader.read(0, 2))
