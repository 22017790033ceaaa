"""``saev-ops datasets``: registered activation datasets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from saev_ops.cli import fmt
from saev_ops.cli.context import CliContext, executor_options, format_option, pass_ctx
from saev_ops.tokens import RECORDABLE

if TYPE_CHECKING:
    from saev_ops.record import RecordSpec


@click.group("datasets")
def group() -> None:
    """Activation datasets: record, import, list, show, verify, rm."""


@group.command("list")
@format_option
@pass_ctx
def list_(obj: CliContext, **kw: str) -> None:
    """List registered datasets."""
    rows = obj.registry.list_datasets()
    cols = ("name", "status", "model", "layers", "d_model", "tokens", "examples", "dtype", "path")
    data = [
        (d.name, d.status, d.model, ",".join(map(str, d.layers)), d.d_model, d.tokens_per_example, d.n_examples,
         d.dtype, d.path)
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
        ("source", d.source_path), ("model", d.model), ("layers", list(d.layers)),
        ("d_model", d.d_model), ("tokens_per_example", d.tokens_per_example), ("n_examples", d.n_examples),
        ("dtype", d.dtype), ("created_at", d.created_at), ("completed_at", d.completed_at),
        ("runs", len(runs)),
    ] + [(f"extra.{k}", v) for k, v in sorted(d.extra.items())]
    from saev_ops.datasets import split_progress

    parts = split_progress(d)
    if parts is not None:
        pairs.insert(2, ("parts", parts))
    if kw["fmt"] == "table":
        click.echo(fmt.render_mapping(pairs))
    else:
        click.echo(fmt.render([k for k, _ in pairs], [[v for _, v in pairs]], kw["fmt"]))


@group.command("import")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--name", required=True, help="Registry name for the dataset.")
@click.option("--registers", type=click.IntRange(min=0), help="Register tokens at the start of each example's content "
              "tokens (a directory recorded from a register model with its registers kept).")
@pass_ctx
def import_(obj: CliContext, path: str, name: str, registers: int | None) -> None:
    """Register an existing saev shard directory PATH (builds the LMDB index with image paths and labels from saev's
    fields, checksums and statistics; a copy of a saev-ops dataset is verified against its own checksums)."""
    import pathlib

    from saev_ops.datasets import import_dataset

    d = import_dataset(obj.open_registry(create=True), pathlib.Path(path), name, registers=registers)
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
    click.echo(f"removed {name}" + (f" and {n} dependent run(s)" if n else "")
               + (" and its files" if delete_files else ""))


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 6,11 or -1, got {value!r}") from None


@group.command("record")
@click.option("--name", required=True, help="Registry name of the dataset.")
@click.option("--images", required=True, help="Image folder (class sub-folders = labels) or a file list.")
@click.option("--model", required=True, metavar="FAMILY:CKPT",
              help="builtin:tiny|small|base[@SEED] (no download), vit:DIR, clip:DIR, dinov2:DIR, siglip:DIR, "
              "dinov3:DIR, siglip2:DIR, timm:DIR, open_clip:DIR "
              "(timm/open_clip also hf-hub:REPO from the local cache, or ARCH@WEIGHTS).")
@click.option("--masks", type=click.Path(file_okay=False), help="Segmentation masks (a PNG of class ids per image, "
              "at its path relative to --images): each patch's class goes to saev's labels.bin (--pixel-agg).")
@click.option("--pixel-agg", type=click.Choice(["majority", "prefer-fg"]), default="majority", show_default=True,
              help="With --masks, saev's rule for a patch's class: the most common class of its pixels, or "
              "(prefer-fg) the most common class other than the background, 0, whenever the patch has any.")
@click.option("--layers", default="-1", show_default=True, callback=_int_list, help="Blocks to record, e.g. 6,11.")
@click.option("--tokens", type=click.Choice(list(RECORDABLE)), default="cls+patches", show_default=True,
              help="Tokens kept per image: cls+patches is saev's layout (registers dropped); all keeps registers "
              "(saev reads them as patches).")
@click.option("--resolution", type=int, help="Image side in pixels for transformers models that take variable sizes "
              "(overrides the image processor's size; a multiple of the patch size).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--workers", "n_workers", type=int, default=4, show_default=True, help="Image decoding threads.")
@click.option("--max-tokens-per-shard", type=int, default=2_000_000, show_default=True)
@click.option("--data-root", type=click.Path(file_okay=False), help="Where datasets go (default $SAEV_OPS_HOME/data).")
@click.option("--strict", is_flag=True, help="Fail on the first unreadable image instead of skipping it.")
@click.option("--force", is_flag=True, help="Record again even if this exact recording exists.")
@click.option("--jobs", "n_jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the images into this many ranges (aligned to shards) recorded at once: processes on this "
              "machine, or a Slurm array; the last to finish joins them. The same dataset, byte for byte, as one job; "
              "a rerun records only unfinished parts.")
@click.option("--task", type=click.IntRange(min=0), help="Record only part TASK of --jobs (e.g. $SLURM_ARRAY_TASK_ID "
              "in your own batch script) in this process; the last part to finish joins them.")
@executor_options("record")
@pass_ctx
def record(obj: CliContext, executor: str, slurm_opts: tuple[str, ...], n_jobs: int, task: int | None,
           **kw: object) -> None:
    """Record a model's activations over an image set into a registered dataset (resumes an interrupted one)."""
    from saev_ops.record.recorder import RecordSpec, print_progress, record_dataset

    spec = RecordSpec(**kw)  # type: ignore[arg-type]  # click's values, typed object here; RecordSpec checks them
    if task is not None or n_jobs > 1:
        _record_split(obj, spec, n_jobs, task, executor, slurm_opts)
        return
    if executor == "slurm":
        from saev_ops.jobs import SlurmSpec, submit_slurm_job
        from saev_ops.record.images import open_images
        from saev_ops.record.jobs import RecordJob

        open_images(spec.images)  # a wrong image path fails here, not in the queue
        job_id, logs = submit_slurm_job("record", spec.name, RecordJob(obj.db_url, spec),
                                        SlurmSpec.from_pairs(slurm_opts))
        click.echo(f"submitted recording of {spec.name} as Slurm job {job_id} (logs in {logs})")
        return
    from saev_ops.registry.models import utcnow

    started = utcnow()
    d = record_dataset(obj.open_registry(create=True), spec, progress=print_progress(f"recording {spec.name}"))
    bad = d.extra.get("n_bad_images", 0)
    reused = d.completed_at is not None and d.completed_at < started
    click.echo(f"dataset {d.name}{' reused (this exact recording exists; --force records it again)' if reused else ''}"
               f": {d.n_examples} examples x {d.tokens_per_example} tokens x d_model {d.d_model}, "
               f"layers {list(d.layers)}, {d.dtype}, {bad} bad image(s) skipped -> {d.path}")


