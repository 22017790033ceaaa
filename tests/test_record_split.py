"""A recording split across jobs (``datasets record --jobs N``): the same dataset, byte for byte, as one job; bad
images, failed parts and an interrupted join; the split itself."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
import pytest

from saev_ops import errors
from saev_ops.record import RecordSpec, record_dataset, record_part, record_split
from saev_ops.record.images import generate_images
from saev_ops.registry import DatasetRecord, Registry
from saev_ops.shards.format import ShardPaths
from saev_ops.shards.index import IndexReader
from saev_ops.split import Parts, split_ranges


def test_split_ranges_are_aligned_even_and_cover_everything() -> None:
    assert split_ranges(10, 3, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split_ranges(10, 3, 8) == [(0, 3), (3, 6), (6, 9), (9, 10)]  # no more parts than shards
    assert split_ranges(100, 7, 4) == [(0, 21), (21, 49), (49, 77), (77, 100)]
    assert split_ranges(5, 10, 3) == [(0, 5)]
    for n, unit, jobs in ((1000, 13, 7), (12, 4, 3), (1, 1, 5)):
        r = split_ranges(n, unit, jobs)
        assert r[0][0] == 0 and r[-1][1] == n and all(a % unit == 0 for a, _ in r)
        assert all(b == c for (_, b), (c, _) in zip(r, r[1:], strict=False))
    with pytest.raises(errors.ConfigError, match="--jobs"):
        split_ranges(10, 3, 0)


def dataset_files(d: DatasetRecord) -> dict[str, bytes]:
    """Every file of a dataset directory, but the LMDB index (compared by content: LMDB's pages are its own)."""
    root = pathlib.Path(d.path)
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def index_entries(d: DatasetRecord) -> list[tuple[object, ...]]:
    idx = IndexReader(ShardPaths(pathlib.Path(d.path)).index)
    try:
        return [dataclasses.astuple(idx.get(i)) for i in range(d.n_examples)] + [tuple(idx.meta().items())]
    finally:
        idx.close()


def assert_same_dataset(a: DatasetRecord, b: DatasetRecord) -> None:
    fa, fb = dataset_files(a), dataset_files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], f"{name} differs"
    assert index_entries(a) == index_entries(b)
    assert pathlib.Path(a.path).name == pathlib.Path(b.path).name  # saev's hash directory
    assert (a.n_examples, a.extra["n_bad_images"], a.extra["stats"]) == \
        (b.n_examples, b.extra["n_bad_images"], b.extra["stats"])


def one_job(tmp_path: pathlib.Path, spec: RecordSpec) -> DatasetRecord:
    reg = Registry(f"sqlite:///{tmp_path / 'one.sqlite'}")
    return record_dataset(reg, dataclasses.replace(spec, data_root=str(tmp_path / "one")))


def run_parts(reg: Registry, spec: RecordSpec, n_jobs: int, order: list[int]) -> DatasetRecord | None:
    """The parts in this process, in ``order`` (what jobs finishing in that order do)."""
    out = None
    for task in order:
        out = record_part(reg, spec, task, n_jobs)
        assert (out is None) == (task != order[-1])  # only the last to finish joins
    return out


