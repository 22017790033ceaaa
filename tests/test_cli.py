"""The click layer: output formats, one-line errors with non-zero exit, no torch for registry queries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from saev_ops.cli import cli
from saev_ops.registry import Registry
from saev_ops.registry.schema_version import HEAD_REVISION
from tests.helpers import make_dataset


@pytest.fixture
def seeded(tmp_path) -> str:  # noqa: ANN001
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    make_dataset(reg, name="inat21")
    reg.get_or_create_sweep("sweep-a", "dataset: inat21\n")
    for i in range(6):
        (run, _), = reg.add_runs("inat21", [{"k": 2**i}], sweep="sweep-a")
        reg.log_metrics(run.id, [("nmse", 100, 0.1 * (6 - i)), ("l0", 100, 2.0**i)])
    reg.transition_run(1, "running", host="node7")
    reg.transition_run(1, "failed", error="Traceback (most recent call last):\nRuntimeError: out of memory")
    reg.close()
    return url


def invoke(url: str, *args: str):  # noqa: ANN201
    return CliRunner().invoke(cli, ["--db", url, *args], catch_exceptions=False)


def test_runs_list_filters_sort_and_formats(seeded: str) -> None:
    res = invoke(seeded, "runs", "list", "--dataset", "inat21", "--where", "nmse<0.45", "--where", "l0<=16",
                 "--sort", "-nmse", "--format", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["id"] for r in rows] == [3, 4, 5]
    assert rows[0]["nmse"] == pytest.approx(0.4) and "sweep" not in rows[0]  # one sweep: no column for it
    res = invoke(seeded, "runs", "list", "--sort", "nmse", "--limit", "2", "--format", "csv")
    lines = res.output.strip().splitlines()
    assert lines[0] == "id,status,arch,d_sae,k/coeff,lr,nmse,l0" and len(lines) == 3
    assert lines[1].startswith("6,")
    res = invoke(seeded, "runs", "list", "--sort", "nmse", "--limit", "2", "--columns", "all", "--format", "csv")
    assert res.output.startswith("id,sweep,dataset,status,attempts,host,nmse")
    res = invoke(seeded, "runs", "list", "--status", "failed")
    assert "failed" in res.output and len(res.output.strip().splitlines()) == 3
    assert "node7" in invoke(seeded, "runs", "list", "--status", "failed", "--columns", "all").output


def test_runs_list_fits_120_columns_with_the_sweeps_hyperparameters(tmp_path) -> None:  # noqa: ANN001
    """The quickstart's first command printed ~330 characters (27 columns) and no hyperparameters."""
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    make_dataset(reg, name="d")
    reg.get_or_create_sweep("s")
    metrics = ("loss", "mse", "nmse", "explained_variance", "l0", "dead_frac", "dense_frac", "lr", "grad_norm", "auxk")
    for i, arch in enumerate(["topk", "relu", "jumprelu", "topk"]):
        sae = {"arch": arch, "d_model": 768, "d_sae": 512 * (i + 1), "k": 16, "l1_coeff": 5e-4, "l0_coeff": 0.3}
        config = {"sae": sae, "lr": 1e-3 * (1 + i % 2), "seed": 0, "layer": 3, "tokens": "patches",
                  "train": {"batch_size": 1024, "n_tokens": 100_000}}
        (run, _), = reg.add_runs("d", [config], sweep="s")
        reg.log_metrics(run.id, [(k, 97, 0.123456789 + i) for k in metrics]
                        + [(f"val/{k}", 97, 0.2 + i) for k in ("nmse", "l0", "unfired_frac", "cosine")])
    res = CliRunner().invoke(cli, ["--db", f"sqlite:///{tmp_path / 'r.sqlite'}", "runs", "list", "--sweep", "s"])
    assert res.exit_code == 0, res.output
    table = res.stdout.splitlines()
    assert max(len(line) for line in table) <= 120, "\n".join(table)
    header = table[0].split()
    assert header[:6] == ["id", "status", "arch", "d_sae", "k/coeff", "lr"]
    assert "val/nmse" in header and "val/l0" in header and "lr_final" not in header
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert rows["2"][4] == "0.0005" and rows["3"][4] == "0.3" and rows["1"][4] == "16"  # k, or the penalty


def test_runs_show_and_metrics(seeded: str) -> None:
    res = invoke(seeded, "runs", "show", "1")
    assert res.exit_code == 0
    for text in ("status        failed", '"k": 1', "nmse", "RuntimeError: out of memory", "lineage", "/images/inat21"):
        assert text in res.output
    payload = json.loads(invoke(seeded, "runs", "show", "2", "--format", "json").output)
    assert payload["config"] == {"k": 2} and payload["lineage"]["dataset"] == "inat21"
    res = invoke(seeded, "runs", "metrics", "2", "--key", "l0", "--format", "csv")
    assert res.output.splitlines()[1].startswith("l0,100,2")


