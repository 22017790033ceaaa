"""How fast the kernel copies page-cache data into buffers that start at different offsets from a page.

    python benchmarks/read_alignment.py                 # a 1 GiB file in a temporary directory
    python benchmarks/read_alignment.py --file F --mib 1

Reads the file (cached first) in ``--mib`` MiB ``preadv`` calls into one reused buffer whose first byte lies 0, 8,
16, 32, 64, 80 and 2048 bytes past a page boundary, plus a ``bytearray`` and plain ``np.empty`` arrays (numpy's
large allocations sit 16 bytes past a page), and into consecutive places of a 1 GiB page-aligned buffer (a
destination in DRAM, as a loader's batches are). Prints GB/s and the ratio to the page-aligned buffer of the same
run, best of ``--repeats``. It is why every buffer a read lands in comes from :func:`saev_ops.shards.aligned.empty`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def _offset_buffer(nbytes: int, offset: int) -> np.ndarray:
    from saev_ops.shards import aligned

    return aligned.empty(nbytes + 4096, np.uint8)[offset : offset + nbytes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", type=pathlib.Path, help="read this file (default: write a 1 GiB one)")
    ap.add_argument("--mib", type=float, default=1.0, help="MiB per read")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = None
    path = args.file
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="saev-align-")
        path = pathlib.Path(tmp.name) / "data.bin"
        rng = np.random.default_rng(0)
        with open(path, "wb") as fh:
            for _ in range(64):
                fh.write(rng.random(1 << 22, dtype=np.float32).tobytes())
    chunk = int(args.mib * 2**20)
    size = os.path.getsize(path) // chunk * chunk
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in range(0, size, 64 << 20):  # into the page cache
            os.pread(fd, 64 << 20, off)
        dests: dict[str, object] = {f"buffer {k:4d} B past a page": _offset_buffer(chunk, k)
                                    for k in (0, 8, 16, 32, 64, 80, 2048)}
        dests["bytearray"] = bytearray(chunk)
        dests["np.empty"] = np.empty(chunk, np.uint8)
        dests["np.empty of 256 MiB (a loader's size)"] = np.empty(256 << 20, np.uint8)[:chunk]
        big = _offset_buffer(min(size, 1 << 30), 0)
        big[:] = 1
        for buf in dests.values():
            memoryview(buf).cast("B")[:] = b"\x01" * chunk  # type: ignore[arg-type]  # every target is a buffer

        def read_into(name: str) -> float:
            best = 0.0
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                if name == "DRAM":
                    for off in range(0, size, chunk):
                        b = off % big.nbytes
                        os.preadv(fd, [big[b : b + chunk]], off)
                else:
                    view = memoryview(dests[name])  # type: ignore[arg-type]  # every target is a buffer
                    for off in range(0, size, chunk):
                        os.preadv(fd, [view], off)
                best = max(best, size / (time.perf_counter() - t0) / 1e9)
            return best

        rates = {name: read_into(name) for name in [*dests, "DRAM"]}
        base = rates["buffer    0 B past a page"]
        address = {name: np.frombuffer(buf, np.uint8).ctypes.data % 4096  # type: ignore[call-overload]
                   for name, buf in dests.items()}
        print(f"{size / 2**30:.2f} GiB in {args.mib:g} MiB preadv calls, best of {args.repeats}")
        for name, r in rates.items():
            where = "consecutive places of a 1 GiB aligned buffer" if name == "DRAM" else (
                f"{name} (address % 4096 = {address[name]})")
            print(f"  {where:58} {r:6.2f} GB/s  {r / base:5.2f}x")
    finally:
        os.close(fd)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
