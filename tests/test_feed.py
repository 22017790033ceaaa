"""Batches to the device: pinned batch buffers (CUDA only, refused clearly elsewhere) and DeviceFeed's copies.

The CUDA tests run where a GPU is (benchmarks/device_check.sh runs them on a GPU host); CI has none.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import numpy as np
import pytest
import torch

from saev_ops import errors
from saev_ops.loaders import OrderedConfig, OrderedDataLoader, ShardSelection, ShuffledConfig, ShuffledDataLoader
from saev_ops.loaders.feed import IN_FLIGHT, DeviceFeed
from tests.shard_helpers import write_dataset

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")


def test_cpu_feed_hands_the_batch_on_as_it_is(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path, n_examples=20)
    feed = DeviceFeed("cpu")
    assert not feed.pin_memory
    loader = ShuffledDataLoader(path, ShuffledConfig(batch_size=64, pin_memory=feed.pin_memory))
    for batch in loader:
        x = feed(batch)
        assert x.data_ptr() == batch["act"].data_ptr()  # no copy on the CPU
    assert feed.in_flight() == 0
    feed.close()


@pytest.mark.parametrize("make", [
    lambda p: ShuffledDataLoader(p, ShuffledConfig(pin_memory=True)),
    lambda p: OrderedDataLoader(p, OrderedConfig(pin_memory=True)),
], ids=["shuffled", "ordered"])
def test_pinning_without_cuda_is_refused_up_front(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                                  make: Callable[[pathlib.Path], object]) -> None:
    path = write_dataset(tmp_path, n_examples=10)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(errors.ConfigError, match=r"(Shuffled|Ordered)Config: pin_memory needs CUDA"):
        make(path)


@cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pinned_batches_reach_the_gpu_intact(tmp_path: pathlib.Path, dtype: str) -> None:
    # many more batches than the loader pools buffers: a buffer refilled under a copy still in flight would show here
    path = write_dataset(tmp_path, n_examples=200, n_patches=64, d_model=64, dtype=dtype, layers=(4,))
    sel = ShardSelection(layers=(4,), tokens="all")
    want = [b["act"].clone() for b in ShuffledDataLoader(path, ShuffledConfig(selection=sel, batch_size=256))]
    feed = DeviceFeed("cuda")
    loader = ShuffledDataLoader(path, ShuffledConfig(selection=sel, batch_size=256, pin_memory=feed.pin_memory))
    got = []
    for batch in loader:
        assert batch["act"].is_pinned()
        x = feed(batch)
        assert feed.in_flight() <= IN_FLIGHT
        got.append(x.sum(dim=1))  # used on the compute stream, as a step would
    feed.close()
    assert len(got) == len(want) > 3 * (loader.cfg.prefetch_batches + 2 * loader.cfg.n_threads + 2)
    torch.cuda.synchronize()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.cpu().numpy(), w.sum(dim=1).numpy(), rtol=1e-5)


@cuda
def test_ordered_pinned_batches_reach_the_gpu_intact(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path, n_examples=120, n_patches=64, d_model=64, layers=(4,))
    cfg = dict(selection=ShardSelection(layers=(4,), tokens="all"), batch_size=200, chunk_mb=0.1)
    want = [b["act"].clone() for b in OrderedDataLoader(path, OrderedConfig(**cfg))]
    feed = DeviceFeed("cuda")
    with torch.inference_mode():  # as inference feeds it
        got = [feed(b).clone() for b in OrderedDataLoader(path, OrderedConfig(**cfg, pin_memory=True))]
    feed.close()
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g.cpu(), w)
