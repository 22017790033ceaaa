"""Loaders: coverage, order, resume equality, mixing, indexed access, worker errors."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import torch

from saev_ops import errors
from saev_ops.loaders import (
    IndexedDataset,
    OrderedConfig,
    OrderedDataLoader,
    ShardSelection,
    ShuffledConfig,
    ShuffledDataLoader,
)
from saev_ops.loaders.blocks import WorkerError
from tests.shard_helpers import write_dataset

SELECTIONS = [
    ShardSelection(layers=(7,), tokens="patches"),
    ShardSelection(layers=(3,), tokens="all"),
    ShardSelection(layers=(3, 7), tokens="cls"),
    ShardSelection(layers=(-1,), tokens="special"),
    ShardSelection(layers=(7, 3), tokens="no-registers"),
]


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    # 50 examples, 12 per shard, CLS + 2 registers + 16 patches, layers (3, 7), d_model 32
    return write_dataset(tmp_path_factory.mktemp("ds"), n_examples=50, n_registers=2)


def expected_rows(sel: ShardSelection, n_examples: int = 50) -> np.ndarray:
    layers = {(3,): [3], (7,): [7], (3, 7): [3, 7], (-1,): [7], (7, 3): [3, 7]}[sel.layers]
    tokens = {"all": range(19), "patches": range(3, 19), "cls": [0], "special": [0, 1, 2],
              "no-registers": [0, *range(3, 19)]}[sel.tokens]
    return np.array([(e, l, t) for e in range(n_examples) for l in layers for t in tokens], dtype=np.int64)


def check_batch(b: dict) -> np.ndarray:
    """Values encode their origin: channel 0 = example, 1 = layer, 2 = token."""
    act = b["act"]
    assert act.dtype == torch.float32 and act.ndim == 2 and act.shape[1] == 32
    ids = torch.stack([b["example_idx"], b["layer"], b["token_idx"]], 1)
    assert torch.equal(act[:, :3].long(), ids)
    return ids.numpy()


@pytest.mark.parametrize("sel", SELECTIONS, ids=lambda s: f"{s.layers}-{s.tokens}")
@pytest.mark.parametrize("batch_size", [1, 37, 10_000])
def test_ordered_exact_order(ds: pathlib.Path, sel: ShardSelection, batch_size: int) -> None:
    loader = OrderedDataLoader(ds, OrderedConfig(selection=sel, batch_size=batch_size, chunk_mb=0.05))
    got = np.concatenate([check_batch(b) for b in loader])
    np.testing.assert_array_equal(got, expected_rows(sel))
    assert len(loader) == -(-len(got) // batch_size)


def test_ordered_start_stop_split(ds: pathlib.Path) -> None:
    sel = ShardSelection(layers=(7,), tokens="patches")
    parts = [OrderedDataLoader(ds, OrderedConfig(selection=sel, batch_size=50, start=a, stop=b, chunk_mb=0.03))
             for a, b in [(0, 13), (13, 40), (40, 50)]]
    got = np.concatenate([check_batch(b) for p in parts for b in p])
    np.testing.assert_array_equal(got, expected_rows(sel))
    with pytest.raises(errors.ConfigError, match="stop=60 is past"):
        OrderedDataLoader(ds, OrderedConfig(stop=60))
    with pytest.raises(errors.ConfigError, match="start <= stop"):
        OrderedConfig(start=5, stop=2)


def test_ordered_batches_survive_being_kept(ds: pathlib.Path) -> None:
    loader = OrderedDataLoader(ds, OrderedConfig(selection=ShardSelection(tokens="all", layers=(3,)), batch_size=64,
                                                 chunk_mb=0.01, prefetch=1, n_threads=1))
    kept = list(loader)  # buffers must not be reused under batches that are still alive
    got = np.concatenate([check_batch(b) for b in kept])
    np.testing.assert_array_equal(got, expected_rows(ShardSelection(tokens="all", layers=(3,))))


def test_ordered_passes_share_buffers_and_stay_exact(ds: pathlib.Path) -> None:
    """A loader's chunk buffers outlive a pass (a second pass faults no fresh pages in), yet batches kept from one
    pass are never written over by the next, and two passes interleaved each read every row in order."""
    sel = ShardSelection(tokens="all", layers=(3,))
    loader = OrderedDataLoader(ds, OrderedConfig(selection=sel, batch_size=64, chunk_mb=0.01, prefetch=2, n_threads=2))
    want = expected_rows(sel)
    list(loader)
    pooled = len(loader._buffers._buffers)
    list(loader)
    assert len(loader._buffers._buffers) == pooled  # the second pass reused the first one's buffers
    kept = list(loader)
    a, b = iter(loader), iter(loader)
    got_a, got_b = [], []
    for x, y in zip(a, b, strict=True):
        got_a.append(check_batch(x))
        got_b.append(check_batch(y))
    np.testing.assert_array_equal(np.concatenate(got_a), want)
    np.testing.assert_array_equal(np.concatenate(got_b), want)
    np.testing.assert_array_equal(np.concatenate([check_batch(k) for k in kept]), want)


@pytest.mark.parametrize("native", [True, False])
def test_shuffled_batches_survive_being_kept(ds: pathlib.Path, native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches kept across two epochs (views of group buffers, and batches spanning two groups) are never written
    over: each equals the copy taken when it arrived, whatever the pools reused meanwhile."""
    from saev_ops.loaders import iovec

    if not native:
        monkeypatch.setattr(iovec, "AVAILABLE", False)  # the fallback path stages rows in a pool too
    loader = shuffled(ds, ShardSelection(tokens="all", layers=(3, 7)), batch_size=37, buffer_mb=0.05)
    kept, copies = [], []
    for _ in range(2):
        for b in loader:
            kept.append(b)
            copies.append({k: v.clone() for k, v in b.items()})
    assert len(kept) > 10
    for b, c in zip(kept, copies, strict=True):
        for k in c:
            assert torch.equal(b[k], c[k]), k