def test_datasets_and_sql(seeded: str) -> None:
    assert "inat21" in invoke(seeded, "datasets", "list").output
    assert "ViT-B-16/openai" in invoke(seeded, "datasets", "show", "inat21").output
    res = invoke(seeded, "sql", "SELECT run_id, nmse FROM run_table WHERE nmse < 0.25 ORDER BY run_id", "--format", "csv")
    assert res.output.strip().splitlines() == ["run_id,nmse", "5,0.2", "6,0.1"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("datasets", "show", "nope"), "no dataset named 'nope'"),
        (("runs", "list", "--dataset", "nope"), "no dataset named 'nope'"),
        (("runs", "list", "--sweep", "nope"), "no sweep named 'nope'"),
        (("runs", "show", "999"), "no run with id 999"),
        (("runs", "list", "--where", "nmse<<1"), "bad --where expression"),
        (("sql", "DELETE FROM runs"), "read-only"),
    ],
)
def test_errors_are_one_line_and_nonzero(seeded: str, args: tuple[str, ...], message: str) -> None:
    res = CliRunner().invoke(cli, ["--db", seeded, *args])
    assert res.exit_code == 1
    assert message in res.output
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_non_saev_and_unreachable_databases(tmp_path) -> None:  # noqa: ANN001
    import sqlite3

    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    res = CliRunner().invoke(cli, ["--db", str(foreign), "runs", "list"])
    assert res.exit_code == 1 and "not a saev-ops registry" in res.output
    res = CliRunner().invoke(cli, ["--db", "postgresql://x@127.0.0.1:1/none", "runs", "list"])
    assert res.exit_code == 1 and "cannot open the registry database" in res.output


def test_db_commands(tmp_path) -> None:  # noqa: ANN001
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert "no saev-ops schema" in invoke(url, "db", "current").output
    assert "(empty) -> 0001_initial" in invoke(url, "db", "upgrade", "--revision", "0001_initial").output
    res = CliRunner().invoke(cli, ["--db", url, "runs", "list"])
    assert res.exit_code == 1 and "saev-ops db upgrade" in res.output
    assert f"0001_initial -> {HEAD_REVISION}" in invoke(url, "db", "upgrade").output
    assert "(head)" in invoke(url, "db", "current").output
    assert f"{HEAD_REVISION} -> 0001_initial" in invoke(url, "db", "downgrade", "0001_initial").output
    res = CliRunner().invoke(cli, ["--db", url, "db", "downgrade", "bogus"])
    assert res.exit_code == 1 and "unknown revision" in res.output


