"""Shard files on disk: saev compatibility, resume, reduced precision, corruption, import of saev-written data."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np
import pytest

from saev_ops import errors
from saev_ops.shards import ShardReader, ShardWriter
from saev_ops.shards.format import dataset_dir, read_json
from saev_ops.shards.importer import import_saev_dir
from saev_ops.shards.verify import verify
from tests.shard_helpers import make_metadata, patch_classes, synthetic_acts, write_dataset, write_like_saev

SAEV_FIELDS = ["family", "ckpt", "layers", "content_tokens_per_example", "cls_token", "d_model", "n_examples",
               "max_tokens_per_shard", "data", "dataset", "pixel_agg", "dtype", "protocol"]


def test_layout_is_saev_protocol_2_1(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path, n_examples=50)
    raw = (path / "metadata.json").read_text()
    md = json.loads(raw)
    assert list(md) == SAEV_FIELDS and md["protocol"] == "2.1" and md["dtype"] == "float32"
    compact = json.dumps(md, separators=(",", ":"))
    assert path.name == hashlib.sha256(compact.encode()).hexdigest()[:8]
    assert path.parent.parent.name == "saev" and path.parent.name == "shards"
    S = md["max_tokens_per_shard"] // ((md["content_tokens_per_example"] + 1) * len(md["layers"]))
    assert S == 12
    shards = json.loads((path / "shards.json").read_text())
    assert shards == [{"name": f"acts{i:06d}.bin", "n_examples": min(12, 50 - 12 * i)} for i in range(5)]
    T, L, D = 17, 2, 32
    for i in range(5):  # every file, the last included, at saev's full (S, L, T, D) size
        assert (path / f"acts{i:06d}.bin").stat().st_size == S * L * T * D * 4
    acts = np.memmap(path / "acts000002.bin", dtype=np.float32, mode="r", shape=(S, L, T, D))
    np.testing.assert_array_equal(acts[3], synthetic_acts(21, 7, (3, 7), T, D)[6])  # example 27 = shard 2 row 3 (batch from 21)
    # labels.bin means what saev means: patch classes, written only for segmentation data (image classes: the index)
    assert not (path / "labels.bin").exists() and json.loads((path / "saev_ops.json").read_text())["labels_kind"] is None
    seg = write_dataset(tmp_path / "seg", patch_labels=True)
    labels = np.fromfile(seg / "labels.bin", dtype=np.uint8).reshape(50, 16)
    assert (labels == patch_classes(0, 50, 16)).all() and ShardReader(seg).labels_kind == "patch"


def test_reader_stats_and_index(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path, n_examples=30)
    r = ShardReader(path)
    full = np.concatenate([synthetic_acts(s, min(7, 30 - s), (3, 7), 17, 32) for s in range(0, 30, 7)])
    np.testing.assert_array_equal(r.read(0, 30), full)
    np.testing.assert_array_equal(r.read(10, 5, layer_idx=1), full[10:15, 1])
    stats = r.stats()
    np.testing.assert_allclose(stats["mean"], full.mean(axis=(0, 2)), rtol=1e-5, atol=1e-5)
    norms = np.linalg.norm(full.astype(np.float64), axis=-1).mean(axis=(0, 2))
    np.testing.assert_allclose(stats["scale"], np.sqrt(32) / norms, rtol=1e-5)
    e = r.index.get(13)
    assert (e.shard, e.row, e.path, e.label, e.label_name) == (1, 1, "img/00013.jpg", 1, "class1")
    assert r.index.find_path("img/00013.jpg") == 13
    with pytest.raises(errors.ConfigError, match=r"layer 5 was not recorded.*\[3, 7\]"):
        r.layer_index(5)


@pytest.mark.parametrize("dtype, budget", [("float16", 1e-6), ("bfloat16", 1e-4)])
def test_reduced_precision_round_trip_within_recorded_error(tmp_path: pathlib.Path, dtype: str, budget: float) -> None:
    path = write_dataset(tmp_path, n_examples=30, dtype=dtype)
    r = ShardReader(path)
    got = r.read(0, 30)
    assert got.dtype == np.float32
    ref = np.concatenate([synthetic_acts(s, min(7, 30 - s), (3, 7), 17, 32) for s in range(0, 30, 7)])
    err = ((got.astype(np.float64) - ref) ** 2).sum()
    var = ((ref - ref.mean(axis=(0, 2), keepdims=True)) ** 2).sum()
    recorded = r.sidecar["stats"]["storage_nmse"]
    assert 0 < recorded < budget
    assert err / var == pytest.approx(recorded, rel=0.05)
    assert (path / "acts000000.bin").stat().st_size == 12 * 2 * 17 * 32 * 2  # half the bytes of float32


def test_interrupted_write_resumes_and_never_looks_complete(tmp_path: pathlib.Path) -> None:
    md, layout = make_metadata(n_examples=50)
    path = dataset_dir(tmp_path, md.hash)
    first, rest = synthetic_acts(0, 30, md.layers, 17, 32), synthetic_acts(24, 26, md.layers, 17, 32)
    w = ShardWriter(path, md, layout)
    w.write(first)  # shards 0 and 1 complete, shard 2 half written
    w.abort()  # the process dies here
    assert (path / "acts000002.bin.tmp").exists() and not (path / "metadata.json").exists()
    with pytest.raises(errors.DataError, match="incomplete dataset"):
        ShardReader(path)
    w = ShardWriter(path, md, layout)
    assert w.resume_from == 24
    w.write(rest)
    w.finalize()
    other = tmp_path / "ref"
    ref = ShardWriter(other, md, layout)  # the same examples written without an interruption
    ref.write(np.concatenate([first[:24], rest]))
    ref.finalize()
    for i in range(5):
        assert (path / f"acts{i:06d}.bin").read_bytes() == (other / f"acts{i:06d}.bin").read_bytes()
    assert read_json(path / "saev_ops.json")["checksums"] == read_json(other / "saev_ops.json")["checksums"]
    assert verify(path, full=True) == []
    with pytest.raises(errors.DuplicateError, match="already a complete dataset"):
        ShardWriter(path, md, layout)


def test_writer_rejects_bad_input(tmp_path: pathlib.Path) -> None:
    md, layout = make_metadata(n_examples=5)
    w = ShardWriter(tmp_path / "d", md, layout)
    with pytest.raises(errors.ConfigError, match=r"must be shaped \(n, 2, 17, 32\)"):
        w.write(np.zeros((1, 2, 16, 32), np.float32))
    with pytest.raises(errors.ConfigError, match="exceed n_examples=5"):
        w.write(np.zeros((6, 2, 17, 32), np.float32))
    with pytest.raises(errors.DataError, match="cannot finalize, 0 of 5"):
        w.finalize()


def _problems(path: pathlib.Path, full: bool = False) -> str:
    return "\n".join(str(p) for p in verify(path, full=full))


def test_corruption_truncated_shard(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path)
    f = path / "acts000001.bin"
    os.truncate(f, f.stat().st_size - 100)
    assert "acts000001.bin: expected 52224 bytes, found 52124 bytes" in _problems(path)
    with pytest.raises(errors.DataError, match=r"acts000001.bin: 52124 bytes, expected 52224"):
        ShardReader(path)


def test_corruption_wrong_size_in_metadata(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path)
    md = json.loads((path / "metadata.json").read_text())
    md["n_examples"] = 70
    (path / "metadata.json").write_text(json.dumps(md))
    text = _problems(path)
    assert "shards.json: expected 6 entries, found 5" in text
    assert "acts000005.bin: expected a shard file" in text
    assert "metadata.json was changed" in text
    with pytest.raises(errors.DataError, match="shards.json: lists 5 shards, metadata.json implies 6"):
        ShardReader(path)


def test_corruption_missing_shard(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path)
    (path / "acts000003.bin").unlink()
    assert "acts000003.bin: expected a shard file of 52224 bytes, found no file" in _problems(path)
    with pytest.raises(errors.DataError, match="acts000003.bin: missing shard file"):
        ShardReader(path)


def test_corruption_bad_checksum_and_nan(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path)
    f = path / "acts000002.bin"
    arr = np.fromfile(f, dtype=np.float32)
    arr[100] = np.nan
    arr.tofile(f)
    # sizes are fine; the quick check reads each shard's first and last example only, and value 100 is in the first
    assert "acts000002.bin: expected the examples recorded as shard 2" in _problems(path)
    text = _problems(path, full=True)
    assert "acts000002.bin: expected checksum" in text and "contents changed or corrupt" in text
    assert "acts000002.bin: expected finite activations, found 1 NaN/Inf values" in text


def test_corruption_missing_index(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path)
    for f in (path / "index.lmdb").iterdir():
        f.unlink()
    assert "index.lmdb: expected an LMDB index" in _problems(path)
    with pytest.raises(errors.DataError, match="index.lmdb: missing LMDB index"):
        ShardReader(path).index.get(0)


def test_import_saev_written_directory(tmp_path: pathlib.Path) -> None:
    path = write_like_saev(tmp_path)
    with pytest.raises(errors.DataError, match="saev_ops.json: missing or not complete.*datasets import"):
        ShardReader(path)
    sidecar = import_saev_dir(path)
    assert sidecar["complete"] and len(sidecar["checksums"]) == 4
    r = ShardReader(path)
    np.testing.assert_array_equal(r.read(0, 25), synthetic_acts(0, 25, (11,), 10, 16))
    assert r.index.get(17).shard == 2 and r.index.get(17).row == 1
    assert verify(path, full=True) == []


def test_bfloat16_round_trip_keeps_nan_and_inf() -> None:
    from saev_ops.shards import dtypes

    special = np.array([0x7FFFFFFF, 0x7FC00000, 0xFF800000, 0x7F800000], dtype=np.uint32).view(np.float32)
    x = np.concatenate([special, np.linspace(-3, 3, 11, dtype=np.float32)])
    back = dtypes.decode(dtypes.encode(x, "bfloat16"), "bfloat16")
    assert np.isnan(back[:2]).all() and back[2] == -np.inf and back[3] == np.inf  # a NaN used to come back -0.0
    np.testing.assert_allclose(back[4:], x[4:], rtol=2**-8)
    out = np.empty_like(x)
    assert dtypes.decode(dtypes.encode(x, "bfloat16"), "bfloat16", out) is out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_statistics_do_not_depend_on_batching(tmp_path: pathlib.Path, dtype: str) -> None:
    """The same examples written in different batches (a resumed write, or a range recorded by another job) give the
    same statistics to the last bit: stats.npz and the sidecar's figures are part of what "identical" means."""
    md, layout = make_metadata(n_examples=40, dtype=dtype)
    rng = np.random.default_rng(0)  # magnitudes over 12 decades: float64 sums round, and the rounding shows
    x = (synthetic_acts(0, 40, md.layers, 17, 32) * 10 ** rng.uniform(-6, 6, (40, 2, 17, 32))).astype(np.float32)
    dirs = []
    for name, batches in (("one", [40]), ("many", [3, 5, 1, 11, 7, 13])):
        path = tmp_path / name
        w = ShardWriter(path, md, layout)
        start = 0
        for b in batches:
            w.write(x[start:start + b])
            start += b
        w.finalize()
        dirs.append(path)
    a, b = (np.load(d / "stats.npz") for d in dirs)
    for key in a.files:
        assert a[key].tobytes() == b[key].tobytes(), key
    assert read_json(dirs[0] / "saev_ops.json")["stats"] == read_json(dirs[1] / "saev_ops.json")["stats"]


