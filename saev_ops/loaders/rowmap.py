"""Every shard file of a dataset in one read-only memory map, so a shuffled batch is one gather from the page cache.

The shards are mapped side by side into one reserved stretch of address space, each at the start of an equal *slot*
(its size a multiple of both the page and the row size), so the whole dataset is one ``(n_shards * slot_rows,
d_model)`` array in the disk dtype: row ``shard * slot_rows + offset // row_bytes`` holds the row at byte ``offset``
of ``shard``. A batch of rows from anywhere in the dataset is then one ``np.take`` (a copy of each row, sequential
writes, the GIL released) in the batch's own order, with no buffer between the file and the batch.

A map only serves pages the page cache holds; a page it lacks is read on the fault, 4 KiB (plus the kernel's
read-around) at a time. So before rows are gathered their pages are *warmed*: :meth:`RowMap.warm` asks the kernel
which pages of a byte range are resident (``mincore``) and reads each chunk that is not with one large ``pread``
into a scratch buffer, which puts it in the page cache at the speed of a plain sequential read. With the data
already cached (a second epoch) that costs one ``mincore`` call per chunk and no read.

Only Linux and macOS are supported (``mmap`` with ``MAP_FIXED`` and ``mincore`` through ctypes). A shard file
truncated in place while it is mapped makes a gather of its lost rows fail with SIGBUS, which ends the process;
:meth:`RowMap.check_sizes` (run before each group) and the warming reads (a short read raises ``DataError``) catch a
truncation before rows are gathered, so only one that lands in the moment between them and the gather can. Deleting
or replacing a file is safe: the map keeps the old file's pages.
"""

from __future__ import annotations

import ctypes
import logging
import math
import mmap
import os
import weakref

import numpy as np

from saev_ops import errors
from saev_ops.shards.reader import ShardReader

log = logging.getLogger(__name__)
PAGE = mmap.PAGESIZE
CHUNK_BYTES = 16 << 20
"""Warming granularity: a chunk with any page missing from the page cache is read whole, in one ``pread`` (warming a
2 GiB group from disk here: 1 MiB chunks 1.0-1.4 GB/s, 4 MiB 1.2-1.5, 16 MiB 1.4-1.8, 32-64 MiB no faster)."""
SLOT_ALIGN = 2 << 20
"""Each shard is mapped at a multiple of 2 MiB, so the kernel can map the page cache's large folios whole (one TLB
entry for 2 MiB: ``FilePmdMapped`` in ``/proc/PID/smaps``) where the file system keeps them."""
_MAP_FIXED = 0x10  # the same value on Linux and macOS; Python's mmap module does not export it
_PROT_NONE = 0
_MADV_HUGEPAGE = 14  # Linux; elsewhere madvise refuses it, which only costs speed
_MADV_DONTNEED = 4  # Linux and macOS
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64)
    libc.mmap.restype = ctypes.c_void_p
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.munmap.restype = ctypes.c_int
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.madvise.restype = ctypes.c_int
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    libc.mincore.restype = ctypes.c_int
    return libc


_LIBC = _libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


def _unmap(address: int, length: int) -> None:
    _LIBC.munmap(address, length)


