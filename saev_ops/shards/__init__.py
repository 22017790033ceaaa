"""Activation shards on disk: saev's protocol 2.1 files plus saev-ops' LMDB index, checksums and statistics.

Public names: :class:`ShardWriter`, :class:`ShardReader`, :class:`Metadata`, :class:`TokenLayout`, :func:`verify`.
"""

from saev_ops.shards.format import Metadata as Metadata
from saev_ops.shards.format import ShardPaths as ShardPaths
from saev_ops.shards.format import TokenLayout as TokenLayout
from saev_ops.shards.reader import ShardReader as ShardReader
from saev_ops.shards.writer import ShardWriter as ShardWriter
