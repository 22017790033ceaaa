"""``saev-ops runs``: list, show and inspect training runs."""

from __future__ import annotations

import json
from typing import Any

import click

from saev_ops.cli import fmt
from saev_ops.cli.context import CliContext, format_option, pass_ctx

_RUN_COLUMNS = ("id", "sweep", "dataset", "status", "attempts", "host")


@click.group("runs")
def group() -> None:
    """Training runs: list (filter, sort), show, metrics (history), pareto (plot), compare, import, export."""


@group.command("list")
@click.option("--dataset", help="Only runs on this dataset (name).")
@click.option("--sweep", help="Only runs of this sweep (name).")
@click.option("--status", "statuses", multiple=True, help="Only runs in this status (repeatable).")
@click.option("--where", "where", multiple=True, metavar="EXPR",
              help="Filter on a hyperparameter, summary metric or column, e.g. 'arch=topk', 'd_sae>=4096', "
              "'val/nmse<0.2', 'l0<=64', 'status=completed' (repeatable).")
@click.option("--sort", metavar="KEY", help="Sort by a hyperparameter, metric or column, best first (nmse, l0, kl "
              "ascending; fidelity, explained_variance, cosine, probe_acc descending); '+KEY' ascending, '-KEY' "
              "descending (lr is the configured learning rate).")
@click.option("--columns", metavar="KEYS", help="Comma-separated columns to show (hyperparameters, metrics, run "
              "columns), e.g. arch,d_sae,k,lr,nmse,val/nmse; 'all' for every column. Default: id, status, arch, d_sae, "
              "k or the penalty, lr, the hyperparameters that vary, (val/)nmse, (val/)l0, fidelity, within 120 "
              "characters.")
@click.option("--limit", type=int, metavar="N", help="Show at most N runs.")
@format_option
@pass_ctx
def list_(obj: CliContext, dataset: str | None, sweep: str | None, statuses: tuple[str, ...], where: tuple[str, ...],
          sort: str | None, columns: str | None, limit: int | None, **kw: str) -> None:
    """List runs with their hyperparameters and summary metrics."""
    from saev_ops.registry import RunQuery
    from saev_ops.registry.params import PARAMS

    query = RunQuery(dataset=dataset, sweep=sweep, statuses=statuses, where=where, sort=sort, limit=limit)
    rows = obj.registry.list_runs(query)
    run_cols: dict[str, Any] = {"id": lambda r: r.run.id, "sweep": lambda r: r.sweep, "dataset": lambda r: r.dataset,
                                "status": lambda r: r.run.status, "attempts": lambda r: r.run.attempts,
                                "host": lambda r: r.run.host}
    if columns == "all":
        _list_all(rows, query.keys(), kw["fmt"])
        return
    if columns:
        chosen = [c.strip() for c in columns.split(",") if c.strip()]
        seen = {k for r in rows for k in r.summary}
        unknown = [c for c in chosen if c not in run_cols and c not in PARAMS and c not in seen]
        if unknown and rows:
            raise click.ClickException(f"--columns: unknown {unknown}; hyperparameters: {', '.join(PARAMS)}; "
                                       f"metrics: {', '.join(sorted(seen))}; columns: {', '.join(run_cols)}; or all")
        header = ["id", *[c for c in chosen if c != "id"]]
        click.echo(fmt.render(header, [[run_cols[c](r) if c in run_cols else r.value(c) for c in header]
                                       for r in rows], kw["fmt"]))
        return
    header, data = _default_table(rows, query.keys())
    if kw["fmt"] != "table":
        click.echo(fmt.render(header, data, kw["fmt"]))
        return
    text, dropped = fmt.render_within(header, data, LIST_WIDTH)
    click.echo(text)
    if dropped:
        click.echo(f"({len(dropped)} more column(s): {', '.join(dropped)}; --columns all shows every column, "
                   "--columns KEYS the ones named)", err=True)


LIST_WIDTH = 120
"""`runs list`'s default table fits this many characters; columns past it are named below the table."""


def _sparsity(r: Any) -> Any:
    """What sets a run's sparsity: k for the TopK families, the penalty for ReLU (l1_coeff) and JumpReLU (l0_coeff)."""
    from saev_ops.sae.config import sparsity_field

    return r.params.get(sparsity_field(r.params.get("arch")))


