"""The LMDB index beside a dataset: example id -> (shard, row, image path, label), and image path -> example id.

Keys: ``e`` + 8-byte big-endian example id, and ``p`` + UTF-8 image path. Values are compact JSON. The LMDB
environment is opened per process (never pickled) and read-only for readers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import pathlib
import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from saev_ops import errors

_MAP_SIZE = 1 << 36  # 64 GiB of address space; LMDB only uses what it writes
_META_KEY = b"__meta__"


class _SharedEnvs:
    """py-lmdb refuses to open one environment twice in a process, so read-only handles are shared, counted, and
    closed with their last user. This is the one piece of process-wide state in saev-ops, forced by LMDB."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._envs: dict[str, tuple[Any, int]] = {}

    def acquire(self, path: pathlib.Path) -> Any:
        import lmdb

        key = str(path.resolve())
        with self._lock:
            env, n = self._envs.get(key, (None, 0))
            if env is None:
                env = lmdb.open(key, readonly=True, lock=False, subdir=True, readahead=False, max_dbs=0)
            self._envs[key] = (env, n + 1)
            return env

    def release(self, path: pathlib.Path) -> None:
        key = str(path.resolve())
        with self._lock:
            env, n = self._envs.get(key, (None, 0))
            if env is None:
                return
            if n <= 1:
                env.close()
                del self._envs[key]
            else:
                self._envs[key] = (env, n - 1)


_SHARED = _SharedEnvs()


@contextlib.contextmanager
def _damaged_as_data_error(path: pathlib.Path) -> Iterator[None]:
    """py-lmdb's errors (InvalidError, CorruptedError, ...) as one DataError naming the index."""
    import lmdb

    try:
        yield
    except lmdb.Error as exc:
        raise errors.DataError(f"{path}: damaged LMDB index ({type(exc).__name__}: {str(exc).strip()}); rebuild it "
                               "with `saev-ops datasets import` or record the dataset again") from None


def _ekey(example_id: int) -> bytes:
    return b"e" + struct.pack(">Q", example_id)


@dataclasses.dataclass(frozen=True)
class ExampleEntry:
    example_id: int
    shard: int
    row: int
    path: str | None
    label: int | None
    label_name: str | None = None


class IndexWriter:
    def __init__(self, path: pathlib.Path) -> None:
        import lmdb

        self.path = path
        self.env = lmdb.open(str(path), map_size=_MAP_SIZE, subdir=True, lock=True, sync=True, max_dbs=0)

    def put_many(self, entries: Iterable[ExampleEntry]) -> None:
        with self.env.begin(write=True) as txn:
            for e in entries:
                value = json.dumps([e.shard, e.row, e.path, e.label, e.label_name], separators=(",", ":")).encode()
                txn.put(_ekey(e.example_id), value)
                if e.path is not None:
                    txn.put(b"p" + e.path.encode(), struct.pack(">Q", e.example_id))

    def paths(self, n: int) -> list[str | None]:
        """Image paths of examples 0..n-1, read through this writer's own handle (LMDB allows one per process)."""
        out: list[str | None] = []
        with self.env.begin() as txn:
            for i in range(n):
                raw = txn.get(_ekey(i))
                out.append(None if raw is None else json.loads(raw)[2])
        return out

    def put_meta(self, meta: dict[str, Any]) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(_META_KEY, json.dumps(meta).encode())

    def close(self) -> None:
        self.env.sync()
        self.env.close()


class IndexReader:
    def __init__(self, path: pathlib.Path) -> None:
        if not (path / "data.mdb").exists():
            raise errors.DataError(f"{path}: missing LMDB index (expected {path / 'data.mdb'}); "
                                   "rebuild it with `saev-ops datasets import`")
        self.path = path
        with _damaged_as_data_error(path):
            self.env = _SHARED.acquire(path)
        self._closed = False

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]  # unpickling reopens the index

    def get(self, example_id: int) -> ExampleEntry:
        with _damaged_as_data_error(self.path), self.env.begin() as txn:
            raw = txn.get(_ekey(example_id))
        if raw is None:
            raise errors.NotFoundError(f"example {example_id} is not in the index {self.path}")
        shard, row, path, label, label_name = json.loads(raw)
        return ExampleEntry(example_id, shard, row, path, label, label_name)

    def find_path(self, image_path: str) -> int:
        with _damaged_as_data_error(self.path), self.env.begin() as txn:
            raw = txn.get(b"p" + image_path.encode())
        if raw is None:
            raise errors.NotFoundError(f"image {image_path!r} is not in the index {self.path}")
        return struct.unpack(">Q", raw)[0]

    def meta(self) -> dict[str, Any]:
        with _damaged_as_data_error(self.path), self.env.begin() as txn:
            raw = txn.get(_META_KEY)
        return {} if raw is None else json.loads(raw)

    def count(self) -> int:
        """Number of example entries."""
        n = 0
        with _damaged_as_data_error(self.path), self.env.begin() as txn:
            cur = txn.cursor()
            if cur.set_range(b"e"):
                for key in cur.iternext(keys=True, values=False):
                    if not key.startswith(b"e"):
                        break
                    n += 1
        return n

    def digest(self) -> str:
        """blake2b-128 of every entry (key and value, in key order, the meta record included): what the sidecar
        records, so `datasets verify --full` sees an entry edited in place."""

        h = hashlib.blake2b(digest_size=16)
        with _damaged_as_data_error(self.path), self.env.begin() as txn:
            for key, value in txn.cursor():
                h.update(struct.pack(">II", len(key), len(value)))
                h.update(key)
                h.update(value)
        return h.hexdigest()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _SHARED.release(self.path)
