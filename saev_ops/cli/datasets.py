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


@group.command("import")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--name", required=True, help="Registry name for the dataset.")
@pass_ctx
def import_(obj: CliContext, path: str, name: str) -> None:
    """Register an existing saev shard directory PATH (builds the LMDB index, checksums and statistics)."""
    import pathlib

    from saev_ops.datasets import import_dataset

    d = import_dataset(obj.registry, pathlib.Path(path), name)
    click.echo(f"imported {d.name}: {d.n_examples} examples x {d.tokens_per_example} tokens x d_model {d.d_model}, "
               f"layers {list(d.layers)}, {d.dtype} ({d.path})")


@group.command("verify")
@click.argument("name")
@click.option("--full", is_flag=True, help="Also recompute checksums and scan for NaN/Inf (reads every byte).")
@pass_ctx
def verify_(obj: CliContext, name: str, full: bool) -> None:
    """Check a dataset's files: sizes, metadata, index, sidecars (and with --full checksums and NaN/Inf)."""
    from saev_ops.datasets import verify_dataset

    record, problems = verify_dataset(obj.registry, name, full=full)
    if problems:
        for p in problems:
            click.echo(f"PROBLEM {p}", err=True)
        raise click.ClickException(f"dataset {name!r} has {len(problems)} problem(s)")
    click.echo(f"ok: {name} ({record.n_examples} examples, {'full' if full else 'quick'} check) at {record.path}")


@group.command("rm")
@click.argument("name")
@click.option("--force", is_flag=True, help="Also remove the runs and inference outputs that depend on it.")
@click.option("--delete-files", is_flag=True, help="Also delete the dataset directory.")
@pass_ctx
def rm(obj: CliContext, name: str, force: bool, delete_files: bool) -> None:
    """Remove a dataset from the registry (refuses while runs depend on it unless --force)."""
    from saev_ops.datasets import remove_dataset

    n = remove_dataset(obj.registry, name, force=force, delete_files=delete_files)
    click.echo(f"removed {name}" + (f" and {n} dependent run(s)" if n else "") + (" and its files" if delete_files else ""))