def test_two_shards_swapped_are_named_by_the_quick_check(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path)
    a, b, tmp = path / "acts000001.bin", path / "acts000002.bin", path / "swap"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    text = _problems(path)
    assert "acts000001.bin: expected the examples recorded as shard 1" in text
    assert "found the first and last examples of acts000002.bin (shard files swapped or renamed)" in text
    assert "acts000002.bin: expected the examples recorded as shard 2" in text


def test_an_index_entry_edited_in_place_is_named_by_the_full_check(tmp_path: pathlib.Path) -> None:
    import json
    import struct

    import lmdb

    path = write_dataset(tmp_path)
    env = lmdb.open(str(path / "index.lmdb"), subdir=True)
    with env.begin(write=True) as txn:
        key = b"e" + struct.pack(">Q", 3)
        shard, row, img, label, name = json.loads(txn.get(key))
        txn.put(key, json.dumps([shard, row, "img/elsewhere.jpg", label, name], separators=(",", ":")).encode())
    env.close()
    assert "index.lmdb" not in _problems(path)  # the entry count is unchanged: the quick check cannot tell
    assert "index.lmdb: expected index digest" in _problems(path, full=True)


def test_labels_outside_the_datasets_classes_are_named_by_the_full_check(tmp_path: pathlib.Path) -> None:
    path = write_dataset(tmp_path, patch_labels=True)
    labels = np.fromfile(path / "labels.bin", dtype=np.uint8)
    assert set(labels.tolist()) == {0, 1, 2}
    labels[17] = 9
    labels.tofile(path / "labels.bin")
    text = _problems(path, full=True)
    assert "labels.bin: expected checksum" in text
    assert "labels.bin: expected labels among the dataset's classes [0, 1, 2], found 1 value(s) outside them " \
           "(first: 9 at byte 17)" in text


def test_an_older_datasets_image_class_labels_keep_working(tmp_path: pathlib.Path) -> None:
    """Before labels.bin meant what saev means, saev-ops wrote each image's class into every patch slot of image
    folders; such a dataset still verifies and reads, its labels.bin told apart as image classes (not patch ones)."""
    path = write_dataset(tmp_path, patch_labels=True)
    side = json.loads((path / "saev_ops.json").read_text())
    del side["labels_kind"]  # a sidecar written before the field, by a recording without masks
    (path / "saev_ops.json").write_text(json.dumps(side))
    assert ShardReader(path).labels_kind == "image" and ShardReader(path).labels() is not None
    assert _problems(path, full=True) == ""
    side["extra"] = {"imported_from_saev": True}  # a saev recording's labels.bin: patch classes
    (path / "saev_ops.json").write_text(json.dumps(side))
    assert ShardReader(path).labels_kind == "patch"
