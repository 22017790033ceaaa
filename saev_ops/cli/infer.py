"""``saev-ops infer``, ``latents``, ``lineage``: inference outputs and exploring them."""

from __future__ import annotations

import datetime
import itertools
from typing import TYPE_CHECKING

import click

from saev_ops.cli import fmt
from saev_ops.cli.context import CliContext, executor_options, format_option, pass_ctx

if TYPE_CHECKING:
    from saev_ops.infer import InferSpec
    from saev_ops.registry import OutputRecord


@click.command("infer")
@click.argument("target")
@click.option("--dataset", required=True, help="Dataset to run the SAEs over.")
@click.option("--out-root", type=click.Path(file_okay=False), help="Default: $SAEV_OPS_HOME/outputs.")
@click.option("--batch-size", type=int, default=16384, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--force", is_flag=True, help="Recompute outputs that exist.")
@click.option("--allow-model-mismatch", is_flag=True, help="Apply SAEs trained on another model's (or preprocessing's, "
              "or token layout's) activations; refused by default.")
@click.option("--jobs", "n_jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the examples into this many ranges computed at once: processes on this machine, or a "
              "Slurm array; the last to finish joins them into one output per SAE, the same bytes as one job.")
@click.option("--task", type=click.IntRange(min=0), help="Compute only part TASK of --jobs (e.g. "
              "$SLURM_ARRAY_TASK_ID in your own batch script) in this process; the last part to finish joins them.")
@executor_options("infer")
@pass_ctx
def infer(obj: CliContext, target: str, dataset: str, out_root: str | None, batch_size: int, device: str,
          force: bool, allow_model_mismatch: bool, n_jobs: int, task: int | None, executor: str,
          slurm_opts: tuple[str, ...]) -> None:
    """Apply TARGET's SAEs (a run id, or a sweep name: its completed runs) to --dataset in one ordered pass, writing
    one CSR .npz per run. By default in this process (use it in your own batch scripts)."""
    from saev_ops.infer import InferSpec, check_inference, run_inference
    from saev_ops.infer.provenance import resolve_runs
    from saev_ops.paths import default_outputs_root

    reg = obj.registry
    ids = resolve_runs(reg, (target,))
    spec = InferSpec(db_url=obj.db_url, run_ids=ids, dataset=dataset,
                     out_root=out_root or str(default_outputs_root()), batch_size=batch_size, device=device,
                     force=force, allow_model_mismatch=allow_model_mismatch)
    if task is not None or n_jobs > 1:
        _infer_split(spec, n_jobs, task, executor, slurm_opts)
        return
    if executor == "slurm":
        from saev_ops.infer.jobs import InferJob
        from saev_ops.jobs import SlurmSpec, submit_slurm_job

        slurm = SlurmSpec.from_pairs(slurm_opts)
        check_inference(reg, spec)  # missing data or unfinished runs fail here, not in the queue
        job_id, logs = submit_slurm_job("infer", f"{target}-{dataset}", InferJob(spec), slurm)
        click.echo(f"submitted inference of {len(ids)} run(s) on {dataset} as Slurm job {job_id} (logs in {logs})")
        return
    from saev_ops.registry.models import utcnow

    started = utcnow()
    _echo_outputs(run_inference(spec), dataset, started)


def _echo_outputs(outputs: list[OutputRecord], dataset: str, started: datetime.datetime | None) -> None:
    for o in outputs:
        kept = " kept (it exists; --force computes it again)" if started and o.created_at < started else ""
        click.echo(f"output {o.id}{kept}: run {o.run_id} on {dataset}: {o.n_rows}x{o.n_cols}, nnz {o.nnz} -> {o.path}")


def _infer_split(spec: InferSpec, n_jobs: int, task: int | None, executor: str, slurm_opts: tuple[str, ...]) -> None:
    from saev_ops.infer import run as infer_run
    from saev_ops.registry.models import utcnow

    if task is not None:
        if executor == "slurm":
            raise click.UsageError("--task runs one part in this process; leave out --executor slurm")
        job_spec, n_parts, _ = infer_run.plan_split(spec, n_jobs, submission=False)
        if not n_parts:
            click.echo("every output exists; nothing to compute")
            return
        out = infer_run.infer_part(job_spec, task)
        if out is None:
            click.echo(f"part {task} done; the last part to finish joins them")
        else:
            _echo_outputs(out, spec.dataset, None)
        return
    if executor == "slurm":
        from saev_ops.jobs import SlurmSpec

        submitted = infer_run.submit_split(spec, n_jobs, SlurmSpec.from_pairs(slurm_opts))
        if isinstance(submitted, infer_run.SplitSubmission):
            ids = ", ".join(sorted({str(j) for j, _ in submitted.jobs}))
            click.echo(f"submitted {len(submitted.jobs)} of {submitted.n_parts} inference part(s) of "
                       f"{submitted.n_runs} run(s) on {spec.dataset} as Slurm job(s) {ids}; the last to finish "
                       "joins them")
        else:
            _echo_outputs(submitted, spec.dataset, None)
        return
    started = utcnow()
    _echo_outputs(infer_run.infer_split(spec, n_jobs), spec.dataset, started)


@click.group("latents")
def latents() -> None:
    """Latents of an inference output: top (examples), stats."""


@latents.command("top")
@click.argument("output_id", type=int)
@click.argument("latent", type=int)
@click.option("-n", "n", type=int, default=20, show_default=True)
@format_option
@pass_ctx
def top(obj: CliContext, output_id: int, latent: int, n: int, **kw: str) -> None:
    """The top-activating examples and tokens of LATENT, with image path and label."""
    from saev_ops.infer import Output

    out = Output.open(obj.registry, output_id)
    rows = []
    for row, value in out.top_rows(latent, n):
        e = out.row_example(row)
        rows.append((value, e["example_idx"], e["token_idx"], e["label_name"], e["patch_label"], e["path"]))
    click.echo(fmt.render(("value", "example", "token", "label", "patch label", "image"), rows, kw["fmt"]))


@latents.command("stats")
@click.argument("output_id", type=int)
@pass_ctx
def stats(obj: CliContext, output_id: int) -> None:
    """Dead and dense latents and a histogram of log10 firing frequency."""
    import numpy as np

    from saev_ops.infer import Output

    out = Output.open(obj.registry, output_id)
    if out.record.metrics:
        click.echo("reconstruction: " + fmt.metrics_line(out.record.metrics))
    s = out.latent_stats()
    freq = s["frequency"]
    dead, dense = int((freq == 0).sum()), int((freq > 0.1).sum())
    click.echo(f"{len(freq)} latents: {dead} dead (never fire), {dense} dense (fire on > 10% of rows)")
    alive = freq[freq > 0]
    if alive.size:
        hist, edges = np.histogram(np.log10(alive), bins=10)
        for h, (a, b) in zip(hist, itertools.pairwise(edges), strict=True):
            click.echo(f"  10^{a:6.2f} .. 10^{b:6.2f}  {h:7d} {'#' * int(50 * h / max(hist.max(), 1))}")


@click.command("lineage")
@click.argument("ref")
@pass_ctx
def lineage(obj: CliContext, ref: str) -> None:
    """Image set -> dataset -> runs -> inference outputs for REF (dataset:NAME, run:ID, output:ID, sweep:NAME)."""
    from saev_ops.explore.lineage import lineage_lines

    click.echo("\n".join(lineage_lines(obj.registry, ref)))


@click.command("report")
@click.argument("sweep")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Directory for the page.")
@click.option("--output", "output_ids", type=int, multiple=True,
              help="Inference output(s) whose latents are shown (default: those of the Pareto frontier's runs).")
@click.option("--run", "run_ids", type=int, multiple=True, help="Show the latents of these runs' outputs instead.")
@click.option("--latent", "latents", type=int, multiple=True,
              help="Latents to show (default: 4 that fire on some patches but under 10%, by highest activation).")
@pass_ctx
def report(obj: CliContext, sweep: str, out_dir: str, output_ids: tuple[int, ...], run_ids: tuple[int, ...],
           latents: tuple[int, ...]) -> None:
    """Write a static HTML report of SWEEP (table, Pareto plot, curves, the best runs' latents as heat maps over their
    top images) that needs no server."""
    import pathlib

    from saev_ops.explore.report import build_report

    page = build_report(obj.registry, sweep, pathlib.Path(out_dir), output_ids=output_ids, run_ids=run_ids,
                        latents=latents)
    click.echo(f"report: {page}")