def test_buffer_pool_frees_a_buffer_when_its_last_view_goes() -> None:
    from saev_ops.loaders.blocks import BufferPool

    pool = BufferPool(max_buffers=2)
    a = pool.get((8, 4))
    tensor = torch.from_numpy(a[2:5])  # a batch cut from the buffer outlives the array handed out
    del a
    b = pool.get((8, 4))
    assert pool.in_use() == 2 and not np.shares_memory(b, tensor.numpy())
    del tensor
    assert pool.in_use() == 1
    c = pool.get((8, 4))  # the freed buffer is handed out again
    assert pool.in_use() == 2 and not np.shares_memory(b, c)


def shuffled(ds: pathlib.Path, sel: ShardSelection = ShardSelection(), **kw) -> ShuffledDataLoader:  # noqa: ANN003
    cfg = dict(selection=sel, batch_size=100, buffer_mb=0.3, read_mb=0.004, n_threads=2)
    cfg.update(kw)
    return ShuffledDataLoader(ds, ShuffledConfig(**cfg))


@pytest.mark.parametrize("sel", SELECTIONS, ids=lambda s: f"{s.layers}-{s.tokens}")
def test_shuffled_every_row_exactly_once_per_epoch(ds: pathlib.Path, sel: ShardSelection) -> None:
    loader = shuffled(ds, sel)
    for _ in range(2):
        got = np.concatenate([check_batch(b) for b in loader])
        exp = expected_rows(sel)
        assert len(got) == len(exp)
        np.testing.assert_array_equal(np.unique(got, axis=0), np.unique(exp, axis=0))
        assert len(np.unique(got, axis=0)) == len(got)
    assert loader.epoch == 2


def epoch_rows(loader: ShuffledDataLoader) -> np.ndarray:
    return np.concatenate([check_batch(b) for b in loader])


def test_shuffled_is_seeded_and_epochs_differ(ds: pathlib.Path) -> None:
    a, b, c = shuffled(ds, seed=1), shuffled(ds, seed=1), shuffled(ds, seed=2)
    ea, eb, ec = epoch_rows(a), epoch_rows(b), epoch_rows(c)
    np.testing.assert_array_equal(ea, eb)
    assert not np.array_equal(ea, ec)
    assert not np.array_equal(ea, epoch_rows(a))  # the second epoch has its own order


@pytest.mark.parametrize("stop_after", [0, 1, 7, 8, 16, 23])
def test_shuffled_resume_equals_uninterrupted(ds: pathlib.Path, stop_after: int) -> None:
    # 50 x 16 = 800 rows -> 8 batches per epoch; run 3 epochs (24 batches) with and without a resume mid-way
    ref = shuffled(ds, seed=3)
    want = [check_batch(b) for _ in range(3) for b in ref]
    first = shuffled(ds, seed=3)
    got = []
    it = iter(first)
    while len(got) < stop_after:
        try:
            got.append(check_batch(next(it)))
        except StopIteration:
            it = iter(first)
    it.close()
    state = first.state_dict()  # preemption: only the state survives
    second = shuffled(ds, seed=3)
    second.load_state_dict(state)
    while len(got) < len(want):
        got.extend(check_batch(b) for b in second)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("stop_after", [0, 5, 8, 13])
