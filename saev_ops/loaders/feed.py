"""Batches onto the device that trains or applies the SAEs: on CUDA, from pinned buffers, on a copy stream of its own.

From pageable memory a copy to the GPU is staged by the driver through a pinned buffer of its own while the host
waits, and it queues behind the GPU work already issued, so the GPU sits idle while each batch crosses. A loader
built with ``pin_memory=True`` cuts its batches into page-locked buffers allocated once and reused
(:class:`~saev_ops.loaders.blocks.BufferPool`); :class:`DeviceFeed` copies each one on a stream of its own, without
waiting, so the next batch crosses while the current step's kernels run, and makes the compute stream wait for the
copy (an event) before anything there reads it. The host batch is kept until its copy is known to be done: only then
may the loader refill its buffer. On a CPU device the batch's tensor is handed on as it is.
"""

from __future__ import annotations

import collections
from typing import Any

import torch

from saev_ops.loaders.selection import Batch

IN_FLIGHT = 4
"""Host batches kept for copies not yet known to be done; past this the oldest copy is waited for (the host is then
that many batches ahead of the GPU, and the loader's pool would otherwise allocate more buffers)."""


class DeviceFeed:
    """``feed(batch)`` -> the batch's activations on ``device``, ready for the current stream's next kernels."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._stream: Any = torch.cuda.Stream(self.device) if self.cuda else None
        self._in_flight: collections.deque[tuple[Any, Batch]] = collections.deque()

    @property
    def pin_memory(self) -> bool:
        """What the loader feeding this should be built with."""
        return self.cuda

    def __call__(self, batch: Batch) -> torch.Tensor:
        act = batch["act"]
        if not self.cuda:
            return act.to(self.device)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            x = act.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._stream)
        compute.wait_event(copied)
        x.record_stream(compute)  # x was allocated for the copy stream: not reused before compute's use of it is done
        self._in_flight.append((copied, batch))
        while self._in_flight and (len(self._in_flight) > IN_FLIGHT or self._in_flight[0][0].query()):
            self._in_flight.popleft()[0].synchronize()
        return x

    def in_flight(self) -> int:
        """Host batches still held for their copies (for tests and diagnostics)."""
        return len(self._in_flight)

    def close(self) -> None:
        """Wait for the copies still in flight and let their host batches go."""
        while self._in_flight:
            self._in_flight.popleft()[0].synchronize()
