"""``saev-ops sql``: read-only SQL over the registry and its views (see docs/schema.md)."""

from __future__ import annotations

import click

from saev_ops.cli import fmt
from saev_ops.cli.context import CliContext, format_option, pass_ctx


@click.command("sql")
@click.argument("statement")
@click.option("--max-rows", type=int, default=None, help="Print at most this many rows.")
@format_option
@pass_ctx
def group(obj: CliContext, statement: str, max_rows: int | None, **kw: str) -> None:
    """Run one read-only SQL STATEMENT. Views: run_table (one row per run with summary metrics as columns),
    metric_history (one row per metric point), inference_lineage. Writes are refused by the database."""
    from saev_ops.registry.sql import run_read_only

    result = run_read_only(obj.registry, statement, max_rows=max_rows)
    click.echo(fmt.render(result.columns, result.rows, kw["fmt"]))
