"""Writes that others may observe happen whole or not at all: one file helper and one directory helper.

- :func:`atomic_file`: the caller writes a temporary file beside the target (same directory, so the rename is atomic;
  same suffix, so writers that pick a format by suffix, like numpy and matplotlib, still do); on success it is fsynced,
  renamed over the target and the directory is fsynced; on failure it is removed.
- :func:`replace_dir`: a finished temporary directory takes the place of the target. An existing target is first moved
  to ``<name>.old`` and removed after; :func:`existing_dir` gives readers the surviving copy if a crash fell between the
  two renames. Files are fsynced before the rename.

Shard files, written incrementally over a long recording, keep their own pre-sized ``.tmp`` scheme in
:mod:`saev_ops.shards.writer`; everything else goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
from collections.abc import Iterator
from typing import Any


def fsync_dir(path: pathlib.Path) -> None:
    """Make a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: pathlib.Path) -> pathlib.Path:
    """``name.tmp.suffix`` beside ``path`` (suffix kept for writers that choose a format by it)."""
    return path.with_name(f"{path.stem}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
    """``with atomic_file(p) as tmp: write(tmp)``: ``p`` then holds all of it, or (on error) is untouched."""
    target = pathlib.Path(path)
    tmp = temp_path(target)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent))


def _fsync_tree(root: pathlib.Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            _fsync_file(pathlib.Path(dirpath) / name)
        fsync_dir(pathlib.Path(dirpath))


def old_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".old")


def replace_dir(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Put the finished directory ``tmp`` in place of ``target`` (whose old contents are then removed)."""
    tmp, target = pathlib.Path(tmp), pathlib.Path(target)
    _fsync_tree(tmp)
    old = old_path(target)
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def existing_dir(target: str | os.PathLike[str]) -> pathlib.Path | None:
    """``target``, or its ``.old`` copy when a crash fell between :func:`replace_dir`'s two renames; None if neither."""
    target = pathlib.Path(target)
    if target.exists():
        return target
    old = old_path(target)
    return old if old.exists() else None


def fresh_dir(path: str | os.PathLike[str]) -> pathlib.Path:
    """An empty directory at ``path`` (a leftover of an interrupted attempt is removed first)."""
    path = pathlib.Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