class RowMap:
    """The shards of ``reader`` mapped as one array of rows (see the module's docstring).

    The mapping lives as long as :attr:`rows` or any view of it: it is unmapped when the last is collected, so a
    thread still gathering never finds it gone. Nothing handed to a consumer should be a view of it (the loaders copy
    rows out with :meth:`take`).
    """

    def __init__(self, reader: ShardReader) -> None:
        md = reader.md
        self.reader = reader
        self.row_bytes = reader.row_bytes
        self.sizes = [md.shard_n_examples(i) * reader.example_bytes for i in range(md.n_shards)]
        unit = math.lcm(SLOT_ALIGN, self.row_bytes)
        self.slot_bytes = max(unit, max(-(-s // unit) * unit for s in self.sizes))
        self.slot_rows = self.slot_bytes // self.row_bytes
        total = self.slot_bytes * md.n_shards
        reserved = _LIBC.mmap(None, total + SLOT_ALIGN, _PROT_NONE,
                              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
        if reserved in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise OSError(err, f"cannot reserve {total} bytes of address space for {reader.root}: {os.strerror(err)}")
        base = -(-reserved // SLOT_ALIGN) * SLOT_ALIGN
        owner = (ctypes.c_uint8 * total).from_address(base)
        # every view of ``rows`` keeps ``owner``, so the map, alive
        weakref.finalize(owner, _unmap, reserved, total + SLOT_ALIGN)
        self.check_sizes()
        for i, size in enumerate(self.sizes):
            if size and _LIBC.mmap(base + i * self.slot_bytes, size, mmap.PROT_READ, mmap.MAP_SHARED | _MAP_FIXED,
                                   reader.fd(i), 0) in (None, _MAP_FAILED):
                err = ctypes.get_errno()
                raise OSError(err, f"{reader.paths.shard(i)}: cannot map it: {os.strerror(err)}")
        # pages faulted in (evicted after warming) then come in 2 MiB reads, not the 128 KiB read-around; a hint only
        if _LIBC.madvise(base, total, _MADV_HUGEPAGE) != 0:
            log.debug("madvise(MADV_HUGEPAGE) of the maps of %s refused (errno %d): faults read 128 KiB at a time",
                      reader.root, ctypes.get_errno())
        self._base = base
        self.rows = np.frombuffer(memoryview(owner), dtype=reader.disk_dtype).reshape(-1, md.d_model)
        self.rows.flags.writeable = False

    def check_sizes(self) -> None:
        """Raise ``DataError`` if a shard file is now shorter than its examples (truncated after it was opened)."""
        for i, size in enumerate(self.sizes):
            have = os.fstat(self.reader.fd(i)).st_size
            if have < size:
                raise errors.DataError(f"{self.reader.paths.shard(i)}: {have} bytes, expected at least {size} for "
                                       f"its {self.reader.md.shard_n_examples(i)} examples (file truncated after "
                                       "it was opened?)")

    def global_rows(self, shard: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Row ids in :attr:`rows` of the rows at ``offsets`` of ``shard`` (as from ``ShardReader.row_offsets``)."""
        return shard * self.slot_rows + offsets // self.row_bytes

    def take(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy rows ``rows`` (ids from :meth:`global_rows`) into ``out`` ((len(rows), d_model), disk dtype, C order),
        in that order. The GIL is released for the copy."""
        # "clip", not "raise": with "raise" numpy gathers into a temporary and copies again; the ids come from
        # ShardReader.row_offsets, inside the files
        return np.take(self.rows, rows, axis=0, out=out, mode="clip")

    def resident(self, shard: int, start: int, nbytes: int) -> bool:
        """Whether every page of bytes ``[start, start + nbytes)`` of ``shard`` is in the page cache (``mincore``; on
        a file the caller cannot write, Linux reports only the pages this process has mapped, so cached pages may be
        read again: slower, never wrong)."""
        address = self._base + shard * self.slot_bytes + start
        first = address - address % PAGE
        length = address + nbytes - first
        vec = np.empty(-(-length // PAGE), dtype=np.uint8)
        if _LIBC.mincore(first, length, vec.ctypes.data) != 0:
            return False
        return bool(np.all(vec & 1))

    def release(self, ranges: np.ndarray, drop: bool) -> None:
        """Let the byte ranges ``ranges`` ((n, 3): shard, start, length) go, once nothing will gather from them soon:
        this map's entries for their whole pages are removed (``madvise(MADV_DONTNEED)``: the pages stay in the page
        cache, but the kernel can reclaim them without unmapping them from this process first), and with ``drop`` the
        pages leave the page cache too (``posix_fadvise(DONTNEED)``), so a dataset larger than memory evicts what was
        used rather than what was just warmed. A later gather from the ranges still reads the right bytes (faulted back
        in). Pages shared with a neighbouring range are kept."""
        for shard, start, length in ranges.tolist():
            lo = -(-start // PAGE) * PAGE
            hi = (start + length) // PAGE * PAGE
            if hi <= lo:
                continue
            if _LIBC.madvise(self._base + shard * self.slot_bytes + lo, hi - lo, _MADV_DONTNEED) != 0:
                log.debug("madvise(MADV_DONTNEED) of %s refused (errno %d)", self.reader.paths.shard(shard),
                          ctypes.get_errno())
            if drop and hasattr(os, "posix_fadvise"):  # not on macOS: there the kernel's own LRU decides
                os.posix_fadvise(self.reader.fd(shard), lo, hi - lo, os.POSIX_FADV_DONTNEED)

    def warm(self, ranges: np.ndarray, scratch: np.ndarray) -> int:
        """Put the byte ranges ``ranges`` ((n, 3): shard, start, length) in the page cache: each :data:`CHUNK_BYTES`
        chunk not wholly resident is read with ``pread`` into ``scratch`` (uint8, at least a chunk). Returns the bytes
        read. A short read (the file shrank) raises ``DataError`` naming the file."""
        view = scratch.data.cast("B")
        done = 0
        for shard, start, length in ranges.tolist():
            for a in range(start, start + length, CHUNK_BYTES):
                n = min(CHUNK_BYTES, start + length - a)
                if not self.resident(shard, a, n):
                    self.reader.pread_into(shard, a, view[:n])
                    done += n
        return done
