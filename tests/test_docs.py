"""README's command table against the click commands: every command has a row, every option of it is in that row."""

from __future__ import annotations

import pathlib
import re

import click

from saev_ops.cli import cli

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _command_cells() -> list[str]:
    text = README.read_text()
    start = text.index("| `saev-ops [--db URL]")
    table = text[start:text.index("\n\n", start)]
    return [re.split(r"(?<!\\)\|", row)[1] for row in table.splitlines() if row.startswith("| `")]


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    if isinstance(cmd, click.Group):
        return [c for name, sub in sorted(cmd.commands.items()) for c in _commands(sub, (*path, name))]
    return [(" ".join(path), cmd)]


def test_every_command_and_option_is_in_the_readme_table() -> None:
    cells = _command_cells()
    missing = []
    for name, cmd in _commands(cli):
        rows = [c for c in cells if re.search(rf"`{re.escape(name)}( |`)|, `{re.escape(name)}( |`)", c)]
        if not rows:
            missing.append(f"command `{name}`")
            continue
        text = " ".join(rows)
        for p in cmd.params:
            longs = [o for o in getattr(p, "opts", []) if o.startswith("--")]
            if isinstance(p, click.Option) and longs and p.name != "fmt" and not any(o in text for o in longs):
                missing.append(f"`{name}` option {longs[0]}")
    assert not missing, "README's command table lacks: " + "; ".join(missing)
