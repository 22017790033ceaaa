"""``saev-ops train``: train registered runs in this process (for your own Slurm batch scripts)."""

from __future__ import annotations

import click

from saev_ops.cli.context import CliContext, pass_ctx


@click.command("train")
@click.argument("run_ids", nargs=-1, type=int, required=True)
@click.option("--runs-root", type=click.Path(file_okay=False), help="Where run directories go (default: where the "
              "runs' sweep wrote them, else $SAEV_OPS_HOME/runs/<sweep name>).")
@click.option("--device", help="Override the runs' device (cpu, cuda).")
@pass_ctx
def group(obj: CliContext, run_ids: tuple[int, ...], runs_root: str | None, device: str | None) -> None:
    """Train RUN_IDS together in one pass over their dataset, against the registry named by --db/SAEV_OPS_DB_URL.
    The runs must share dataset, layer, tokens and train settings. Resumes from their last checkpoint."""
    from saev_ops.sweeps.submit import job_for_runs, requeue_ended
    from saev_ops.train import run_train_job

    spec = job_for_runs(obj.registry, run_ids, obj.db_url, runs_root=runs_root, device=device)
    requeue_ended(obj.registry, [obj.registry.get_run(rid) for rid in run_ids])  # what this command is asked for
    for rid, path in run_train_job(spec).items():
        click.echo(f"run {rid}: completed -> {path}")
