"""An inference pass split across jobs (``infer --jobs N``): one registered output per SAE, the same bytes and the same
metrics as one job; failed parts and an interrupted join."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from saev_ops import errors
from saev_ops.infer import InferSpec, run_inference
from saev_ops.infer import run as infer_run
from saev_ops.registry import OutputRecord
from tests.test_infer import trained  # noqa: F401 - the fixture: a dataset of 40 examples and 3 trained runs

OUTPUT_FILES = ("latents.npz", "latent_stats.npz", "row_l0.npy", "output.json")


def assert_same_outputs(a: list[OutputRecord], b: list[OutputRecord]) -> None:
    assert [o.run_id for o in a] == [o.run_id for o in b]
    for x, y in zip(a, b, strict=True):
        for name in OUTPUT_FILES:
            assert (pathlib.Path(x.path) / name).read_bytes() == (pathlib.Path(y.path) / name).read_bytes(), name
        assert (x.n_rows, x.n_cols, x.nnz, x.metrics) == (y.n_rows, y.n_cols, y.nnz, y.metrics)
        assert sorted(p.name for p in pathlib.Path(x.path).iterdir()) == sorted(OUTPUT_FILES)


def one_job(spec: InferSpec, tmp_path: pathlib.Path) -> list[OutputRecord]:
    """The same pass in one job, into another root (its rows replace the split's in the registry; the files of both
    stay on disk)."""
    return run_inference(dataclasses.replace(spec, out_root=str(tmp_path / "one"), force=True))


def test_parts_in_any_order_make_the_one_job_outputs(trained, tmp_path: pathlib.Path) -> None:  # noqa: ANN001, F811
    reg, url, _path, ids = trained
    spec = InferSpec(db_url=url, run_ids=tuple(ids), dataset="tiny", out_root=str(tmp_path / "split"), batch_size=32)
    job_spec, n_parts, todo = infer_run.plan_split(spec, 3)
    # 2 examples x 16 patches per batch, 8 batches per segment: 16 examples a part (40 examples -> 3 parts)
    assert (n_parts, todo) == (3, [0, 1, 2])
    assert infer_run.infer_part(job_spec, 2) is None and infer_run.infer_part(job_spec, 0) is None
    split = infer_run.infer_part(job_spec, 1)
    assert split is not None and len(split) == 3
    assert not list((tmp_path / "split" / ".parts").glob("*/*"))  # the parts are gone once joined
    outputs = {o.run_id: o for o in split}
    ref = {o.run_id: o for o in one_job(spec, tmp_path)}
    assert_same_outputs([outputs[i] for i in ids], [ref[i] for i in ids])
    info = json.loads((pathlib.Path(outputs[ids[0]].path) / "output.json").read_text())
    assert info["n_rows"] == 640 and info["tokens_per_example"] == 16


def test_processes_and_a_failed_part(trained, tmp_path: pathlib.Path) -> None:  # noqa: ANN001, F811
    reg, url, path, ids = trained
    spec = InferSpec(db_url=url, run_ids=tuple(ids[:2]), dataset="tiny", out_root=str(tmp_path / "split"),
                     batch_size=32, force=True)
    ref = one_job(spec, tmp_path)
    shard = path / "acts000001.bin"  # examples 12-23, 12 a shard; example 20 is in part 1 (examples 16-31)
    good = shard.read_bytes()
    row, layer, token = 4352, 17 * 32 * 4, 32 * 4  # bytes: 2 layers x 17 tokens x 32 floats a row
    bad = bytearray(good)
    bad[8 * row + layer + 4 * token : 8 * row + layer + 4 * token + 4] = np.float32(np.nan).tobytes()
    shard.write_bytes(bytes(bad))
    with pytest.raises(errors.JobFailedError, match=r"1 of 3 jobs of inference failed: job 1: .*non-finite activations in examples 20;"):
        infer_run.infer_split(spec, 3)
    dataset = reg.get_dataset("tiny")
    assert [reg.find_output(i, dataset.id).path for i in ids[:2]] == [o.path for o in ref]  # nothing registered
    shard.write_bytes(good)
    assert infer_run.plan_split(spec, 7)[1:] == (3, [1])  # only part 1 is left; the first split is kept
    out = infer_run.infer_split(spec, 7)
    assert [o.run_id for o in out] == list(ids[:2])
    assert not list((tmp_path / "split" / ".parts").glob("*/*"))
    assert_same_outputs(out, ref)


def test_cli_jobs_and_tasks(trained, tmp_path: pathlib.Path) -> None:  # noqa: ANN001, F811
    from click.testing import CliRunner

    from saev_ops.cli import cli

    reg, url, _path, ids = trained
    args = ["--db", url, "infer", str(ids[0]), "--dataset", "tiny", "--batch-size", "32"]
    res = CliRunner().invoke(cli, [*args, "--out-root", str(tmp_path / "t"), "--jobs", "3", "--task", "2"])
    assert res.exit_code == 0 and "part 2 done" in res.output, res.output
    for task in (0, 1):
        res = CliRunner().invoke(cli, [*args, "--out-root", str(tmp_path / "t"), "--jobs", "3", "--task", str(task)])
        assert res.exit_code == 0, res.output
    assert f"run {ids[0]} on tiny: 640x64" in res.output  # the last part joined them
    split = reg.find_output(ids[0], reg.get_dataset("tiny").id)
    res = CliRunner().invoke(cli, [*args, "--out-root", str(tmp_path / "p"), "--jobs", "2", "--force"])
    assert res.exit_code == 0 and "640x64" in res.output, res.output
    processes = reg.find_output(ids[0], reg.get_dataset("tiny").id)
    assert_same_outputs([split], [processes])
    assert_same_outputs([processes], one_job(InferSpec(db_url=url, run_ids=(ids[0],), dataset="tiny",
                                                       out_root="", batch_size=32), tmp_path))
