"""Torch-facing activation loaders over one shared block reader (usable outside saev-ops).

- :class:`ShuffledDataLoader` -- training: each selected row once per epoch, mixed across shards, resumable.
- :class:`OrderedDataLoader` -- inference: exact order, large sequential reads, start/stop ranges.
- :class:`IndexedDataset` -- random access by global row, example id or image path.
"""

from saev_ops.loaders.indexed import IndexedDataset as IndexedDataset
from saev_ops.loaders.ordered import OrderedConfig as OrderedConfig
from saev_ops.loaders.ordered import OrderedDataLoader as OrderedDataLoader
from saev_ops.loaders.selection import Batch as Batch
from saev_ops.loaders.selection import ShardSelection as ShardSelection
from saev_ops.loaders.shuffled import ShuffledConfig as ShuffledConfig
from saev_ops.loaders.shuffled import ShuffledDataLoader as ShuffledDataLoader
