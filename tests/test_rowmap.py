"""RowMap: all shards in one map, rows gathered by id, pages warmed by large reads, the map gone with its last view."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import itertools
import os
import pathlib

import numpy as np
import pytest
import torch

from saev_ops.loaders import ShardSelection, ShuffledConfig, ShuffledDataLoader
from saev_ops.loaders.rowmap import CHUNK_BYTES, PAGE, SLOT_ALIGN, RowMap
from saev_ops.loaders.shuffled import _Lifetimes
from saev_ops.shards import ShardReader, aligned
from tests.shard_helpers import write_dataset


def mapped(path: pathlib.Path) -> list[str]:
    """This process's maps of files under ``path``."""
    root = str(path.resolve())
    return [line for line in pathlib.Path("/proc/self/maps").read_text().splitlines() if root in line]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_rows_gathered_from_the_map_equal_the_files(tmp_path: pathlib.Path, dtype: str) -> None:
    # 50 examples over 5 shards (12 per shard, the last short), 2 layers, CLS + 2 registers + 16 patches, d_model 32
    path = write_dataset(tmp_path, n_examples=50, n_registers=2, dtype=dtype)
    reader = ShardReader(path)
    m = RowMap(reader)
    assert m.slot_bytes % SLOT_ALIGN == 0 and m.slot_bytes % reader.row_bytes == 0
    assert m.rows.ctypes.data % SLOT_ALIGN == 0 and not m.rows.flags.writeable
    rng = np.random.default_rng(0)
    ex = rng.integers(0, 50, 400)
    layer = rng.integers(0, 2, 400)
    token = rng.integers(0, reader.tokens_per_example, 400)
    out = aligned.empty((400, reader.d_model), reader.disk_dtype)
    m.take(m.global_rows(*reader.row_offsets(ex, layer, token)), out)
    want = np.stack([reader.read(int(e), 1, int(li))[0, t] for e, li, t in zip(ex, layer, token, strict=True)])
    from saev_ops.shards import dtypes

    np.testing.assert_array_equal(dtypes.decode(out, reader.storage_dtype), want)


def test_warming_reads_only_what_the_page_cache_lacks(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path, n_examples=600, n_patches=64, d_model=256, layers=(5,), labels=False,
                         max_tokens_per_shard=65 * 600)  # one shard of 40 MB
    reader = ShardReader(path)
    m = RowMap(reader)
    size = m.sizes[0]
    assert size > 2 * CHUNK_BYTES  # three chunks, the last short
    fd = reader.fd(0)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no kernel read-ahead on the reader's reads: exact counts
    if m.resident(0, 0, size):
        pytest.skip("this file system keeps the pages whatever we advise (tmpfs?): residency cannot be dropped")
    scratch = aligned.empty(CHUNK_BYTES, np.uint8)
    ranges = np.array([[0, 100, CHUNK_BYTES + 5000]])  # one chunk from byte 100, then the 5,000 bytes after it
    assert m.warm(ranges, scratch) == CHUNK_BYTES + 5000
    assert m.resident(0, 100, CHUNK_BYTES + 5000) and not m.resident(0, CHUNK_BYTES + 5100 + 4096, 4096)
    assert m.warm(ranges, scratch) == 0  # cached: a mincore call per chunk, no read
    # the whole file: the first chunk is cached (page 0 too: it holds byte 100); the rest is read, chunk by chunk
    assert m.warm(np.array([[0, 0, size]]), scratch) == size - CHUNK_BYTES
    assert m.resident(0, 0, size)


def test_the_maps_go_with_the_loader(tmp_path: pathlib.Path) -> None:
    """Batches are copies: once a loader's threads have ended and its batches are kept, nothing of the files stays
    mapped (a loader per epoch must not pile up maps)."""
    path = write_dataset(tmp_path, n_examples=50)
    loader = ShuffledDataLoader(path, ShuffledConfig(selection=ShardSelection(tokens="all"), batch_size=64,
                                                     buffer_mb=0.3, read_mb=0.004, n_threads=2))
    kept = []
    for _ in range(2):
        kept += list(loader)
        gc.collect()
        assert mapped(path) == []
    stream = loader.stream()
    next(stream)
    assert mapped(path)  # while it runs, the shards are mapped
    stream.close()
    gc.collect()
    assert mapped(path) == []
    assert sum(len(b["act"]) for b in kept) == 2 * 50 * loader.plan.rows_per_example


