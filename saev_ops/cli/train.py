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
    import pathlib

    from saev_ops import errors
    from saev_ops.datasets import require_complete
    from saev_ops.paths import default_runs_root
    from saev_ops.sae.config import SAEConfig
    from saev_ops.train import RunSpec, TrainJobSpec, TrainSettings, run_train_job

    reg = obj.registry
    runs = [reg.get_run(i) for i in run_ids]
    keys = {(r.dataset_id, r.config["layer"], r.config["tokens"], repr(sorted(r.config["train"].items())))
            for r in runs}
    if len(keys) != 1:
        raise errors.ConfigError("these runs do not share dataset, layer, tokens and train settings; train them "
                                 "in separate commands")
    dataset = reg.get_dataset_by_id(runs[0].dataset_id)
    require_complete(reg, dataset.name)
    settings = TrainSettings(**runs[0].config["train"])
    if device:
        settings = settings.model_copy(update={"device": device})
    recorded = {str(pathlib.Path(r.run_dir).parent) for r in runs if r.run_dir}
    if runs_root:
        root = pathlib.Path(runs_root)
    elif len(recorded) == 1 and all(r.run_dir for r in runs):
        root = pathlib.Path(recorded.pop())  # where their sweep's job wrote (and checkpointed) them
    elif recorded:
        raise errors.ConfigError(f"these runs were written under different roots ({', '.join(sorted(recorded))}); "
                                 "train them in separate commands or pass --runs-root")
    else:
        names = {s.id: s.name for s, _ in reg.list_sweeps()} if runs[0].sweep_id is not None else {}
        root = default_runs_root(names.get(runs[0].sweep_id) if runs[0].sweep_id is not None else None)
    layer = runs[0].config["layer"]
    spec = TrainJobSpec(
        db_url=obj.db_url, dataset=dataset.name, dataset_path=dataset.path, dataset_hash=dataset.content_hash,
        layer=dataset.layers[-1] if layer == -1 else layer, tokens=runs[0].config["tokens"], settings=settings,
        runs=tuple(RunSpec(run_id=r.id, sae=SAEConfig.from_dict(r.config["sae"]), lr=r.config["lr"],
                           seed=r.config["seed"]) for r in runs),
        runs_root=str(root))
    out = run_train_job(spec)
    for rid, path in out.items():
        click.echo(f"run {rid}: completed -> {path}")