def _default_table(rows: list[Any], leading: list[str]) -> tuple[list[str], list[list[Any]]]:
    """id, status, what the SAE is (arch, d_sae, k or its penalty, lr), the hyperparameters that vary across the rows,
    the keys filtered or sorted on, then reconstruction and sparsity (held-out where the runs have them) and fidelity
    when present. `--columns all` has everything."""
    from saev_ops.registry.params import PARAMS

    cols: dict[str, Any] = {"id": lambda r: r.run.id, "status": lambda r: r.run.status}
    for key in ("sweep", "dataset"):
        if len({getattr(r, key) for r in rows}) > 1:
            cols[key] = lambda r, key=key: getattr(r, key)
    cols.update({"arch": lambda r: r.params.get("arch"), "d_sae": lambda r: r.params.get("d_sae"),
                 "k/coeff": _sparsity, "lr": lambda r: r.params.get("lr")})
    shown = {"arch", "d_sae", "k", "l1_coeff", "l0_coeff", "lr", "d_model"}
    for key in PARAMS:
        if key not in shown and len({r.params.get(key) for r in rows}) > 1:
            cols[key] = lambda r, key=key: r.params.get(key)
    summary = {k for r in rows for k in r.summary}
    for key in leading:
        if key not in cols and (key in PARAMS or key in summary):
            cols[key] = lambda r, key=key: r.value(key)
    for base in ("nmse", "l0", "fidelity"):
        key = f"val/{base}" if f"val/{base}" in summary else base
        if key in summary and key not in cols:
            cols[key] = lambda r, key=key: r.summary.get(key)
    return list(cols), [[get(r) for get in cols.values()] for r in rows]


def _list_all(rows: list[Any], leading: list[str], out_format: str) -> None:
    """Every run column, the hyperparameters filtered or sorted on (``leading``), and every summary metric."""
    from saev_ops.registry.params import PARAMS

    param_cols = [k for k in leading if k in PARAMS]
    keys = sorted({k for r in rows for k in r.summary})
    metric_cols = [k for k in leading if k in keys and k not in PARAMS] + [k for k in keys if k not in leading]
    data: list[list[Any]] = [
        [r.run.id, r.sweep, r.dataset, r.run.status, r.run.attempts, r.run.host]
        + [r.params.get(k) for k in param_cols] + [r.summary.get(k) for k in metric_cols]
        for r in rows
    ]
    click.echo(fmt.render(list(_RUN_COLUMNS) + param_cols + metric_cols, data, out_format))


