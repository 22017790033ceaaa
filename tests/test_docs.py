"""The docs against the code, so they cannot go stale: the command reference against the click commands (both ways),
grid.yaml's key reference against its schemas (generated), the metrics table against the metrics the code defines,
every command line shown against the parser, and every relative link."""

from __future__ import annotations

import pathlib
import re
import shlex

import click
import pytest

from saev_ops import directions
from saev_ops.cli import cli
from saev_ops.sae.compare import Similarity
from saev_ops.sweeps import reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    if isinstance(cmd, click.Group):
        return [c for name, sub in sorted(cmd.commands.items()) for c in _commands(sub, (*path, name))]
    return [(" ".join(path), cmd)]


def _table_cells(text: str, first_row: str) -> list[str]:
    start = text.index(first_row)
    table = text[start:text.index("\n\n", start)]
    return [re.split(r"(?<!\\)\|", row)[1] for row in table.splitlines() if row.startswith("| `")]


def test_every_command_and_option_is_in_the_cli_reference_and_nothing_else() -> None:
    cells = _table_cells((ROOT / "docs/cli.md").read_text(), "| `saev-ops [--db URL]")
    missing = []
    commands = dict(_commands(cli))
    for name, cmd in commands.items():
        rows = [c for c in cells if re.search(rf"`{re.escape(name)}( |`)|, `{re.escape(name)}( |`)", c)]
        if not rows:
            missing.append(f"command `{name}`")
            continue
        text = " ".join(rows)
        for p in cmd.params:
            longs = [o for o in getattr(p, "opts", []) if o.startswith("--")]
            if isinstance(p, click.Option) and longs and p.name != "fmt" and not any(o in text for o in longs):
                missing.append(f"`{name}` option {longs[0]}")
    assert not missing, "docs/cli.md's command table lacks: " + "; ".join(missing)
    named = {m for c in cells[1:] for m in re.findall(r"`([a-z][a-z -]*?)(?= [A-Z\[-]|`)", c)}
    ghosts = sorted(n for n in named if n.split(" ")[0] in cli.commands and n not in commands
                    and not any(k.startswith(n + " ") for k in commands))
    assert not ghosts, f"docs/cli.md names commands that do not exist: {ghosts}"


def test_the_grid_reference_is_what_the_schemas_render() -> None:
    doc = (ROOT / "docs/grid.md").read_text()
    assert reference.BEGIN in doc, "docs/grid.md has no generated reference"
    assert reference.splice(doc) == doc, ("docs/grid.md's key reference differs from the schemas: run "
                                          "`python -m saev_ops.sweeps.reference --write docs/grid.md`")


def test_every_metric_is_explained_and_every_explained_metric_exists() -> None:
    cells = _table_cells((ROOT / "docs/evaluation.md").read_text(), "| `nmse`")
    named = {m for c in cells for m in re.findall(r"`([a-z_0-9]+)`", c)}
    known = set(directions.MEANING) | {k for k in directions._BETTER} | {
        f.name for f in __import__("dataclasses").fields(Similarity)}
    assert set(directions.MEANING) <= named, f"not explained: {sorted(set(directions.MEANING) - named)}"
    assert named <= known, f"explained but not a metric: {sorted(named - known)}"


def _command_lines() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split(" && "):
                    part = part.split(" #")[0].strip()
                    if part.startswith("saev-ops "):
                        out.append((doc.name, part))
    return out


@pytest.mark.parametrize(("doc", "line"), _command_lines())
def test_every_command_line_shown_parses(doc: str, line: str) -> None:
    """Each `saev-ops ...` line in a bash block names a real command with real options and values (parsed, not run;
    `$VAR` stands for a number, paths need not exist here, and a line with `...` may leave required options out)."""
    args = [re.sub(r"^\$\w+$", "1", a) for a in shlex.split(line)[1:] if a != "..."]
    cmd: click.Command = cli
    top = [a for a in args if a.startswith("--db") or a == "--debug"]
    ctx = cli.make_context("saev-ops", top, resilient_parsing=True)
    args = [a for a in args if a not in top]
    while isinstance(cmd, click.Group):
        assert args and args[0] in cmd.commands, f"{doc}: no such command in: {line}"
        cmd, name, args = cmd.commands[args[0]], args[0], args[1:]
    try:
        cmd.make_context(name, args, parent=ctx)
    except click.MissingParameter:
        assert "..." in line, f"{doc}: {line}: a required option is missing"
    except click.BadParameter as exc:
        if "does not exist" not in exc.format_message():  # an example path, not on this machine
            pytest.fail(f"{doc}: {line}: {exc.format_message()}")
    except click.UsageError as exc:
        pytest.fail(f"{doc}: {line}: {exc.format_message()}")


def test_every_relative_link_resolves() -> None:
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, "broken links: " + ", ".join(broken)