def test_shuffled_stream_equals_successive_epochs_and_resumes(ds: pathlib.Path, stop_after: int,
                                                              drop_last: bool) -> None:
    # batch 48 over 800 rows: epochs end on a partial batch of 32 (kept, or dropped with drop_last)
    def make() -> ShuffledDataLoader:
        return ShuffledDataLoader(ds, ShuffledConfig(selection=ShardSelection(tokens="patches"), batch_size=48,
                                                     seed=5, buffer_mb=0.02, drop_last=drop_last))

    ref = make()
    want = [check_batch(b) for _ in range(3) for b in ref]
    assert len(want) == 3 * len(ref)
    first = make()
    stream = first.stream()
    got = [check_batch(next(stream)) for _ in range(stop_after)]
    assert (first.epoch, first.batches_in_epoch) == divmod(stop_after, len(ref))
    stream.close()  # preemption: only the state survives
    second = make()
    second.load_state_dict(first.state_dict())
    stream = second.stream()
    while len(got) < len(want):
        got.append(check_batch(next(stream)))
    stream.close()
    assert second.epoch * len(ref) + second.batches_in_epoch == 3 * len(ref)  # the end marker is still ahead
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_shuffled_stream_keeps_its_threads_across_epochs(ds: pathlib.Path) -> None:
    import threading

    loader = shuffled(ds, seed=2)
    stream = loader.stream()
    seen = []
    for _ in range(3 * len(loader) + 1):
        next(stream)
        seen.append({(t.name, t.ident) for t in threading.enumerate()
                     if t.name in ("saev-shuffled-load", "saev-shuffled-gather")})
    stream.close()
    assert loader.epoch == 3 and loader.batches_in_epoch == 1
    assert len(seen[0]) == 2 and all(s == seen[0] for s in seen)  # the same two threads through every epoch
    assert not any(t.name.startswith("saev-shuffled") and t.is_alive() for t in threading.enumerate()
                   if t.name in ("saev-shuffled-load", "saev-shuffled-gather"))