@group.command("show")
@click.argument("run_id", type=int)
@format_option
@pass_ctx
def show(obj: CliContext, run_id: int, **kw: str) -> None:
    """Show a run: config, status, summary metrics and lineage."""
    d = obj.registry.run_detail(run_id)
    r = d.row.run
    if kw["fmt"] == "json":
        payload = {
            "id": r.id, "sweep": d.row.sweep, "dataset": d.row.dataset, "status": r.status, "config": r.config,
            "config_hash": r.config_hash, "executor": r.executor, "slurm_job_id": r.slurm_job_id,
            "slurm_array_index": r.slurm_array_index, "attempts": r.attempts, "host": r.host,
            "created_at": r.created_at, "started_at": r.started_at, "ended_at": r.ended_at,
            "heartbeat_at": r.heartbeat_at, "checkpoint_path": r.checkpoint_path, "error": r.error,
            "summary": d.row.summary,
            "lineage": {
                "image_source": d.dataset.source_path, "dataset": d.dataset.name,
                "dataset_path": d.dataset.path, "dataset_hash": d.dataset.content_hash,
                "outputs": [{"id": o.id, "dataset_id": o.dataset_id, "path": o.path, "shape": list(o.shape),
                             "nnz": o.nnz, "metrics": o.metrics} for o in d.outputs],
            },
            "evaluations": [{"dataset_id": e.dataset_id, "kind": e.kind, "n_images": e.n_images,
                             "fidelity": e.fidelity, "kl": e.kl, "probe_clean": e.probe_clean,
                             "probe_spliced": e.probe_spliced, "missing": e.extra.get("missing") or {}}
                            for e in d.evaluations],
        }
        click.echo(json.dumps(payload, indent=2, default=fmt.jsonable))
        return
    pairs = [
        ("id", r.id), ("sweep", d.row.sweep), ("dataset", d.row.dataset), ("status", r.status),
        ("executor", r.executor), ("slurm_job", _slurm_job(r)),
        ("attempts", r.attempts), ("host", r.host), ("created_at", r.created_at), ("started_at", r.started_at),
        ("ended_at", r.ended_at), ("heartbeat_at", r.heartbeat_at), ("checkpoint", r.checkpoint_path),
        ("config_hash", r.config_hash),
    ]
    click.echo(fmt.render_mapping(pairs))
    click.echo("\nconfig:")
    click.echo("  " + json.dumps(r.config, indent=2, sort_keys=True).replace("\n", "\n  "))
    click.echo("\nsummary:")
    click.echo(fmt.render_mapping(sorted(d.row.summary.items())) if d.row.summary else "  (no metrics yet)")
    click.echo("\nlineage:")
    click.echo(f"  images {d.dataset.source_path or '?'} -> dataset {d.dataset.name} ({d.dataset.path}) -> run {r.id}")
    for o in d.outputs:
        click.echo(f"  run {r.id} -> output {o.id}: {o.path} shape {o.n_rows}x{o.n_cols} nnz {o.nnz}")
        if o.metrics:
            click.echo("    " + fmt.metrics_line(o.metrics))
    if d.evaluations:
        click.echo("\nevaluations (the SAE spliced into its model):")
        for e in d.evaluations:
            click.echo(f"  dataset {e.dataset_id}, {e.n_images} images: " + fmt.metrics_line(e.figures()))
    if r.error:
        click.echo("\nerror:")
        click.echo("  " + r.error.rstrip().replace("\n", "\n  "))


@group.command("metrics")
@click.argument("run_id", type=int)
@click.option("--key", help="Only this metric key.")
@format_option
@pass_ctx
def metrics(obj: CliContext, run_id: int, key: str | None, **kw: str) -> None:
    """Print a run's metric history (one row per logged point)."""
    points = obj.registry.metric_history(run_id, key)
    rows = [(p.key, p.step, p.value, p.time) for p in points]
    click.echo(fmt.render(("key", "step", "value", "time"), rows, kw["fmt"]))


@group.command("pareto")
@click.option("--sweep", required=True)
@click.option("--x", "x", help="A metric or hyperparameter (default: l0, val/l0 when the runs have held-out metrics).")
@click.option("--y", "y", help="A metric or hyperparameter (default: nmse, val/nmse when present).")
@click.option("--group-by", help="One frontier per value of this hyperparameter or metric, e.g. arch.")
@click.option("--out", type=click.Path(dir_okay=False), default="pareto.png", show_default=True)
@pass_ctx
def pareto(obj: CliContext, sweep: str, x: str | None, y: str | None, group_by: str | None, out: str) -> None:
    """Plot the sweep's runs on two keys and mark the Pareto frontier (lower is better on both)."""
    import pathlib

    from saev_ops.explore.pareto import pareto_plot

    res = pareto_plot(obj.registry, sweep, x, y, pathlib.Path(out), group_by=group_by)
    click.echo(f"{len(res['points'])} runs, {res['y']} vs {res['x']} -> {out}")
    for g, front in res["groups"].items():
        name = "frontier" if group_by is None else f"frontier {group_by}={g}"
        click.echo(f"{name}: runs {', '.join(str(r) for _, _, r in front)}")


@group.command("compare")
@click.argument("run_ids", nargs=-1, type=int, required=True)
@click.option("--threshold", type=click.FloatRange(-1, 1), default=0.9, show_default=True,
              help="Cosine above which a matched pair counts as the same atom.")