def test_db_url_from_env_and_home(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("SAEV_OPS_DB_URL", raising=False)
    monkeypatch.setenv("SAEV_OPS_HOME", str(tmp_path / "home"))
    res = CliRunner().invoke(cli, ["datasets", "list"])  # a read never creates an empty registry
    assert res.exit_code == 1 and f"no saev-ops registry at sqlite:///{tmp_path / 'home'}/registry.sqlite" in res.output
    assert not (tmp_path / "home" / "registry.sqlite").exists()
    assert CliRunner().invoke(cli, ["db", "upgrade"]).exit_code == 0
    assert CliRunner().invoke(cli, ["datasets", "list"]).exit_code == 0
    monkeypatch.setenv("SAEV_OPS_DB_URL", f"sqlite:///{tmp_path / 'env.sqlite'}")
    assert CliRunner().invoke(cli, ["db", "upgrade"]).exit_code == 0
    assert (tmp_path / "env.sqlite").exists()
    res = CliRunner().invoke(cli, ["datasets", "show", "nope"])
    assert res.exit_code == 1 and f"(registry: sqlite:///{tmp_path / 'env.sqlite'})" in res.output


def test_a_closed_pipe_ends_quietly(seeded: str) -> None:
    import subprocess
    import sys

    cmd = (f"{sys.executable} -m saev_ops --db {seeded} sql \"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
           f"FROM c WHERE i < 200000) SELECT i FROM c\" --max-rows 0 | head -1")
    res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "i" and res.stderr == "", res.stderr


def test_a_pipe_closed_between_two_writes_ends_quietly(seeded: str) -> None:
    """`runs show 1 | head -1` exited 1 in 6 of 8 tries: the pipe closed between two of the command's writes, and
    click turned that EPIPE into exit 1 before saev-ops' own handling saw it."""
    import subprocess
    import sys

    reg = Registry(seeded)
    run_id = reg.list_runs()[0].run.id
    reg.log_metrics(run_id, [(f"extra/metric_{i:03d}", 1, 0.5) for i in range(400)])
    cmd = f"{sys.executable} -m saev_ops --db {seeded} runs show {run_id} | head -1"
    for _ in range(8):
        res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and res.stderr == "", (res.returncode, res.stderr)


def test_registry_queries_do_not_import_torch(seeded: str) -> None:
    code = (
        "import sys\n"
        "from saev_ops.cli import main\n"
        "try:\n"
        f"    main(['--db', {seeded!r}, 'runs', 'list', '--where', 'nmse<1', '--sort', 'nmse'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('torch', 'alembic', 'submitit', 'scipy', 'matplotlib') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


@pytest.mark.parametrize("args", [
    ["sweep", "list"], ["sweep", "status", "s"], ["sweep", "watch", "s"], ["sweep", "cancel", "s"], ["lineage", "dataset:d"], ["runs", "list"],
    ["runs", "show", "1"], ["datasets", "list"], ["sql", "SELECT 1"], ["db", "current"],
])
def test_registry_only_commands_never_import_torch(tmp_path, args: list[str]) -> None:  # noqa: ANN001
    import subprocess
    import sys

    code = ("import sys\nfrom saev_ops.cli import cli\n"
            f"try:\n    cli.main(args={['--db', str(tmp_path / 'r.sqlite'), *args]!r}, prog_name='saev-ops', "
            "standalone_mode=False)\nexcept Exception:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


def test_each_group_summary_names_all_its_commands() -> None:
    import click

    for name, group in cli.commands.items():
        if isinstance(group, click.Group):
            summary = (group.help or "").splitlines()[0]
            missing = [c for c in group.commands if c not in summary]
            assert not missing, f"`saev-ops {name} --help` says {summary!r} but not {missing}"


def test_a_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import sys

    from saev_ops.record.images import generate_images

    generate_images(tmp_path / "imgs", 2, size=16, n_classes=1)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the hf extra were not installed
    res = CliRunner().invoke(cli, ["--db", str(tmp_path / "r.sqlite"), "datasets", "record", "--name", "d",
                                   "--images", str(tmp_path / "imgs"), "--model", f"vit:{tmp_path}"])
    assert res.exit_code == 1 and "pip install 'saev-ops[hf]'" in res.output and "Traceback" not in res.output


def test_transient_errors_are_told_by_code() -> None:
    import sqlite3

    import sqlalchemy as sa

    from saev_ops.registry.store import _is_transient

    busy = sqlite3.OperationalError("anything at all")
    busy.sqlite_errorcode = 5  # type: ignore[attr-defined]  # what the driver sets for SQLITE_BUSY
    other = sqlite3.OperationalError("database is locked, says the text")
    other.sqlite_errorcode = 1  # type: ignore[attr-defined]  # SQLITE_ERROR: not to be retried whatever it says
    assert _is_transient(sa.exc.OperationalError("x", None, busy))
    assert not _is_transient(sa.exc.OperationalError("x", None, other))


def test_slurm_option_help_names_the_schema_and_parsing_reports_every_problem() -> None:
    import re

    from saev_ops import errors
    from saev_ops.cli.context import SLURM_OPTION_HELP
    from saev_ops.jobs import SlurmSpec

    keys = re.split(r",\s*", SLURM_OPTION_HELP.split("repeatable: ", 1)[1].rstrip("."))
    assert keys == list(SlurmSpec.model_fields)
    assert SlurmSpec.from_pairs(["cpus=4", "mem_gb=2.5", "partition=debug"]) == SlurmSpec(cpus=4, mem_gb=2.5,
                                                                                           partition="debug")
    with pytest.raises(errors.ConfigError) as info:
        SlurmSpec.from_pairs(["cpus=four", "gpus=-1", "bogus=1", "noequals"])
    text = str(info.value)
    for part in ("cpus: Input should be a valid integer", "gpus: Input should be greater than or equal to 0",
                 "bogus: Extra inputs are not permitted", "'noequals': expected KEY=VALUE"):
        assert part in text, text


def test_an_evaluations_missing_figures_show_their_reason() -> None:
    import datetime as dt

    from saev_ops.cli import fmt
    from saev_ops.registry.records import EvaluationRecord

    e = EvaluationRecord(id=1, run_id=1, dataset_id=1, kind="splice", n_images=4, fidelity=None, kl=None,
                         probe_clean=0.75, probe_spliced=None, created_at=dt.datetime(2026, 12, 7),
                         extra={"missing": {"fidelity": "undefined: spliced = ablated", "probe": "no labels"}})
    assert e.figures() == {"fidelity": "(undefined: spliced = ablated)", "kl": None, "probe_clean": 0.75,
                                   "probe_spliced": "(no labels)"}
    assert fmt.metrics_line(e.figures()) == \
        "fidelity (undefined: spliced = ablated), probe_clean 0.75, probe_spliced (no labels)"
