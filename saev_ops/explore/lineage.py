"""The chain image set -> dataset -> runs -> inference outputs, as a tree, starting from any of them."""

from __future__ import annotations

from saev_ops import errors
from saev_ops.registry import Registry, RunQuery


def lineage_lines(registry: Registry, ref: str) -> list[str]:
    """``ref``: ``dataset:NAME``, ``run:ID``, ``output:ID``, ``sweep:NAME``, a dataset name, or a run id."""
    kind, sep, key = ref.partition(":")
    if not sep:
        kind, key = ("run", ref) if ref.isdigit() else ("dataset", ref)
    only_output: int | None = None
    if kind == "run":
        datasets = [registry.get_dataset_by_id(registry.get_run(int(key)).dataset_id)]
        only_runs = {int(key)}
    elif kind == "output":
        out = registry.get_output(int(key))
        datasets = [registry.get_dataset_by_id(registry.get_run(out.run_id).dataset_id)]
        only_runs = {out.run_id}
        only_output = out.id
    elif kind == "dataset":
        datasets = [registry.get_dataset(key)]
        only_runs = None
    elif kind == "sweep":
        rows = registry.list_runs(RunQuery(sweep=key))
        datasets = [registry.get_dataset(n) for n in sorted({r.dataset for r in rows})]
        only_runs = {r.run.id for r in rows}
    else:
        raise errors.QueryError(f"lineage {ref!r}: expected dataset:NAME, run:ID, output:ID or sweep:NAME")
    lines = []
    for d in datasets:
        images = d.extra.get("provenance", {}).get("images", {})
        lines.append(f"images {d.source_path or '?'}" + (f" ({images.get('n_files')} files)" if images else ""))
        lines.append(f"└── dataset {d.name} [{d.status}] model {d.model} layers {list(d.layers)} "
                     f"{d.n_examples} examples  {d.path}")
        runs = [r for r in registry.list_runs(RunQuery(dataset=d.name)) if only_runs is None or r.run.id in only_runs]
        for i, r in enumerate(runs):
            last = i == len(runs) - 1
            sae = r.run.config.get("sae", {})
            nmse = r.summary.get("nmse")
            lines.append(f"    {'└──' if last else '├──'} run {r.run.id} [{r.run.status}] sweep {r.sweep or '-'} "
                         f"{sae.get('arch', '?')} d_sae={sae.get('d_sae', '?')} k={sae.get('k', '?')}"
                         + (f" nmse={nmse:.4g}" if nmse is not None else ""))
            for o in registry.list_outputs(run_id=r.run.id):
                if only_output is not None and o.id != only_output:
                    continue
                od = registry.get_dataset_by_id(o.dataset_id)
                lines.append(f"    {'    ' if last else '│   '}└── output {o.id} on {od.name}: {o.n_rows}x{o.n_cols}, "
                             f"nnz {o.nnz}  {o.path}")
            if only_output is None:
                for e in registry.list_evaluations(run_id=r.run.id):
                    ed = registry.get_dataset_by_id(e.dataset_id)
                    score = f"fidelity {e.fidelity:.4g}" if e.fidelity is not None else "fidelity -"
                    lines.append(f"    {'    ' if last else '│   '}└── eval on {ed.name} ({e.extra.get('model', '?')}, "
                                 f"{e.n_images} images): {score}")
        if kind == "dataset":  # what was computed on this dataset by SAEs trained on other datasets
            foreign = [o for o in registry.list_outputs(dataset_id=d.id)
                       if registry.get_run(o.run_id).dataset_id != d.id]
            if foreign:
                lines.append(f"    outputs on {d.name} from runs trained elsewhere:")
            for i, o in enumerate(foreign):
                src = registry.get_dataset_by_id(registry.get_run(o.run_id).dataset_id)
                lines.append(f"    {'└──' if i == len(foreign) - 1 else '├──'} output {o.id} by run {o.run_id} "
                             f"(trained on {src.name}): {o.n_rows}x{o.n_cols}, nnz {o.nnz}  {o.path}")
    return lines
