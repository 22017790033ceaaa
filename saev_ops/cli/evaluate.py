"""``saev-ops eval``: SAEs spliced back into their model (downstream fidelity)."""

from __future__ import annotations

import click

from saev_ops.cli import fmt
from saev_ops.cli.context import CliContext, format_option, pass_ctx


@click.command("eval")
@click.argument("targets", nargs=-1, required=True)
@click.option("--dataset", required=True, help="Dataset whose images and model are used (recorded by saev-ops).")
@click.option("--n-images", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images, spread evenly over the dataset.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Images per forward.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--allow-model-mismatch", is_flag=True,
              help="Evaluate SAEs trained on another model's activations; refused by default.")
@format_option
@pass_ctx
def evaluate(obj: CliContext, targets: tuple[str, ...], dataset: str, n_images: int, batch_size: int, device: str,
             allow_model_mismatch: bool, **kw: str) -> None:
    """Splice each SAE of TARGETS (run ids or sweep names) into --dataset's model at its layer and tokens, and score
    how much of the model's output survives: fidelity = 1 - d(spliced, clean) / d(mean-ablated, clean) on the final
    representation, KL of the class distribution (classifier checkpoints), linear-probe accuracy (labelled datasets).
    Runs in this process."""
    from saev_ops.downstream.run import EvalSpec, run_eval
    from saev_ops.infer.provenance import resolve_runs

    ids = resolve_runs(obj.registry, targets)
    results = run_eval(EvalSpec(db_url=obj.db_url, run_ids=ids, dataset=dataset, n_images=n_images,
                                batch_size=batch_size, device=device, allow_model_mismatch=allow_model_mismatch))
    rows = [(e.run_id, e.extra.get("layer"), e.extra.get("tokens"), e.n_images, *e.figures().values())
            for e in results]
    click.echo(fmt.render(("run", "layer", "tokens", "images", "fidelity", "kl", "probe_clean", "probe_spliced"),
                          rows, kw["fmt"]))
