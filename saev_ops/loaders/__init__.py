"""Torch-facing activation loaders over one shared block reader (usable outside saev-ops).

- :class:`ShuffledDataLoader` -- training: each selected row once per epoch, mixed across shards, resumable.
- :class:`OrderedDataLoader` -- inference: exact order, large sequential reads, start/stop ranges.
- :class:`IndexedDataset` -- random access by global row, example id or image path.

The names below are imported on first use, so that the torch-free modules of this package (``sizing``, ``rowmap``)
can be imported without torch (a sweep's submission checks a job's memory with them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saev_ops.loaders.indexed import IndexedDataset as IndexedDataset
    from saev_ops.loaders.ordered import OrderedConfig as OrderedConfig
    from saev_ops.loaders.ordered import OrderedDataLoader as OrderedDataLoader
    from saev_ops.loaders.selection import Batch as Batch
    from saev_ops.loaders.selection import ShardSelection as ShardSelection
    from saev_ops.loaders.shuffled import ShuffledConfig as ShuffledConfig
    from saev_ops.loaders.shuffled import ShuffledDataLoader as ShuffledDataLoader

_WHERE = {
    "IndexedDataset": "indexed",
    "OrderedConfig": "ordered",
    "OrderedDataLoader": "ordered",
    "Batch": "selection",
    "ShardSelection": "selection",
    "ShuffledConfig": "shuffled",
    "ShuffledDataLoader": "shuffled",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
