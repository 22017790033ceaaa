"""``saev-ops datasets``: registered activation datasets."""

from __future__ import annotations

import click

from saev_ops.cli import fmt
from saev_ops.cli.context import CliContext, format_option, pass_ctx


@click.group("datasets")
def group() -> None:
    """Activation datasets: list, show."""


@group.command("list")
@format_option
@pass_ctx
def list_(obj: CliContext, **kw: str) -> None:
    """List registered datasets."""
    rows = obj.registry.list_datasets()
    cols = ("name", "status", "model", "layers", "d_model", "tokens", "examples", "dtype", "hash", "path")
    data = [
        (d.name, d.status, f"{d.model_family}:{d.model_ckpt}", ",".join(map(str, d.layers)), d.d_model,
         d.tokens_per_example, d.n_examples, d.dtype, d.content_hash[:12], d.path)
        for d in rows
    ]
    click.echo(fmt.render(cols, data, kw["fmt"]))


@group.command("show")
@click.argument("name")
@format_option
@pass_ctx
def show(obj: CliContext, name: str, **kw: str) -> None:
    """Show one dataset with its provenance and the runs trained on it."""
    d = obj.registry.get_dataset(name)
    runs = obj.registry.runs_of_dataset(d.id)
    pairs = [
        ("name", d.name), ("status", d.status), ("content_hash", d.content_hash), ("path", d.path),
        ("source", d.source_path), ("model", f"{d.model_family}:{d.model_ckpt}"), ("layers", list(d.layers)),
        ("d_model", d.d_model), ("tokens_per_example", d.tokens_per_example), ("n_examples", d.n_examples),
        ("dtype", d.dtype), ("created_at", d.created_at), ("completed_at", d.completed_at),
        ("runs", len(runs)),
    ] + [(f"extra.{k}", v) for k, v in sorted(d.extra.items())]
    if kw["fmt"] == "table":
        click.echo(fmt.render_mapping(pairs))
    else:
        click.echo(fmt.render([k for k, _ in pairs], [[v for _, v in pairs]], kw["fmt"]))