@format_option
@pass_ctx
def compare(obj: CliContext, run_ids: tuple[int, ...], threshold: float, **kw: str) -> None:
    """Dictionary similarity of SAEs of one layer, pair by pair: mean best-match cosine between decoder atoms (A to B
    and B to A) and a one-to-one (Hungarian) matching's mean cosine and share of pairs above --threshold. Seed
    stability, or whether two SAEs learned the same dictionary."""
    from saev_ops.explore.compare import compare_runs
    from saev_ops.sae.compare import SHARED_INIT

    def pct(share: float | None) -> str | None:
        return None if share is None else f"{100 * share:.1f}%"

    found = compare_runs(obj.registry, run_ids, threshold=threshold)
    rows = []
    for c in found:
        t, i = c.trained, c.initial
        rows.append((c.run_a, c.run_b, t.best_match_ab, i.best_match_ab if i else None, t.best_match_ba,
                     i.best_match_ba if i else None, t.matched, i.matched if i else None, pct(t.matched_above),
                     pct(i.matched_above if i else None)))
    click.echo(fmt.render(("run_a", "run_b", "best_match_ab", "init_ab", "best_match_ba", "init_ba", "matched",
                           "init_matched", f"matched>{threshold:g}", f"init>{threshold:g}"), rows, kw["fmt"]))
    click.echo("init_*: the same figure for the runs' initial decoders (rebuilt from seed and config; empty where "
               "that needs the data or the run was imported)", err=True)
    for c in found:
        if c.shared_init:
            assert c.initial is not None  # shared_init says so
            click.echo(f"warning: runs {c.run_a} and {c.run_b} started from nearly the same decoder (best match "
                       f"{min(c.initial.best_match_ab, c.initial.best_match_ba):.3f} > {SHARED_INIT} at init): their "
                       "figures mostly measure that; train them with different seeds to compare what they learned",
                       err=True)


def _slurm_job(r: Any) -> str | None:
    """``JOB`` or ``JOB_INDEX`` for an array task; None when the run never went to Slurm."""
    if not r.slurm_job_id:
        return None
    return f"{r.slurm_job_id}_{r.slurm_array_index}" if r.slurm_array_index is not None else str(r.slurm_job_id)


@group.command("import")
@click.argument("source", type=click.Path(exists=True, path_type=str))
@click.option("--dataset", required=True, help="The dataset the SAE reads (its model, layer and token layout).")
@click.option("--layer", type=int, help="The layer it reads (default: the dataset's only layer).")
@click.option("--tokens", default="patches", show_default=True, help="The tokens it reads: patches, cls, all, ...")
@click.option("--runs-root", type=click.Path(file_okay=False), help="Default: $SAEV_OPS_HOME/runs/imported.")
@pass_ctx
def import_(obj: CliContext, source: str, dataset: str, layer: int | None, tokens: str,
            runs_root: str | None) -> None:
    """Register an SAE trained elsewhere as a completed run: SOURCE is a saev checkpoint file or a SAELens directory
    (cfg.json + sae_weights.safetensors). Then `infer`, `latents` and the report work on it."""
    import pathlib

    from saev_ops.transfer import import_run

    run, created = import_run(obj.open_registry(create=True), pathlib.Path(source), dataset=dataset, layer=layer,
                              tokens=tokens, runs_root=pathlib.Path(runs_root) if runs_root else None)
    sae = run.config["sae"]
    click.echo(f"run {run.id}{'' if created else ' (already imported)'}: {sae['arch']} d_sae={sae['d_sae']} on "
               f"{dataset} layer {run.config['layer']} -> {run.checkpoint_path}")


@group.command("export")
@click.argument("run_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["saev", "saelens"]), required=True,
              help="saev: one checkpoint file saev's load() reads; saelens: a directory SAE.load_from_disk reads.")
@click.option("--out", required=True, type=click.Path(path_type=str), help="The file (saev) or directory (saelens).")
@click.option("--strict", is_flag=True, help="Refuse an export whose latents the other format computes differently "
              "(a TopK with a ReLU to saev, whose TopK has none) instead of saying how often they differ.")
@pass_ctx
def export(obj: CliContext, run_id: int, fmt: str, out: str, strict: bool) -> None:
    """Write a run's SAE in saev's or SAELens' format (the input scale folded into the weights)."""
    import pathlib

    from saev_ops.transfer import export_run

    path = export_run(obj.registry, run_id, fmt, pathlib.Path(out), strict=strict)
    click.echo(f"run {run_id} -> {path} ({fmt})")