@pytest.fixture
def images(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "imgs"
    generate_images(root, 11, size=32, n_classes=3)
    return root


def spec_for(images: pathlib.Path, tmp_path: pathlib.Path, **kw: object) -> RecordSpec:
    base: dict[str, object] = {"name": "d", "images": str(images), "model": "builtin:tiny", "layers": (1, 3),
                               "batch_size": 2, "data_root": str(tmp_path / "split"),
                               "max_tokens_per_shard": 17 * 2 * 3}  # 3 examples per shard, 4 shards
    return RecordSpec(**{**base, **kw})  # type: ignore[arg-type]  # test values of the right types


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_parts_in_any_order_make_the_one_job_dataset(tmp_path: pathlib.Path, images: pathlib.Path, dtype: str) -> None:
    spec = spec_for(images, tmp_path, dtype=dtype)
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    d = run_parts(reg, spec, 3, [2, 0, 1])
    assert d is not None and d.status == "complete" and d.n_examples == 11 and d.extra["timings"]["parts"] == 3
    assert not (tmp_path / "split" / "saev" / "shards" / f".partial-{d.extra['provenance']['recording_hash'][:16]}"
                ).exists()
    assert_same_dataset(d, one_job(tmp_path, spec))
    assert record_part(reg, spec, 1, 3).id == d.id  # a part of a finished recording: the dataset, nothing written


def test_bad_images_move_later_examples_up_as_one_job_does(tmp_path: pathlib.Path, images: pathlib.Path) -> None:
    files = sorted(images.rglob("*.png"))
    files[1].write_bytes(b"not an image")  # part 0 ends one example short: everything after it moves up
    files[7].write_bytes(b"not an image either")
    spec = spec_for(images, tmp_path)
    d = run_parts(Registry(f"sqlite:///{tmp_path / 'r.sqlite'}"), spec, 3, [0, 1, 2])
    assert d is not None and d.n_examples == 9 and d.extra["n_bad_images"] == 2
    assert_same_dataset(d, one_job(tmp_path, spec))


def test_a_failed_part_is_the_only_one_recorded_again(tmp_path: pathlib.Path, images: pathlib.Path) -> None:
    files = sorted(images.rglob("*.png"))
    good = files[4].read_bytes()
    files[4].write_bytes(b"broken")  # in part 1 (images 3-5)
    spec = spec_for(images, tmp_path, strict=True)
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    with pytest.raises(errors.JobFailedError, match=r"1 of 3 jobs.*job 1:.*cannot read image"):
        record_split(reg, url, spec, 3)
    d = reg.get_dataset("d")
    assert d.status == "failed" and "part 1 (images 3-5)" in d.extra["error"]
    parts = Parts(ShardPaths(next((tmp_path / "split" / "saev" / "shards").glob(".partial-*"))).parts)
    assert parts.unfinished(3) == [1]
    from click.testing import CliRunner

    from saev_ops.cli import cli

    shown = CliRunner().invoke(cli, ["--db", url, "datasets", "show", "d"])
    assert shown.exit_code == 0 and "2 of 3 done (unfinished: 1)" in shown.output, shown.output
    kept = {i: os.stat(parts.part_dir(i) / "acts000000.bin").st_ino for i in (0, 2)}
    kept_done = {i: parts.done_path(i).stat().st_mtime_ns for i in (0, 2)}
    files[4].write_bytes(good)
    d = record_split(reg, url, spec, 5)  # a rerun keeps the first split, whatever --jobs says now
    assert d.status == "complete" and d.extra["timings"]["parts"] == 3 and "error" not in d.extra
    for i in (0, 2):  # parts 0 and 2 were not recorded again: their shards are the dataset's (hard links)
        assert kept_done[i] > 0
        assert os.stat(pathlib.Path(d.path) / f"acts{i:06d}.bin").st_ino == kept[i]
    assert_same_dataset(d, one_job(tmp_path, spec))


def test_an_interrupted_join_is_done_again_by_the_next_submission(tmp_path: pathlib.Path, images: pathlib.Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from saev_ops.record import recorder

    spec = spec_for(images, tmp_path)
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # the joining job is killed mid-way

    real = recorder._join_parts
    monkeypatch.setattr(recorder, "_join_parts", killed)
    with pytest.raises(KeyboardInterrupt):
        run_parts(reg, spec, 2, [0, 1])
    assert reg.get_dataset("d").status == "writing"
    monkeypatch.setattr(recorder, "_join_parts", real)
    partial = next((tmp_path / "split" / "saev" / "shards").glob(".partial-*"))
    (ShardPaths(partial).parts / "finish.claim").write_text("4242\n")  # a job killed outright leaves its claim
    (partial / "acts000000.bin").write_bytes(b"half a join")  # and what it had joined
    d = record_split(reg, str(reg.url), spec, 2)  # nothing left to record: the submission joins
    assert d.status == "complete"
    assert_same_dataset(d, one_job(tmp_path, spec))


def test_masks_survive_the_split(tmp_path: pathlib.Path) -> None:
    from PIL import Image

    root, masks = tmp_path / "imgs", tmp_path / "masks"
    generate_images(root, 7, size=32, n_classes=2)
    for f in root.rglob("*.png"):
        m = masks / f.relative_to(root)
        m.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(len(str(f))).integers(0, 5, (32, 32), dtype=np.uint8)).save(m)
    spec = spec_for(root, tmp_path, masks=str(masks), layers=(2,), max_tokens_per_shard=17 * 2)
    d = run_parts(Registry(f"sqlite:///{tmp_path / 'r.sqlite'}"), spec, 3, [1, 2, 0])
    assert d is not None and d.extra["n_bad_images"] == 0
    assert_same_dataset(d, one_job(tmp_path, spec))
    assert (pathlib.Path(d.path) / "labels.bin").stat().st_size == 7 * 16


def test_cli_jobs_and_tasks(tmp_path: pathlib.Path, images: pathlib.Path) -> None:
    """`datasets record --jobs N` runs the parts as processes here; `--task I` runs one part in this process, as a
    Slurm array task of a researcher's own batch script does."""
    from click.testing import CliRunner

    from saev_ops.cli import cli

    def saev(url: str, *args: str) -> str:
        res = CliRunner().invoke(cli, ["--db", url, *args])
        assert res.exit_code == 0, res.output
        return res.output

    common = ["datasets", "record", "--name", "d", "--images", str(images), "--model", "builtin:tiny", "--layers",
              "1,3", "--batch-size", "2", "--max-tokens-per-shard", str(17 * 2 * 3)]
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    out = saev(url, *common, "--data-root", str(tmp_path / "a"), "--jobs", "3")
    assert "recorded in 3 part(s)" in out
    url_b = f"sqlite:///{tmp_path / 'b.sqlite'}"
    assert "part 1 of d done" in saev(url_b, *common, "--data-root", str(tmp_path / "b"), "--jobs", "2", "--task", "1")
    assert "joined from its parts" in saev(url_b, *common, "--data-root", str(tmp_path / "b"), "--jobs", "2",
                                          "--task", "0")
    res = CliRunner().invoke(cli, ["--db", url_b, *common, "--data-root", str(tmp_path / "b"), "--jobs", "2",
                                   "--task", "1", "--executor", "slurm"])
    assert res.exit_code != 0 and "--task runs one part in this process" in res.output
    a, b = Registry(url).get_dataset("d"), Registry(url_b).get_dataset("d")
    assert_same_dataset(a, b)
    assert_same_dataset(a, one_job(tmp_path, spec_for(images, tmp_path)))
