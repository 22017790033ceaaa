"""One owner for every dataset directory: recordings whose bytes differ never share one, an import never aliases a
registered one, `rm --delete-files` never deletes another row's files, and `verify` names rows that already collide."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from saev_ops import datasets, errors
from saev_ops.record import RecordSpec, record_dataset
from saev_ops.record.images import generate_images
from saev_ops.registry import Registry
from saev_ops.shards import ShardReader
from saev_ops.shards.format import Metadata, read_json
from tests.helpers import tiny_hf


@pytest.fixture
def reg(tmp_path: pathlib.Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("imgs")
    generate_images(root, 6, size=32, n_classes=2)
    return root


def _spec(name: str, images: pathlib.Path, model: str, data: pathlib.Path, **kw: object) -> RecordSpec:
    return RecordSpec(name=name, images=str(images), model=model, layers=(1,), data_root=str(data), **kw)  # type: ignore[arg-type]


def test_new_weights_under_the_same_path_get_a_directory_of_their_own(tmp_path: pathlib.Path, images: pathlib.Path,
                                                                        reg: Registry) -> None:
    model = tiny_hf(tmp_path, "vit")
    a = record_dataset(reg, _spec("a", images, model, tmp_path / "data"))
    a_acts = ShardReader(a.path).read(0, 6).copy()
    a_sums = read_json(pathlib.Path(a.path) / "saev_ops.json")["checksums"]
    import torch
    import transformers as t

    w = t.ViTModel.from_pretrained(model.split(":", 1)[1])
    with torch.no_grad():
        for p in w.parameters():
            p.mul_(1.5)
    w.save_pretrained(model.split(":", 1)[1])
    b = record_dataset(reg, _spec("b", images, model, tmp_path / "data"))
    assert pathlib.Path(a.path).resolve() != pathlib.Path(b.path).resolve()
    # a's files are untouched, b's differ, and both directories stay saev's: <root>/saev/shards/<metadata hash>
    np.testing.assert_array_equal(ShardReader(a.path).read(0, 6), a_acts)
    assert read_json(pathlib.Path(a.path) / "saev_ops.json")["checksums"] == a_sums
    assert not np.array_equal(ShardReader(b.path).read(0, 6), a_acts)
    for d in (a, b):
        md = Metadata.from_json_dict(read_json(pathlib.Path(d.path) / "metadata.json"))
        assert pathlib.Path(d.path).name == md.hash and pathlib.Path(d.path).parent.name == "shards"
        assert datasets.verify_dataset(reg, d.name, full=True)[1] == []


def test_masks_then_no_masks_keep_both_label_files(tmp_path: pathlib.Path, reg: Registry) -> None:
    from tests.shard_helpers import masked_images

    imgs, masks = masked_images(tmp_path, 3, np.full((64, 64), 5))
    a = record_dataset(reg, _spec("a", imgs, "builtin:small", tmp_path / "data", masks=str(masks)))
    labels = (pathlib.Path(a.path) / "labels.bin").read_bytes()
    b = record_dataset(reg, _spec("b", imgs, "builtin:small", tmp_path / "data"))
    assert pathlib.Path(a.path) != pathlib.Path(b.path)
    assert (pathlib.Path(a.path) / "labels.bin").read_bytes() == labels
    assert datasets.verify_dataset(reg, "a", full=True)[1] == []


def test_a_recording_never_replaces_files_another_row_points_at(tmp_path: pathlib.Path, images: pathlib.Path,
                                                                  reg: Registry) -> None:
    a = record_dataset(reg, _spec("a", images, "builtin:tiny", tmp_path / "data"))
    reg.delete_dataset("a")  # the row goes, its files stay; another row (set by hand) owns them
    datasets.import_dataset(reg, pathlib.Path(a.path), "kept")
    before = (pathlib.Path(a.path) / "acts000000.bin").stat().st_mtime_ns
    with pytest.raises(errors.DataError, match=r"is the directory of dataset 'kept'.*never replaces"):
        record_dataset(reg, _spec("a", images, "builtin:tiny", tmp_path / "data"))
    assert reg.get_dataset("a").status == "failed"
    assert (pathlib.Path(a.path) / "acts000000.bin").stat().st_mtime_ns == before
    assert datasets.verify_dataset(reg, "kept", full=True)[1] == []


def test_import_of_a_registered_directory_names_its_owner(tmp_path: pathlib.Path, images: pathlib.Path,
                                                            reg: Registry) -> None:
    base = record_dataset(reg, _spec("base", images, "builtin:tiny", tmp_path / "data"))
    link = tmp_path / "link"
    link.symlink_to(base.path)
    for alias in (pathlib.Path(base.path), link, pathlib.Path(base.path) / ".." / pathlib.Path(base.path).name):
        with pytest.raises(errors.DuplicateError, match=r"already registered as dataset 'base'"):
            datasets.import_dataset(reg, alias, "base2")
    assert [d.name for d in reg.list_datasets()] == ["base"]


def test_a_bind_mounted_alias_is_the_same_directory(tmp_path: pathlib.Path, images: pathlib.Path,
                                                      reg: Registry) -> None:
    """Another path to the same directory that resolving cannot see (a bind mount) is caught by device and inode."""
    base = record_dataset(reg, _spec("base", images, "builtin:tiny", tmp_path / "data"))
    mnt = tmp_path / "mnt" / "saev" / "shards" / pathlib.Path(base.path).name
    mnt.mkdir(parents=True)
    if os.geteuid() != 0 or os.system(f"mount --bind {base.path} {mnt} 2>/dev/null") != 0:
        pytest.skip("bind mounts need root")
    try:
        with pytest.raises(errors.DuplicateError, match="'base'"):
            datasets.import_dataset(reg, mnt, "base2")
    finally:
        os.system(f"umount {mnt}")


def test_rm_delete_files_never_deletes_another_rows_files(tmp_path: pathlib.Path, images: pathlib.Path,
                                                          reg: Registry) -> None:
    base = record_dataset(reg, _spec("base", images, "builtin:tiny", tmp_path / "data"))
    # a registry written before imports checked the directory: two rows on one directory
    reg.create_dataset(name="base2", content_hash="f" * 64, path=str(pathlib.Path(base.path) / ".." /
                                                                    pathlib.Path(base.path).name),
                       model_family="fake-clip", model_ckpt="x", layers=[1], d_model=base.d_model,
                       tokens_per_example=base.tokens_per_example, n_examples=base.n_examples, dtype="float32",
                       source_path=None, status="complete")
    with pytest.raises(errors.HasDependentsError, match=r"holds the files of dataset 'base'"):
        datasets.remove_dataset(reg, "base2", delete_files=True)
    assert pathlib.Path(base.path, "acts000000.bin").exists()
    assert {d.name for d in reg.list_datasets()} == {"base", "base2"}
    # verify names the collision on both rows
    for name, other in (("base", "base2"), ("base2", "base")):
        problems = datasets.verify_dataset(reg, name)[1]
        assert any(f"dataset {other!r}" in str(p) for p in problems), problems
    # the row alone can go, and then base's own rm deletes its files
    datasets.remove_dataset(reg, "base2")
    datasets.remove_dataset(reg, "base", delete_files=True)
    assert not pathlib.Path(base.path).exists()


# -- journals: a line belongs to one run of one registry ----------------------------------------------------------------
def _journaled(reg: Registry, root: pathlib.Path, configs: list[dict]) -> list:  # noqa: ANN401 - run records
    """Runs of ``reg`` whose jobs journaled a metric point and their completion to files (registry down)."""
    from saev_ops.train.journal import Journal

    runs = [r for r, _ in reg.add_runs("tiny", configs)]
    dirs = {r.id: root / f"run-{r.id:06d}" for r in runs}
    for d in dirs.values():
        d.mkdir(parents=True)
    journal = Journal(None, dirs, registry_id=reg.registry_id, identities={r.id: r.config_hash for r in runs})
    for r in runs:
        journal.log(r.id, 10, {"nmse": 0.21})
        journal.transition(r.id, "completed", checkpoint_path="/ckpt")
    return runs


def test_sync_into_another_registry_is_refused_whole(tmp_path: pathlib.Path) -> None:
    from click.testing import CliRunner

    from saev_ops.cli import cli
    from tests.helpers import make_dataset

    a, b = (Registry(f"sqlite:///{tmp_path / n}.sqlite") for n in ("a", "b"))
    for reg in (a, b):
        make_dataset(reg, "tiny")
    assert a.registry_id != b.registry_id
    _journaled(a, tmp_path / "runs", [{"k": 1}, {"k": 2}])
    (b1, _), (b2, _) = b.add_runs("tiny", [{"k": 3}, {"k": 4}])  # same run ids 1 and 2, other runs
    res = CliRunner().invoke(cli, ["--db", b.url.render_as_string(), "sweep", "sync", str(tmp_path / "runs")])
    assert res.exit_code == 1, res.output
    assert a.registry_id in res.output and b.registry_id in res.output and "Nothing was synced" in res.output
    for r in (b1, b2):
        assert b.get_run(r.id).status == "queued" and b.summary(r.id) == {}
    assert not list((tmp_path / "runs").glob("*/metrics.jsonl.offset"))
    # into its own registry it goes
    res = CliRunner().invoke(cli, ["--db", a.url.render_as_string(), "sweep", "sync", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert {a.get_run(i).status for i in (1, 2)} == {"completed"} and a.summary(1) == {"nmse": 0.21}


def test_an_edited_line_cannot_reach_another_run(tmp_path: pathlib.Path) -> None:
    import json

    from saev_ops.train.journal import sync_file
    from tests.helpers import make_dataset

    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    make_dataset(reg, "tiny")
    (run,) = _journaled(reg, tmp_path / "runs", [{"k": 1}])
    (other, _), = reg.add_runs("tiny", [{"k": 2}])
    f = tmp_path / "runs" / f"run-{run.id:06d}" / "metrics.jsonl"
    lines = [json.loads(x) for x in f.read_text().splitlines()]
    forged = [{**x, "run_id": other.id} for x in lines]  # the other run's id, this run's identity
    legacy = [{k: v for k, v in x.items() if k not in ("registry", "identity")} for x in lines]
    odd = [{**lines[0], "registry": [reg.registry_id]}]  # not a string: no registry named
    f.write_text("".join(json.dumps(x) + "\n" for x in forged + legacy + odd))
    res = sync_file(reg, f)
    assert (res.points, res.transitions) == (0, 0)
    assert reg.get_run(other.id).status == "queued" and reg.summary(other.id) == {}
    assert reg.get_run(run.id).status == "queued"
    assert len(res.problems) == 5 and "metrics.jsonl:5: names no registry" in res.problems[4]
    assert f"metrics.jsonl:1: run {other.id} of this registry is another run" in res.problems[0]
    assert "metrics.jsonl:3: names no registry and run identity" in res.problems[2]


def test_a_job_whose_url_reaches_another_registry_trains_nothing(tmp_path: pathlib.Path) -> None:
    import dataclasses

    from saev_ops.train.trainer import run_train_job
    from tests.helpers import make_dataset, make_spec

    a, b = (Registry(f"sqlite:///{tmp_path / n}.sqlite") for n in ("a", "b"))
    for reg in (a, b):
        make_dataset(reg, "tiny")
    spec = make_spec(a, a.url.render_as_string(), tmp_path / "no-data", tmp_path / "runs")
    b.add_runs("tiny", [{"k": 9}])
    moved = dataclasses.replace(spec, db_url=b.url.render_as_string())
    with pytest.raises(errors.ConfigError, match=f"planned in registry {a.registry_id}.*is registry {b.registry_id}"):
        run_train_job(moved)
    assert b.get_run(1).status == "queued" and not (tmp_path / "runs").exists()


# -- a full disk -----------------------------------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_and_a_rerun_resumes_byte_identically(tmp_path: pathlib.Path,
                                                                        images: pathlib.Path) -> None:
    import subprocess

    from click.testing import CliRunner

    from saev_ops.cli import cli

    def record(url: str, root: pathlib.Path):  # noqa: ANN202 - click's Result
        return CliRunner().invoke(cli, ["--db", url, "datasets", "record", "--name", "d", "--images", str(images),
                                        "--model", "builtin:tiny", "--layers", "0,1", "--data-root", str(root),
                                        "--max-tokens-per-shard", "1"])

    ref_url = f"sqlite:///{tmp_path / 'ref.sqlite'}"
    assert record(ref_url, tmp_path / "ref").exit_code == 0
    ref = Registry(ref_url).get_dataset("d")
    shard = (pathlib.Path(ref.path) / "acts000000.bin").stat().st_size
    n_shards = len(list(pathlib.Path(ref.path).glob("acts*.bin")))
    assert n_shards >= 3
    small = tmp_path / "small"
    small.mkdir()
    from saev_ops.shards.writer import ROOM_MARGIN

    size = (ROOM_MARGIN + 5 * shard // 2) // 4096 * 4096  # room for about two shards
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a small file system needs root (mount -t tmpfs)")
    try:
        url = f"sqlite:///{tmp_path / 'r.sqlite'}"
        res = record(url, small)
        assert res.exit_code == 1, res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
        assert f"no room on its file system: a shard needs {shard + ROOM_MARGIN:,} bytes" in res.output
        assert str(small) in res.output
        d = Registry(url).get_dataset("d")
        assert d.status == "failed" and "no room" in d.extra["error"]
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        res = record(url, small)
        assert res.exit_code == 0, res.output
        d = Registry(url).get_dataset("d")
        assert d.status == "complete" and pathlib.Path(d.path).name == pathlib.Path(ref.path).name
        for i in range(n_shards):
            name = f"acts{i:06d}.bin"
            assert (pathlib.Path(d.path) / name).read_bytes() == (pathlib.Path(ref.path) / name).read_bytes()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_disk_that_fills_while_a_shard_is_written_is_one_error(tmp_path: pathlib.Path, monkeypatch) -> None:  # noqa: ANN001
    """The check before each shard can be overtaken (another job fills the disk): the write's own ENOSPC is the same
    one error."""
    import collections
    import subprocess

    from saev_ops.shards import ShardWriter, writer
    from tests.shard_helpers import make_metadata, synthetic_acts

    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a small file system needs root (mount -t tmpfs)")
    try:
        usage = collections.namedtuple("usage", "total used free")
        monkeypatch.setattr(writer.shutil, "disk_usage", lambda _: usage(1 << 40, 0, 1 << 40))
        md, layout = make_metadata(n_examples=40, layers=(3,), n_patches=16, d_model=256)
        w = ShardWriter(small / "d", md, layout)
        with pytest.raises(errors.DataError, match=r"small/d: no room on its file system"):
            for s in range(0, md.n_examples, 4):
                w.write(synthetic_acts(s, 4, md.layers, md.tokens_per_example, md.d_model))
        w.abort()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_lineage_shows_the_model_as_typed_and_the_directory(tmp_path: pathlib.Path, images: pathlib.Path,
                                                            reg: Registry) -> None:
    """`lineage` showed `fake-clip:builtin:small` (saev's family name) and `runs show` the dataset by a hash that is
    not its directory's name."""
    from click.testing import CliRunner

    from saev_ops.cli import cli

    d = record_dataset(reg, _spec("d", images, "builtin:tiny", tmp_path / "data"))
    (run, _), = reg.add_runs("d", [{"sae": {"arch": "topk", "d_sae": 8, "k": 2}, "lr": 1e-3}])
    url = reg.url.render_as_string()
    for args in (["lineage", "dataset:d"], ["datasets", "list"], ["datasets", "show", "d"]):
        out = CliRunner().invoke(cli, ["--db", url, *args]).output
        assert "builtin:tiny" in out and "fake-clip" not in out and d.path in out, out
    out = CliRunner().invoke(cli, ["--db", url, "runs", "show", str(run.id)]).output
    assert f"-> dataset d ({d.path}) -> run {run.id}" in out