def _record_split(obj: CliContext, spec: RecordSpec, n_jobs: int, task: int | None, executor: str,
                  slurm_opts: tuple[str, ...]) -> None:
    from saev_ops import record
    from saev_ops.registry import DatasetRecord

    reg = obj.open_registry(create=True)
    if task is not None:
        if executor == "slurm":
            raise click.UsageError("--task runs one part in this process; leave out --executor slurm")
        d = record.record_part(reg, spec, task, n_jobs)
        if d is None:
            click.echo(f"part {task} of {spec.name} done; the last part to finish joins them")
        else:
            click.echo(f"dataset {d.name}: {d.n_examples} examples (joined from its parts) -> {d.path}")
        return
    if executor == "slurm":
        from saev_ops.jobs import SlurmSpec

        out = record.submit_split(reg, obj.db_url, spec, n_jobs, SlurmSpec.from_pairs(slurm_opts))
        if isinstance(out, DatasetRecord):
            click.echo(f"dataset {out.name} is complete -> {out.path}")
        else:
            ids = sorted({str(j) for j, _ in out})
            click.echo(f"submitted {len(out)} part(s) of {spec.name} as Slurm job(s) {', '.join(ids)}; "
                       "the last to finish joins them")
        return
    d = record.record_split(reg, obj.db_url, spec, n_jobs)
    click.echo(f"dataset {d.name}: {d.n_examples} examples x {d.tokens_per_example} tokens x d_model {d.d_model}, "
               f"layers {list(d.layers)}, {d.dtype}, recorded in {d.extra.get('timings', {}).get('parts', 1)} "
               f"part(s), {d.extra.get('n_bad_images', 0)} bad image(s) skipped -> {d.path}")
