"""The write helpers every observable write goes through: whole or nothing, and a survivor between renames."""

from __future__ import annotations

import pathlib

import pytest

from saev_ops import atomic


def test_atomic_file_is_whole_or_untouched(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "stats.npz"
    atomic.write_bytes(target, b"first")
    with pytest.raises(RuntimeError), atomic.atomic_file(target) as tmp:
        assert tmp.name == "stats.tmp.npz"  # the suffix stays, for writers that pick a format by it
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"first" and list(tmp_path.iterdir()) == [target]


def test_replace_dir_and_the_copy_that_survives_a_crash(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "ckpt"
    for version in ("1", "2"):
        tmp = atomic.fresh_dir(tmp_path / "ckpt.tmp")
        (tmp / "state").write_text(version)
        atomic.replace_dir(tmp, target)
    assert (target / "state").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    target.rename(atomic.old_path(target))  # a crash between replace_dir's two renames
    survivor = atomic.existing_dir(target)
    assert survivor is not None and (survivor / "state").read_text() == "2"
    assert atomic.existing_dir(tmp_path / "never") is None
