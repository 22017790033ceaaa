"""``saev-ops sql``: read-only SQL over the registry and its views (see docs/schema.md)."""

from __future__ import annotations

import click

from saev_ops.cli import fmt
from saev_ops.cli.context import CliContext, format_option, pass_ctx

DEFAULT_MAX_ROWS = 10_000


@click.command("sql")
@click.argument("statement")
@click.option("--max-rows", type=click.IntRange(min=0), default=DEFAULT_MAX_ROWS, show_default=True,
              help="Fetch and print at most this many rows (0: no limit). Rows are streamed, so this bounds memory.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Stop the statement after this many seconds.")
@click.option("--max-bytes", type=click.IntRange(min=1024), default=64 << 20, show_default=True,
              help="Refuse a result whose values add up to more than this many bytes (checked as rows stream, before "
                   "they are held; on PostgreSQL it also bounds the server's temporary files).")
@format_option
@pass_ctx
def group(obj: CliContext, statement: str, max_rows: int, timeout_s: float, max_bytes: int, **kw: str) -> None:
    """Run one read-only SQL query (SELECT, WITH, VALUES, TABLE). Views: run_table (one row per run with its
    hyperparameters and summary metrics as columns), output_table (one row per inference output with its metrics),
    metric_history (one row per metric point), inference_lineage. Column names spell the CLI's metric keys with '_'
    for '/': val/nmse is val_nmse (docs/schema.md). Writes, files, programs,
    settings, volatile functions and other sessions are refused (on PostgreSQL the query runs as this registry's own
    reader role, saev_ops_reader_<registry id>)."""
    from saev_ops.registry.sql import run_read_only

    result = run_read_only(obj.registry, statement, max_rows=max_rows or None, timeout_s=timeout_s,
                           max_bytes=max_bytes)
    click.echo(fmt.render(result.columns, result.rows, kw["fmt"]))
    if result.truncated:
        click.echo(f"(stopped after {len(result.rows)} rows; --max-rows N shows more, 0 all)", err=True)
