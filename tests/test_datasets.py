"""Datasets in the registry: import of saev directories, verify, rm, and the fail-fast check jobs run."""

from __future__ import annotations

import os
import pathlib

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
