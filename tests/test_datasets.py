"""Datasets in the registry: import of saev directories, verify, rm, and the fail-fast check jobs run."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
from click.testing import CliRunner

from saev_ops import errors
from saev_ops.cli import cli
from saev_ops.datasets import import_dataset, require_complete
from saev_ops.registry import Registry
from tests.shard_helpers import write_like_saev


@pytest.fixture
def reg_url(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'r.sqlite'}"


def run(url: str, *args: str):  # noqa: ANN201
    return CliRunner().invoke(cli, ["--db", url, *args])


def test_import_verify_rm_through_the_cli(tmp_path: pathlib.Path, reg_url: str) -> None:
    path = write_like_saev(tmp_path / "data")
    res = run(reg_url, "datasets", "import", str(path), "--name", "tiny")
    assert res.exit_code == 0, res.output
    assert "imported tiny: 25 examples x 10 tokens x d_model 16, layers [11]" in res.output
    res = run(reg_url, "datasets", "show", "tiny")
    assert "complete" in res.output and str(path) in res.output
    assert run(reg_url, "datasets", "verify", "tiny", "--full").exit_code == 0
    res = run(reg_url, "datasets", "import", str(path), "--name", "again")
    assert res.exit_code == 1 and "already registered as dataset 'tiny'" in res.output

    reg = Registry(reg_url)
    reg.add_runs("tiny", [{"k": 4}])
    res = run(reg_url, "datasets", "rm", "tiny")
    assert res.exit_code == 1 and "1 run(s)" in res.output and "--force" in res.output
    os.truncate(path / "acts000001.bin", 7)
    res = run(reg_url, "datasets", "verify", "tiny")
    assert res.exit_code == 1
    assert "acts000001.bin: expected 5120 bytes, found 7 bytes" in res.output
    res = run(reg_url, "datasets", "rm", "tiny", "--force", "--delete-files")
    assert res.exit_code == 0 and "1 dependent run(s)" in res.output
    assert not path.exists()
    assert reg.list_datasets() == []


def test_jobs_fail_fast_on_missing_data(tmp_path: pathlib.Path, reg_url: str) -> None:
    reg = Registry(reg_url)
    path = write_like_saev(tmp_path / "data")
    import_dataset(reg, path, "tiny")
    assert require_complete(reg, "tiny").name == "tiny"
    (path / "acts000002.bin").unlink()  # the scratch file system purged it
    with pytest.raises(errors.DataError, match=r"(?s)dataset 'tiny' .* not usable.*acts000002.bin: expected a shard"):
        require_complete(reg, "tiny")


def test_import_of_a_non_saev_directory_is_a_clear_error(tmp_path: pathlib.Path, reg_url: str) -> None:
    (tmp_path / "junk").mkdir()
    res = run(reg_url, "datasets", "import", str(tmp_path / "junk"), "--name", "x")
    assert res.exit_code == 1 and "metadata.json: missing file" in res.output
    (tmp_path / "junk" / "metadata.json").write_text('{"family": "clip"}')
    res = run(reg_url, "datasets", "import", str(tmp_path / "junk"), "--name", "x")
    assert res.exit_code == 1 and "missing fields" in res.output and "ckpt" in res.output


def _saev_data_field(root: pathlib.Path, seg_split: str | None = None) -> str:
    """The data field as saev writes it: base64 of a pickled ``saev.data.datasets.ImgFolder(root=Path(...))`` (a frozen
    dataclass), or with ``seg_split`` an ``ImgSegFolder(root, split, labels_csv, bg_label)`` (saev's fields), made
    here with a stand-in module of that name so the pickle names saev's real class."""
    import base64
    import dataclasses
    import pickle
    import sys
    import types

    mod = types.ModuleType("saev.data.datasets")

    @dataclasses.dataclass(frozen=True)
    class ImgFolder:
        root: pathlib.Path

    @dataclasses.dataclass(frozen=True)
    class ImgSegFolder:
        root: pathlib.Path
        split: str = "training"
        labels_csv: str = "labels.csv"
        bg_label: int = 0

    for cls in (ImgFolder, ImgSegFolder):
        cls.__module__ = "saev.data.datasets"
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    names = ["saev", "saev.data", "saev.data.datasets"]
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update({n: mod for n in names})
    try:
        config = ImgFolder(root=root) if seg_split is None else ImgSegFolder(root=root, split=seg_split)
        return base64.b64encode(pickle.dumps(config, protocol=4)).decode()
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def _image_folder(root: pathlib.Path, n: int) -> list[tuple[str, int, str]]:
    """n images in class folders, returned in torchvision ImageFolder order (classes sorted, files sorted)."""
    from saev_ops.record.images import generate_images

    generate_images(root, n, size=16, n_classes=3)
    out = []
    for ci, cls in enumerate(sorted(p.name for p in root.iterdir() if p.is_dir())):
        out += [(str(f), ci, cls) for f in sorted((root / cls).iterdir())]
    return out


def test_import_takes_image_paths_and_labels_from_saevs_fields(tmp_path: pathlib.Path) -> None:
    """saev records an ImgFolder in ImageFolder order: the import indexes each example's image path and class (it
    gave every example path=None, label=None, so `latents top` showed empty columns)."""
    import numpy as np

    from saev_ops.shards import ShardReader

    images = tmp_path / "imgs"
    want = _image_folder(images, 25)
    patch_labels = np.random.default_rng(0).integers(0, 5, size=(25, 9)).astype(np.uint8)  # segmentation-style
    path = write_like_saev(tmp_path / "data", data=_saev_data_field(images), dataset=str(images),
                           labels=patch_labels)
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    d = import_dataset(reg, path, "tiny")
    reader = ShardReader(d.path)
    got = [(reader.index.get(i).path, reader.index.get(i).label, reader.index.get(i).label_name) for i in range(25)]
    assert got == want
    assert reader.sidecar["extra"]["image_paths"] is True
    assert reader.index.find_path(want[7][0]) == 7


def test_an_img_seg_folder_recording_imports_with_its_images_and_classes(tmp_path: pathlib.Path) -> None:
    """saev's ImgSegFolder (root/images/<split>, root/annotations/<split>, labels.csv of stem then label columns):
    imported with no image paths and no classes ("image paths not recovered"). Rebuilt from saev's rules: the split's
    images in torchvision's order, each image's class its first label column, numbered over the sorted values."""
    import numpy as np
    from PIL import Image

    from saev_ops.shards import ShardReader

    root = tmp_path / "ade"
    scenes = ["street", "kitchen", "bedroom"]
    rows = ["stem,scene,indoor"]
    for split, n in (("training", 25), ("validation", 4)):
        for d in ("images", "annotations"):
            (root / d / split).mkdir(parents=True)
        for i in range(n):
            stem = f"ADE_{split[:3]}_{i:04d}"
            Image.new("RGB", (16, 16), (i, 0, 0)).save(root / "images" / split / f"{stem}.jpg")
            Image.new("L", (16, 16), i % 3).save(root / "annotations" / split / f"{stem}.png")
            rows.append(f"{stem},{scenes[i % 3]},{'yes' if i % 3 else 'no'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    patch_labels = np.random.default_rng(0).integers(0, 3, size=(25, 9)).astype(np.uint8)
    path = write_like_saev(tmp_path / "data", data=_saev_data_field(root, seg_split="training"), dataset=str(root),
                           labels=patch_labels)
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    d = import_dataset(reg, path, "ade")
    reader = ShardReader(d.path)
    got = [reader.index.get(i) for i in range(25)]
    want_paths = sorted(str(p) for p in (root / "images" / "training").iterdir())
    assert [e.path for e in got] == want_paths
    numbering = {s: i for i, s in enumerate(sorted(scenes))}  # bedroom 0, kitchen 1, street 2
    assert [(e.label_name, e.label) for e in got] == [(scenes[i % 3], numbering[scenes[i % 3]]) for i in range(25)]
    assert reader.sidecar["extra"]["image_paths"] is True and reader.labels_kind == "patch"


def test_import_reads_the_data_field_without_running_it(tmp_path: pathlib.Path, caplog) -> None:  # noqa: ANN001
    """A pickle can call any function; the data field is read with saev's classes and paths only."""
    import base64
    import os as os_module
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204  # pickle protocol
            return (os_module.system, (f"touch {marker}",))

    evil = base64.b64encode(pickle.dumps(Evil(), protocol=4)).decode()
    labels = np.repeat(np.arange(25, dtype=np.uint8)[:, None] % 4, 9, axis=1)  # image-level labels, saev-style
    path = write_like_saev(tmp_path / "data", data=evil, labels=labels)
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    from saev_ops.shards import ShardReader

    d = import_dataset(reg, path, "tiny")
    assert not marker.exists()
    assert "refused posix.system" in caplog.text or "refused os.system" in caplog.text
    reader = ShardReader(d.path)
    assert [reader.index.get(i).label for i in range(25)] == [i % 4 for i in range(25)]
    assert d.extra["image_paths_missing"]


def test_import_of_a_saev_ops_copy_checks_its_own_checksums(tmp_path: pathlib.Path) -> None:
    """A copy of a saev-ops dataset carries checksums: a flipped byte is refused, naming the shard (it used to be
    re-checksummed and then pass `verify --full`); an intact copy keeps its index (paths, labels) and provenance."""
    import shutil

    from saev_ops.shards import ShardReader
    from tests.shard_helpers import write_dataset

    src = write_dataset(tmp_path / "src", n_examples=30)
    good = tmp_path / "copies" / "good" / "saev" / "shards" / src.name
    bad = tmp_path / "copies" / "bad" / "saev" / "shards" / src.name
    shutil.copytree(src, good)
    shutil.copytree(src, bad)
    with open(bad / "acts000001.bin", "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0x10]))
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    with pytest.raises(errors.DataError, match=r"acts000001.bin: contents differ from the checksum"):
        import_dataset(reg, bad, "bad")
    with pytest.raises(errors.NotFoundError):
        reg.get_dataset("bad")
    d = import_dataset(reg, good, "good")
    reader = ShardReader(d.path)
    assert reader.index.get(4).path == "img/00004.jpg" and reader.index.get(4).label == 1


def test_import_with_registers(tmp_path: pathlib.Path) -> None:
    from saev_ops.shards import ShardReader

    path = write_like_saev(tmp_path / "data")
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    d = import_dataset(reg, path, "tiny", registers=2)
    layout = ShardReader(d.path).layout
    assert (layout.n_cls, layout.n_registers, layout.n_patches) == (1, 2, 7)
    res = run(f"sqlite:///{tmp_path / 'r2.sqlite'}", "datasets", "import", str(path), "--name", "x",
              "--registers", "3")  # once imported, the directory's sidecar says how many
    assert res.exit_code != 0 and "saev_ops.json records 2 register tokens" in res.output
    other = write_like_saev(tmp_path / "other", n_examples=24)
    res = run(f"sqlite:///{tmp_path / 'r2.sqlite'}", "datasets", "import", str(other), "--name", "x",
              "--registers", "12")
    assert res.exit_code != 0 and "--registers 12" in res.output and "9 content tokens" in res.output
    assert not (other / "saev_ops.json").exists() and not (other / "index.lmdb").exists()