@pytest.mark.slow
def test_closing_a_stream_while_a_group_loads_stops_its_threads(ds: pathlib.Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The gatherer waits for the next group while it loads; closing then used to leave it blocked (alive) after a
    5 s join timeout."""
    import threading
    import time

    original = ShuffledDataLoader._load_group

    def slow_after_first(self, pool, epoch, gi, g, *rest):  # noqa: ANN001, ANN002, ANN202
        if (epoch, gi) != (0, 0):
            time.sleep(3.0)
        return original(self, pool, epoch, gi, g, *rest)

    monkeypatch.setattr(ShuffledDataLoader, "_load_group", slow_after_first)
    loader = shuffled(ds, seed=6, batch_size=32)
    first_group = loader._groups(0)[0]
    assert first_group.n_rows >= 32  # at least one whole batch inside it
    stream = loader.stream()
    for _ in range(first_group.n_rows // 32):  # every batch inside the first group: the gatherer now waits
        next(stream)
    time.sleep(0.2)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "saev-shuffled-gather" and t.is_alive()]


def test_shuffled_refuses_state_from_other_settings(ds: pathlib.Path) -> None:
    state = shuffled(ds, seed=3).state_dict()
    with pytest.raises(errors.ConfigError, match="seed: saved 3, now 4"):
        shuffled(ds, seed=4).load_state_dict(state)


def test_shuffled_mixes_across_the_dataset(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path, n_examples=240, layers=(0,), n_patches=8, d_model=8, labels=False)
    # groups hold a quarter of the dataset (8 selected patch rows per example); blocks are 2 examples
    loader = ShuffledDataLoader(path, ShuffledConfig(batch_size=64, buffer_mb=240 * 8 * 8 * 4 * 3 / 4 / 2**20,
                                                     read_mb=2 * 9 * 8 * 4 / 2**20))
    assert loader.block_examples == 2 and loader.blocks_per_group == 30
    ids = np.concatenate([b["example_idx"].numpy() for b in loader])
    pos = np.arange(len(ids))
    rho = np.corrcoef(np.argsort(np.argsort(ids)), pos)[0, 1]  # a sequential reader has rho = 1
    assert abs(rho) < 0.15
    batches = ids[: len(ids) // 64 * 64].reshape(-1, 64)
    distinct = np.array([len(np.unique(b)) for b in batches])
    assert distinct.mean() > 40  # 64 rows from ~50 different images, not 8 rows of each of 8 images
    shards_hit = np.array([len(np.unique(b // 12)) for b in batches])
    assert shards_hit.mean() > 10  # 20 shards of 12 examples; a batch spans most of them
    # batch means of the example id scatter like random draws, not like blocks
    expected_sd = ids.std() / np.sqrt(64)
    assert batches.mean(axis=1).std() < 3 * expected_sd


def test_indexed_matches_ordered(ds: pathlib.Path) -> None:
    sel = ShardSelection(layers=(3, 7), tokens="no-registers")
    d = IndexedDataset(ds, sel)
    exp = expected_rows(sel)
    assert len(d) == len(exp)
    for i in [0, 1, 17, 18, 500, len(d) - 1, -1]:
        item = d[i]
        assert (item["example_idx"], item["layer"], item["token_idx"]) == tuple(exp[i])
        assert item["act"][:3].tolist() == list(map(float, exp[i]))
    idx = np.random.default_rng(0).integers(0, len(d), 300)
    np.testing.assert_array_equal(check_batch(d.get_batch(idx)), exp[idx])
    with pytest.raises(IndexError):
        d[len(d)]
    ex = d.example("img/00031.jpg")
    assert ex["example_idx"] == 31 and ex["label"] == 1 and ex["act"].shape == (2, 17, 32)
    assert torch.all(ex["act"][:, :, 0] == 31)
    with pytest.raises(errors.NotFoundError, match="not in the index"):
        d.example("img/none.jpg")


def test_reduced_precision_loaders_return_float32(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path, n_examples=20, dtype="bfloat16")
    b = next(iter(OrderedDataLoader(path, OrderedConfig(batch_size=64))))
    assert b["act"].dtype == torch.float32
    ids = torch.stack([b["example_idx"], b["layer"], b["token_idx"]], 1).float()
    assert torch.allclose(b["act"][:, :3], ids, rtol=1e-2)
    rows = []
    for b in shuffled(path, batch_size=33):  # staged read + numpy scatter (float32 on disk: native iovecs)
        assert b["act"].dtype == torch.float32
        ids = torch.stack([b["example_idx"], b["layer"], b["token_idx"]], 1)
        assert torch.allclose(b["act"][:, :3], ids.float(), rtol=1e-2)
        rows.append(ids.numpy())
    got = np.concatenate(rows)
    assert len(np.unique(got, axis=0)) == len(got) == 20 * 16
    d = IndexedDataset(path, ShardSelection(layers=(3, 7), tokens="all"))
    picks = [0, 5, len(d) - 1, 5, 40]
    b = d.get_batch(picks)
    assert b["act"].dtype == torch.float32
    ids = torch.stack([b["example_idx"], b["layer"], b["token_idx"]], 1).float()
    assert torch.allclose(b["act"][:, :3], ids, rtol=1e-2)
    assert torch.equal(b["act"][1], b["act"][3])  # a repeated index, the same row twice
    assert torch.equal(b["act"][2], d[len(d) - 1]["act"])


@pytest.mark.parametrize("how", ["shuffled", "indexed"])
def test_a_shard_truncated_after_opening_is_named_before_any_row_is_gathered(tmp_path: pathlib.Path,
                                                                             how: str) -> None:
    path = write_dataset(tmp_path, n_examples=50)
    loader = shuffled(path)
    d = IndexedDataset(path, ShardSelection(tokens="all"))
    d.get_batch([0, 1])  # the map exists before the file shrinks
    os.truncate(path / "acts000003.bin", 10)  # the file shrinks after the reader validated it
    with pytest.raises(errors.DataError, match=r"acts000003.bin: 10 bytes, expected at least \d+ .*truncated"):
        if how == "shuffled":
            next(iter(loader))
        else:  # rows of another shard: the check covers every shard, so no gather can fault on a lost page
            d.get_batch([len(d) - 1])


@pytest.mark.parametrize("where", ["reader", "cutter"])
def test_loader_thread_failure_reaches_the_consumer(ds: pathlib.Path, where: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader thread warming the second group, or a cutter thread gathering a batch, fails mid-epoch: the consumer
    gets its traceback as a WorkerError after the batches before it, never a short epoch."""
    from saev_ops.loaders.rowmap import RowMap

    loader = shuffled(ds, batch_size=32, n_threads=1)
    assert len(loader._groups(0)) > 1
    calls = {"n": 0}
    if where == "reader":
        original_load = ShuffledDataLoader._load_group

        def failing_load(self, pool, epoch, gi, *rest):  # noqa: ANN001, ANN002, ANN202
            if gi == 1:
                raise OSError(5, "Input/output error (injected)")
            return original_load(self, pool, epoch, gi, *rest)

        monkeypatch.setattr(ShuffledDataLoader, "_load_group", failing_load)
    else:
        original_take = RowMap.take

        def failing_take(self, *args):  # noqa: ANN001, ANN002, ANN202
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(5, "Input/output error (injected)")
            return original_take(self, *args)

        monkeypatch.setattr(RowMap, "take", failing_take)
    got = 0
    with pytest.raises(WorkerError, match=rf"(?s)shuffled loader \({where} thread\) crashed.*injected"):
        for _ in loader:
            got += 1
    assert 0 < got < len(loader) and loader.batches_in_epoch == got


@pytest.mark.parametrize("n_threads", [1, 3])
def test_shuffled_batches_follow_the_plan_in_order(ds: pathlib.Path, n_threads: int) -> None:
    """Batches cut by several threads reach the consumer in the plan's order: the epoch's rows are each group's rows in
    its permuted order, groups in turn, whatever thread cut which batch (what resume and reproducibility rest on)."""
    sel = ShardSelection(layers=(7, 3), tokens="no-registers")
    loader = shuffled(ds, sel, batch_size=37, n_threads=n_threads, prefetch_batches=2)
    plan, rpe = loader.plan, loader.plan.rows_per_example
    want = []
    for gi, g in enumerate(loader._groups(0)):
        ex_ids = np.concatenate([np.arange(s, s + c) for s, c in g.blocks])
        perm = loader._group_perm(0, gi, g.n_rows)
        li, ti = np.divmod(perm % rpe, len(plan.token_idx))
        want.append(np.stack([ex_ids[perm // rpe], np.asarray(plan.layer_numbers)[li], plan.token_idx[ti]], 1))
    assert len(want) > 2
    np.testing.assert_array_equal(epoch_rows(loader), np.concatenate(want))


@pytest.mark.parametrize("pattern", ["contiguous", "small-gaps", "long-gaps"])
def test_iovec_read_rows_matches_plain_reads(tmp_path: pathlib.Path, pattern: str) -> None:
    """Rows at ascending file offsets land at arbitrary destinations, across more rows than one call's iovec limit."""
    from saev_ops.loaders import iovec
    from saev_ops.shards import ShardReader

    path = write_dataset(tmp_path, n_examples=24, layers=(0,), n_patches=200, d_model=64,
                         max_tokens_per_shard=24 * 201)  # one shard of 24 examples x 201 tokens
    reader = ShardReader(path)
    row_bytes = 64 * 4
    n_rows_file = 24 * 201
    rng = np.random.default_rng(0)
    rows = {"contiguous": np.arange(100, 100 + 3000),
            "small-gaps": np.sort(rng.choice(n_rows_file, 2500, replace=False)),
            "long-gaps": np.concatenate([np.arange(0, 700), np.arange(n_rows_file - 1500, n_rows_file)])}[pattern]
    if pattern == "long-gaps":  # a stretch longer than GAP_BYTES ends a call
        assert (n_rows_file - 1500 - 700) * row_bytes > iovec.GAP_BYTES
    offsets = rows.astype(np.int64) * row_bytes
    dest_rows = rng.permutation(len(rows))
    out = np.full((len(rows), 64), np.nan, dtype=np.float32)
    iovec.read_rows(reader, 0, offsets, dest_rows.astype(np.int64) * row_bytes, row_bytes, out)
    flat = reader.read(0, 24, 0).reshape(-1, 64)
    np.testing.assert_array_equal(out[dest_rows], flat[rows])


def test_iovec_read_rows_checks_its_arguments_and_short_reads(tmp_path: pathlib.Path) -> None:
    from saev_ops.loaders import iovec
    from saev_ops.shards import ShardReader

    path = write_dataset(tmp_path, n_examples=12, layers=(0,), n_patches=16, d_model=32)
    reader = ShardReader(path)
    out = np.zeros((4, 32), dtype=np.float32)
    offs = np.arange(4, dtype=np.int64) * 128
    with pytest.raises(ValueError, match="outside out"):
        iovec.read_rows(reader, 0, offs, np.array([0, 128, 256, 512], dtype=np.int64), 128, out)
    with pytest.raises(ValueError, match="ascending"):
        iovec.read_rows(reader, 0, offs[::-1].copy(), np.arange(4, dtype=np.int64) * 128, 128, out)
    reader.fd(0)  # opened before the file shrinks, as in a long job on a scratch file system
    os.truncate(reader.paths.shard(0), 200)
    with pytest.raises(errors.DataError, match="short read"):
        iovec.read_rows(reader, 0, offs, np.arange(4, dtype=np.int64) * 128, 128, out)


@pytest.mark.parametrize("native", [True, False])
def test_every_loader_gives_the_same_rows(ds: pathlib.Path, native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ordered batches and indexed rows (single and batched, duplicates included), with libc's preadv and with the
    numpy fallback, and shuffled epochs (gathered from the files' maps) give the same rows."""
    from saev_ops.loaders import iovec

    if not native:
        monkeypatch.setattr(iovec, "AVAILABLE", False)
    sel = ShardSelection(tokens="patches", layers=(7,))
    want = expected_rows(sel)
    got = np.concatenate([check_batch(b) for b in OrderedDataLoader(ds, OrderedConfig(selection=sel, batch_size=50,
                                                                                        chunk_mb=0.01))])
    np.testing.assert_array_equal(got, want)
    idx = IndexedDataset(ds, sel)
    picks = [5, 0, len(want) - 1, 5, 17]
    np.testing.assert_array_equal(check_batch(idx.get_batch(picks)), want[picks])
    np.testing.assert_array_equal(idx[17]["act"][:3].long().numpy(), want[17])
    np.testing.assert_array_equal(np.sort(epoch_rows(shuffled(ds, sel)), axis=0), np.sort(want, axis=0))


def test_indexed_batches_survive_being_kept(ds: pathlib.Path) -> None:
    idx = IndexedDataset(ds, ShardSelection(tokens="all", layers=(3, 7)))
    kept = [idx.get_batch(list(range(i, i + 40))) for i in range(0, 400, 40)]
    rows = [idx[i] for i in range(0, 400, 7)]
    copies = [b["act"].clone() for b in kept]
    for _ in range(3):  # more reads after the kept ones
        idx.get_batch(list(range(0, 400, 3)))
    assert all(torch.equal(b["act"], c) for b, c in zip(kept, copies, strict=True))
    np.testing.assert_array_equal(np.concatenate([check_batch(b) for b in kept]),
                                  expected_rows(ShardSelection(tokens="all", layers=(3, 7)))[:400])
    assert all(int(r["act"][0]) == r["example_idx"] for r in rows)


@pytest.mark.parametrize("workers", [0, 2])
def test_indexed_works_with_a_default_dataloader(ds: pathlib.Path, workers: int) -> None:
    """torch's default DataLoader calls ``__getitems__`` with a batch of indices and hands the result to the default
    collate, which wants a list of samples (a dict made it raise KeyError: 0)."""
    sel = ShardSelection(layers=(3, 7), tokens="no-registers")
    d = IndexedDataset(ds, sel)
    exp = expected_rows(sel)
    loader = torch.utils.data.DataLoader(d, batch_size=64, num_workers=workers)
    got = [check_batch(b) for b in loader]
    assert all(len(g) == 64 for g in got[:-1])
    np.testing.assert_array_equal(np.concatenate(got), exp)
    shuffled_loader = torch.utils.data.DataLoader(d, batch_size=50, shuffle=True,
                                                  generator=torch.Generator().manual_seed(0))
    rows = np.concatenate([check_batch(b) for b in shuffled_loader])
    np.testing.assert_array_equal(np.sort(rows.view("i8,i8,i8"), axis=0), np.sort(exp.view("i8,i8,i8"), axis=0))


def test_training_and_the_loader_library_share_the_buffer_default() -> None:
    from saev_ops.runconfig import TrainSettings

    assert TrainSettings().buffer_mb == ShuffledConfig().buffer_mb
