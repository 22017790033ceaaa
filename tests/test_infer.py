"""Inference outputs: CSR contents equal a direct computation, atomic and idempotent writes, reading API, lineage."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import scipy.sparse
import torch
from click.testing import CliRunner

from saev_ops.cli import cli
from saev_ops.explore.lineage import lineage_lines
from saev_ops.infer import InferSpec, Output, run_inference
from saev_ops.registry import Registry
from saev_ops.sae.evaluate import reconstruction_metrics
from saev_ops.sae.io import load_sae
from saev_ops.shards import ShardReader
from saev_ops.train import run_train_job
from tests.helpers import make_dataset, make_spec
from tests.shard_helpers import write_dataset


@pytest.fixture
def trained(shared_db_url: str, tmp_path: pathlib.Path):  # noqa: ANN201 - an SQLite file and Postgres
    db_url = shared_db_url
    path = write_dataset(tmp_path / "data", n_examples=40, layers=(3, 7), n_patches=16, d_model=32)
    reg = Registry(db_url)
    sidecar = json.loads((path / "saev_ops.json").read_text())
    make_dataset(reg, name="tiny", path=str(path), d_model=32, layers=[3, 7], tokens_per_example=17, n_examples=40,
                 status="complete", extra={"metadata_hash": sidecar["content_hash"]})
    spec = make_spec(reg, db_url, path, tmp_path / "runs", n_tokens=640)
    run_train_job(spec)
    return reg, db_url, path, [r.run_id for r in spec.runs]


def test_csr_equals_direct_computation_and_lineage(trained, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    reg, url, path, ids = trained
    outs = run_inference(InferSpec(db_url=url, run_ids=tuple(ids), dataset="tiny", out_root=str(tmp_path / "out"),
                                   batch_size=100))
    assert len(outs) == 3
    x = torch.from_numpy(ShardReader(path).read(0, 40, layer_idx=1)[:, 1:].reshape(-1, 32).copy())  # patches only
    for o in outs:
        sae, meta = load_sae(pathlib.Path(reg.get_run(o.run_id).checkpoint_path))
        with torch.inference_mode():
            want = sae.encode(x * meta["scale"]).numpy()
        got = scipy.sparse.load_npz(pathlib.Path(o.path) / "latents.npz")
        assert got.shape == want.shape == (640, o.n_cols) and got.nnz == o.nnz == np.count_nonzero(want)
        np.testing.assert_allclose(got.toarray(), want, rtol=1e-5, atol=1e-6)
        out = Output.open(reg, o.id)
        stats = out.latent_stats()
        np.testing.assert_allclose(stats["frequency"], (want != 0).mean(0))
        np.testing.assert_allclose(stats["max"], want.max(0), rtol=1e-6)
        j = int(np.argmax((want != 0).sum(0)))
        top = out.top_rows(j, 5)
        assert [v for _, v in top] == pytest.approx(sorted(want[:, j], reverse=True)[:5])
        e = out.row_example(top[0][0])
        assert e["example_idx"] == top[0][0] // 16 and e["path"].endswith(".jpg") and e["token_idx"] >= 1
        assert e["patch_label"] is None and e["label"] is not None  # image classes in the index; no patch classes
        assert not list(pathlib.Path(o.path).parent.glob("*.tmp"))
        # the output's reconstruction metrics: those of the SAE over the same rows, computed directly
        assert o.metrics == pytest.approx(reconstruction_metrics(sae, x * meta["scale"]), rel=1e-6)
        assert reg.get_output(o.id).metrics == o.metrics
    res = CliRunner().invoke(cli, ["--db", url, "sql", "SELECT run_id, nmse, shrinkage FROM output_table "
                                   "ORDER BY run_id", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert [row["nmse"] for row in json.loads(res.output)] == pytest.approx([o.metrics["nmse"] for o in outs])
    res = CliRunner().invoke(cli, ["--db", url, "latents", "stats", str(outs[0].id)])
    assert res.exit_code == 0 and "reconstruction: nmse" in res.output and "shrinkage" in res.output
    res = CliRunner().invoke(cli, ["--db", url, "runs", "show", str(outs[0].run_id)])
    assert res.exit_code == 0 and "explained_variance" in res.output.split("lineage:")[1]
    again = run_inference(InferSpec(db_url=url, run_ids=tuple(ids), dataset="tiny", out_root=str(tmp_path / "out")))
    assert [(o.id, o.created_at) for o in again] == [(o.id, o.created_at) for o in outs]  # no-op without force
    lines = lineage_lines(reg, f"run:{ids[0]}")
    assert lines[1].startswith("└── dataset tiny") and f"run {ids[0]}" in lines[2] and "output" in lines[3]
    assert len(lineage_lines(reg, "dataset:tiny")) == 2 + 3 * 2
    res = CliRunner().invoke(cli, ["--db", url, "sql", "SELECT count(*) FROM inference_lineage"])
    assert res.exit_code == 0 and "3" in res.output
    res = CliRunner().invoke(cli, ["--db", url, "latents", "top", str(outs[0].id), str(j), "-n", "2", "--format", "csv"])
    assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 3
    assert res.output.splitlines()[0] == "value,example,token,label,patch label,image"


def test_failed_inference_registers_nothing(trained, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    reg, url, path, ids = trained
    (path / "acts000001.bin").unlink()
    with pytest.raises(Exception, match="not usable"):
        run_inference(InferSpec(db_url=url, run_ids=tuple(ids), dataset="tiny", out_root=str(tmp_path / "out")))
    assert reg.list_outputs() == []


def test_reruns_say_what_they_kept(trained, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    reg, url, _, run_ids = trained
    args = ["--db", url, "infer", str(run_ids[0]), "--dataset", "tiny", "--out-root", str(tmp_path / "o")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0 and " kept (" not in first.output, first.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "kept (it exists; --force computes it again)" in again.output, again.output


def test_rerecording_says_reused(tmp_path: pathlib.Path) -> None:
    from saev_ops.record.images import generate_images

    generate_images(tmp_path / "imgs", 4, size=32, n_classes=2)
    args = ["--db", str(tmp_path / "r.sqlite"), "datasets", "record", "--name", "d", "--images", str(tmp_path / "imgs"),
            "--model", "builtin:tiny", "--data-root", str(tmp_path / "data")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0 and " reused (" not in first.output, first.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "dataset d reused" in again.output, again.output


def test_sae_from_another_model_is_refused_unless_allowed(trained, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    """An SAE trained on one model's activations was applied to another model's without a word; now the training
    provenance is compared with the target's and a mismatch refused (or, allowed, recorded with the output)."""
    import shutil

    reg, url, path, ids = trained
    sidecar = json.loads((path / "saev_ops.json").read_text())
    copy = tmp_path / "copy" / "saev" / "shards" / path.name  # a directory of its own: one directory, one dataset
    shutil.copytree(path, copy)
    make_dataset(reg, name="other-model", path=str(copy), d_model=32, layers=[3, 7], tokens_per_example=17,
                 n_examples=40, status="complete", model_ckpt="ViT-L-14/laion",
                 extra={"metadata_hash": sidecar["content_hash"]})
    args = ["--db", url, "infer", str(ids[0]), "--dataset", "other-model", "--out-root", str(tmp_path / "o")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0 and f"run {ids[0]} was trained on dataset 'tiny'" in res.output
    assert "model: clip:ViT-B-16/openai vs clip:ViT-L-14/laion" in res.output and "--allow-model-mismatch" in res.output
    assert reg.list_outputs() == []
    res = CliRunner().invoke(cli, [*args, "--allow-model-mismatch"])
    assert res.exit_code == 0, res.output
    (foreign,) = reg.list_outputs()
    assert "ViT-L-14/laion" in foreign.extra["model_mismatch"][0]
    # lineage: the dataset shows what was computed on it by runs trained elsewhere; an output shows itself only
    own = run_inference(InferSpec(db_url=url, run_ids=(ids[0],), dataset="tiny", out_root=str(tmp_path / "o")))[0]
    text = "\n".join(lineage_lines(reg, "dataset:other-model"))
    assert f"output {foreign.id} by run {ids[0]} (trained on tiny)" in text
    text = "\n".join(lineage_lines(reg, f"output:{own.id}"))
    assert f"output {own.id} on tiny" in text and f"output {foreign.id}" not in text


def test_same_model_different_preprocessing_is_a_mismatch() -> None:
    import datetime as dt

    from saev_ops.infer.provenance import mismatches
    from saev_ops.registry import DatasetRecord

    def rec(i: int, preprocess: dict, n_patches: int = 16) -> DatasetRecord:
        now = dt.datetime.now(dt.timezone.utc)
        model = {"weights_sha256": "ab" * 32, "resolved": "vit:/m", "preprocess": preprocess}
        return DatasetRecord(id=i, name=f"d{i}", content_hash=str(i), path="/x", status="complete", source_path=None,
                             model_family="vit", model_ckpt="/m", layers=(1,), d_model=8, tokens_per_example=17,
                             n_examples=4, dtype="float32", created_at=now, completed_at=now,
                             extra={"provenance": {"model": model},
                                    "token_layout": {"n_cls": 1, "n_registers": 0, "n_patches": n_patches}})

    assert mismatches(rec(1, {"resize": 224}), rec(2, {"resize": 224}), tokens="patches") == []
    (m,) = mismatches(rec(1, {"resize": 224}), rec(2, {"resize": 256}), tokens="patches")
    assert m.startswith("preprocessing")
    (m,) = mismatches(rec(1, {"resize": 224}), rec(2, {"resize": 224}, n_patches=36), tokens="patches")
    assert m.startswith("token layout: patches selects 16 tokens")
