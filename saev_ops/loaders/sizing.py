"""How the Shuffled loader cuts a dataset into blocks and groups, and the memory its groups in flight need.

Pure arithmetic on the dataset's shape and the loader's settings (no torch, no files read), so that a sweep can check a
Slurm job's memory before it submits anything, with the same numbers the loader uses when the job runs.
"""

from __future__ import annotations

import dataclasses
import math

from saev_ops.host import Room
from saev_ops.loaders.rowmap import CHUNK_BYTES

PREFETCH_BATCHES = 4
"""The Shuffled loader's default batches ready ahead of the consumer."""
READ_MB = 1.0
"""The Shuffled loader's default smallest contiguous read, in MiB."""
MAX_THREADS = 8
"""The loaders' default threads: the CPUs the process may use, at most this many."""

ROOM_SHARE = 0.75
"""The share of the page cache a process can count on that the groups in flight and the loader's buffers may take
before the loader warns that they do not fit (the rest: the model, the kernel's own slack). The kernel evicts newly
warmed groups first (they sit on its inactive list), so they need a margin: a 3.0 GB room ran at 0.33-0.48M
patches/s with 2.25 GB needed, at 67-116K with 3.05 GB (docs/performance.md)."""


def default_threads(cpus: int) -> int:
    """The loaders' default reader (and cutter) threads for a process that may use ``cpus`` CPUs."""
    return min(MAX_THREADS, cpus)


@dataclasses.dataclass(frozen=True)
class Sizing:
    block_examples: int
    """Examples per block (one contiguous read of at least ``read_mb``)."""
    blocks_per_group: int
    group_examples: int
    """Examples a group's budget holds (a group is ``blocks_per_group`` whole blocks of them)."""
    batch_buffers: int
    """Pooled batch buffers: in the queue, being cut, spare."""
    data_bytes: int
    """Bytes on disk of the selected rows."""
    three_groups_bytes: int
    """Bytes on disk of three whole groups: one being cut, one waiting, one being warmed."""
    groups_bytes: int
    """The page cache the groups in flight take: three groups, or the whole selection if smaller."""
    own_bytes: int
    """The loader's own buffers: batches and warming chunks."""

    def fit_problem(self, buffer_mb: float, room: Room) -> tuple[str, str] | None:
        """None when the groups in flight and the loader's buffers fit in ``ROOM_SHARE`` of ``room``; else (what
        happens, a ``buffer_mb`` that fits)."""
        needed = self.groups_bytes + self.own_bytes
        if needed <= ROOM_SHARE * room.bytes:
            return None
        fit_mb = (ROOM_SHARE * room.bytes - self.own_bytes) / self.three_groups_bytes * buffer_mb
        fix = (f"buffer_mb={_floor_digits(fit_mb)} or less fits" if fit_mb > 0 else
               f"no buffer_mb fits: the loader's own buffers alone take {self.own_bytes / 1e9:.2f} GB")
        what = (f"buffer_mb={buffer_mb:g} needs {needed / 1e9:.2f} GB of page cache, more than "
                f"{100 * ROOM_SHARE:.0f}% of the {room.bytes / 1e9:.2f} GB this process can count on ({room.source}): "
                "warmed groups are evicted before their batches are cut (the same batches, several times slower)")
        return what, fix

    def fit_warning(self, buffer_mb: float, room: Room) -> str | None:
        """:meth:`fit_problem` as two lines: what happens, and the value that fits."""
        problem = self.fit_problem(buffer_mb, room)
        return None if problem is None else f"{problem[0]}\n  {problem[1]}"


def _floor_digits(x: float, digits: int = 4) -> str:
    """``x`` (> 0) rounded down to ``digits`` significant digits, so a size that fits is never printed larger."""
    scale = 10 ** (digits - 1 - math.floor(math.log10(x)))
    return f"{math.floor(x * scale) / scale:.10g}"


def sizing(*, n_examples: int, rows_per_example: int, d_model: int, row_bytes: int, read_bytes: int,
           buffer_mb: float, read_mb: float, batch_size: int, n_threads: int,
           prefetch_batches: int = PREFETCH_BATCHES) -> Sizing:
    """Blocks, groups and memory for ``n_examples`` examples of ``rows_per_example`` selected rows (``row_bytes`` each
    on disk), ``read_bytes`` of each example read (its selected layers whole). Groups are sized as the float32 rows
    they yield (what the group buffers of earlier versions held), so the plan, and with it the batches and the
    resume state, stay what they were."""
    example_f32 = rows_per_example * d_model * 4
    block_examples = max(1, -(-int(read_mb * 2**20) // read_bytes))
    group_examples = max(block_examples, (int(buffer_mb * 2**20) // 3) // example_f32)
    blocks_per_group = max(1, group_examples // block_examples)
    three_groups = 3 * blocks_per_group * block_examples * read_bytes
    batch_buffers = prefetch_batches + 2 * n_threads + 2
    data_bytes = n_examples * rows_per_example * row_bytes
    return Sizing(
        block_examples=block_examples, blocks_per_group=blocks_per_group, group_examples=group_examples,
        batch_buffers=batch_buffers, data_bytes=data_bytes, three_groups_bytes=three_groups,
        groups_bytes=min(data_bytes, three_groups),
        own_bytes=batch_buffers * batch_size * d_model * 4 + 2 * (n_threads + 1) * CHUNK_BYTES,
    )
