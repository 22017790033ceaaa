"""``saev-ops sweep``: submit grid files, follow, cancel, sync buffered metrics."""

from __future__ import annotations

import click

from saev_ops.cli import fmt
from saev_ops.cli.context import CliContext, format_option, pass_ctx


@click.group("sweep")
def group() -> None:
    """Sweeps of SAE runs: submit, list, status, watch, cancel, sync."""


@group.command("submit")
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the expanded runs and the job grouping; write nothing.")
@click.option("--retry-failed", is_flag=True, help="Also resubmit failed, lost and cancelled runs.")
@click.option("--executor", type=click.Choice(["local", "debug", "slurm"]), help="Override the file's executor.")
@click.option("--max-runs", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Refuse a grid of more runs (counted from its lists before anything is built).")
@pass_ctx
def submit(obj: CliContext, grid: str, dry_run: bool, retry_failed: bool, executor: str | None,
           max_runs: int) -> None:
    """Validate GRID (grid.yaml), register its runs and launch the new ones."""
    import dataclasses

    from saev_ops.sae.config import sparsity_field
    from saev_ops.sweeps import load_sweep, submit_sweep

    spec = load_sweep(grid, max_runs=max_runs)
    if executor:
        spec = dataclasses.replace(spec, executor=executor)
    res = submit_sweep(obj.open_registry(create=not dry_run), spec, obj.db_url, dry_run=dry_run,
                       retry_failed=retry_failed)
    for warning in res.warnings:
        click.echo(f"warning: {warning}", err=True)
    if dry_run:
        click.echo(f"sweep {res.sweep}: {res.n_runs} runs, {len(res.new_runs)} new, in {len(res.jobs)} job(s) "
                   f"[{spec.executor}] (dry run: nothing written)")
        for i, job in enumerate(res.jobs):
            click.echo(f"  job {i}: layer {job.layer}, tokens {job.tokens}, {len(job.run_ids)} runs, "
                       f"~{job.memory_gb:.2f} GB")
            for cfg in job.configs:
                sparsity = sparsity_field(cfg.sae.encoder_arch)
                click.echo(f"    {cfg.sae.arch} d_sae={cfg.sae.d_sae} {sparsity}={getattr(cfg.sae, sparsity)} "
                           f"lr={cfg.lr} seed={cfg.seed}")
        return
    click.echo(f"sweep {res.sweep}: {res.n_runs} runs, {len(res.new_runs)} new, {len(res.resubmitted)} resubmitted, "
               f"{len(res.jobs)} job(s) on {spec.executor}" + (f": {', '.join(j for j in res.job_ids if j)}"
                                                               if any(res.job_ids) else ""))


@group.command("list")
@format_option
@pass_ctx
def list_(obj: CliContext, **kw: str) -> None:
    """Sweeps with their run counts by status."""
    from saev_ops.registry.models import RUN_STATUSES

    rows = [(s.name, sum(c.values()), *[c.get(st, 0) for st in RUN_STATUSES], s.created_at)
            for s, c in obj.registry.list_sweeps()]
    click.echo(fmt.render(("sweep", "runs", *RUN_STATUSES, "created_at"), rows, kw["fmt"]))


@group.command("status")
@click.argument("name")
@click.option("--grace", type=float, default=300.0, show_default=True,
              help="Heartbeat age (s) after which a run is lost.")
@pass_ctx
def status(obj: CliContext, name: str, grace: float) -> None:
    """Reconcile NAME's runs with Slurm accounting and heartbeats, then show progress."""
    from saev_ops.registry.models import RUN_STATUSES
    from saev_ops.sweeps.status import reconcile

    obj.registry.get_sweep(name)
    for c in reconcile(obj.registry, name, grace_s=grace):
        click.echo(f"run {c.run_id}: {c.old} -> {c.new} ({c.reason})")
    counts = dict(next(c for s, c in obj.registry.list_sweeps() if s.name == name))
    click.echo(f"{name}: " + ", ".join(f"{counts.get(st, 0)} {st}" for st in RUN_STATUSES))


@group.command("watch")
@click.argument("name")
@click.option("--interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--grace", type=float, default=300.0, show_default=True,
              help="Heartbeat age (s) after which a run is lost.")
@pass_ctx
def watch(obj: CliContext, name: str, interval: float, grace: float) -> None:
    """A live table of NAME's runs (status, step, elapsed, patches/s, ETA, last metrics, held-out metrics when there
    are any) and the log folders of their jobs, refreshed until no run is queued or running. Each refresh also
    reconciles with Slurm and heartbeats, as `sweep status` does."""
    import sys
    import time

    from saev_ops.sweeps.status import reconcile
    from saev_ops.sweeps.watch import Snapshot, snapshot

    reg = obj.registry
    reg.get_sweep(name)

    def current() -> tuple[str, Snapshot]:
        reconcile(reg, name, grace_s=grace)
        snap = snapshot(reg, name)
        return snap.headline(name), snap

    if sys.stdout.isatty():
        from rich.console import Group
        from rich.live import Live
        from rich.table import Table

        def render() -> tuple[Group, bool]:
            head, snap = current()
            table = Table(*snap.columns, title=head)
            for row in snap.rows:
                table.add_row(*(fmt.cell(v) for v in row))
            return Group(table, *(f"job log: {f}" for f in snap.logs)), snap.active

        view, active = render()
        with Live(view, refresh_per_second=4) as live:
            while active:
                time.sleep(interval)
                view, active = render()
                live.update(view)
        return
    while True:  # not a terminal (a log, a pipe): the table again at each refresh
        head, snap = current()
        click.echo(head)
        click.echo(fmt.render(snap.columns, snap.rows, "table"))
        for folder in snap.logs:
            click.echo(f"job log: {folder}")
        if not snap.active:
            return
        click.echo()
        time.sleep(interval)


@group.command("cancel")
@click.argument("name")
@pass_ctx
def cancel(obj: CliContext, name: str) -> None:
    """Stop NAME's work (scancel for Slurm jobs, kill for local ones) and mark its queued and running runs
    cancelled."""
    from saev_ops.sweeps.status import cancel as do_cancel

    obj.registry.get_sweep(name)
    res = do_cancel(obj.registry, name)
    stopped = []
    if res.slurm_jobs:
        stopped.append(f"Slurm job(s) {', '.join(res.slurm_jobs)} (scancel)")
    if res.local_processes:
        stopped.append(f"local process(es) {', '.join(map(str, res.local_processes))} (killed)")
    click.echo(f"cancelled {len(res.runs)} run(s) of {name}" + (f"; stopped {'; '.join(stopped)}" if stopped else ""))


@group.command("sync")
@click.argument("runs_root", type=click.Path(exists=True, file_okay=False))
@pass_ctx
def sync(obj: CliContext, runs_root: str) -> None:
    """Ingest what jobs journaled to files (run-*/metrics.jsonl: metrics and final statuses) while the registry was
    unreachable. Safe to run while jobs still write, and again: each point is stored once."""
    import pathlib

    from saev_ops import errors
    from saev_ops.train.journal import sync_runs_root

    n_files, res = sync_runs_root(obj.registry, pathlib.Path(runs_root))
    click.echo(f"synced {res.points} metric point(s) and {res.transitions} status change(s) from {n_files} file(s)")
    if res.problems:
        raise errors.DataError(f"{len(res.problems)} record(s) not applied:\n  " + "\n  ".join(res.problems))