@pytest.mark.parametrize("tokens", ["all", "patches", "cls", "special", "no-registers"])
@pytest.mark.parametrize("layers", [(3,), (7,), (3, 7)])
def test_a_group_warms_the_bytes_of_its_rows_and_few_others(tmp_path_factory: pytest.TempPathFactory,
                                                             tokens: str, layers: tuple[int, ...]) -> None:
    """Every selected row of a group lies inside the ranges warmed for it; a selection of few tokens (CLS) warms
    those rows, not whole examples."""
    path = write_dataset(tmp_path_factory.mktemp("ds"), n_examples=50, n_registers=2, d_model=4096)
    loader = ShuffledDataLoader(path, ShuffledConfig(selection=ShardSelection(layers=layers, tokens=tokens),
                                                     buffer_mb=6, read_mb=0.1))
    reader, plan = loader.reader, loader.plan
    for g in loader._groups(0)[:2]:
        ex = np.concatenate([np.arange(s, s + c) for s, c in g.blocks])
        ranges = loader._group_ranges(ex)
        assert np.all(np.diff(ranges[:, 0] * 2**40 + ranges[:, 1]) > 0)  # file order, no overlap
        shard, off = reader.row_offsets(ex[:, None, None], np.asarray(plan.layer_idx)[None, :, None],
                                        plan.token_idx[None, None, :])
        for s_, o in zip(np.broadcast_to(shard, off.shape).ravel(), off.ravel(), strict=True):
            mine = ranges[ranges[:, 0] == s_]
            assert np.any((mine[:, 1] <= o) & (o + reader.row_bytes <= mine[:, 1] + mine[:, 2]))
        wanted = len(ex) * plan.rows_per_example * reader.row_bytes
        if tokens == "cls":  # 16 KB rows 1.2 MB apart: each read alone
            assert ranges[:, 2].sum() == wanted
        assert ranges[:, 2].sum() <= len(ex) * reader.example_bytes


def _stream_rows(loader: ShuffledDataLoader, n_batches: int) -> list[np.ndarray]:
    s = loader.stream()
    out = [torch.stack([b["example_idx"], b["layer"], b["token_idx"]], 1).numpy()
           for b in itertools.islice(s, n_batches)]
    s.close()
    return out


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_released_groups_give_the_same_batches(tmp_path: pathlib.Path, drop_last: bool, dtype: str) -> None:
    # many small groups, three cutters, batches spanning groups, three epochs back to back
    path = write_dataset(tmp_path, n_examples=60, n_registers=2, dtype=dtype)
    cfg = dict(batch_size=70, buffer_mb=0.3, read_mb=0.004, n_threads=3, drop_last=drop_last)
    keep = ShuffledDataLoader(path, ShuffledConfig(**cfg, release_groups=False))
    release = ShuffledDataLoader(path, ShuffledConfig(**cfg, release_groups=True))
    assert release.release_groups and not keep.release_groups
    n = 3 * len(keep) + 1
    for a, b in zip(_stream_rows(keep, n), _stream_rows(release, n), strict=True):
        np.testing.assert_array_equal(a, b)


def test_released_groups_leave_the_page_cache(tmp_path: pathlib.Path) -> None:
    # 600 examples of 65 tokens x 256 floats (16 pages each), blocks of 2 examples, ~10 groups
    path = write_dataset(tmp_path, n_examples=600, n_patches=64, d_model=256, layers=(5,), labels=False,
                         max_tokens_per_shard=65 * 200)
    reader = ShardReader(path)
    for i in range(reader.md.n_shards):
        os.fsync(reader.fd(i))
    m = RowMap(reader)

    def cached() -> float:
        return float(np.mean([m.resident(i, p, PAGE) for i in range(reader.md.n_shards)
                              for p in range(0, m.sizes[i] - PAGE, PAGE)]))

    for release in (False, True):
        for i in range(reader.md.n_shards):
            os.posix_fadvise(reader.fd(i), 0, 0, os.POSIX_FADV_DONTNEED)
            # no kernel read-ahead past the warming reads: it would bring back pages of groups already released
            os.posix_fadvise(reader.fd(i), 0, 0, os.POSIX_FADV_RANDOM)
        loader = ShuffledDataLoader(reader, ShuffledConfig(selection=ShardSelection(tokens="all"), batch_size=4096,
                                                           buffer_mb=12, read_mb=0.1, n_threads=2,
                                                           release_groups=release))
        assert len(loader._groups(0)) > 5
        rows = sum(len(b["act"]) for b in loader)  # one epoch: every group cut, none of the next epoch warmed
        assert rows == loader.n_rows
        if not release:
            if cached() < 0.9:
                pytest.skip("this file system drops pages on its own (or keeps none): cannot tell a release")
            continue
        assert cached() < 0.1  # only pages shared by two groups' blocks stay (at most one in 32 here)


def test_a_group_is_released_after_the_last_batch_holding_its_rows() -> None:
    released: list[str] = []
    life = _Lifetimes(released.append)
    life.start(0, "g0")
    life.start(1, "g1")
    f1, f2, f3 = cf.Future(), cf.Future(), cf.Future()
    life.batch([0], f1)
    life.batch([0, 1], f2)  # g0's last rows, g1's first
    life.issued([0])
    life.batch([1], f3)
    f2.set_result(None)
    assert released == []  # f1 still cutting g0's rows
    f1.set_result(None)
    assert released == ["g0"]
    f3.set_result(None)
    assert released == ["g0"]  # g1 not yet issued: more of its rows may come
    life.issued([1])
    assert released == ["g0", "g1"]
