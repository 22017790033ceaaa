"""The chain image set -> dataset -> runs -> inference outputs, as a tree, starting from any of them."""

from __future__ import annotations

import dataclasses

from saev_ops import errors
from saev_ops.registry import DatasetRecord, Registry, RunQuery, RunRow


@dataclasses.dataclass(frozen=True)
class _Start:
    """Where a lineage starts: the datasets it shows, and the runs and output it narrows to (None: all)."""

    kind: str
    datasets: list[DatasetRecord]
    only_runs: set[int] | None = None
    only_output: int | None = None


def lineage_lines(registry: Registry, ref: str) -> list[str]:
    """``ref``: ``dataset:NAME``, ``run:ID``, ``output:ID``, ``sweep:NAME``, a dataset name, or a run id."""
    start = _resolve(registry, ref)
    lines = []
    for d in start.datasets:
        images = d.extra.get("provenance", {}).get("images", {})
        lines.append(f"images {d.source_path or '?'}" + (f" ({images.get('n_files')} files)" if images else ""))
        lines.append(f"└── dataset {d.name} [{d.status}] model {d.model} layers {list(d.layers)} "
                     f"{d.n_examples} examples  {d.path}")
        runs = [r for r in registry.list_runs(RunQuery(dataset=d.name))
                if start.only_runs is None or r.run.id in start.only_runs]
        for i, r in enumerate(runs):
            lines += _run_lines(registry, r, i == len(runs) - 1, start.only_output)
        if start.kind == "dataset":
            lines += _foreign_outputs(registry, d)
    return lines


def _resolve(registry: Registry, ref: str) -> _Start:
    kind, sep, key = ref.partition(":")
    if not sep:
        kind, key = ("run", ref) if ref.isdigit() else ("dataset", ref)
    if kind == "run":
        return _Start(kind, [registry.get_dataset_by_id(registry.get_run(int(key)).dataset_id)], {int(key)})
    if kind == "output":
        out = registry.get_output(int(key))
        return _Start(kind, [registry.get_dataset_by_id(registry.get_run(out.run_id).dataset_id)], {out.run_id}, out.id)
    if kind == "dataset":
        return _Start(kind, [registry.get_dataset(key)])
    if kind == "sweep":
        rows = registry.list_runs(RunQuery(sweep=key))
        return _Start(kind, [registry.get_dataset(n) for n in sorted({r.dataset for r in rows})],
                      {r.run.id for r in rows})
    raise errors.QueryError(f"lineage {ref!r}: expected dataset:NAME, run:ID, output:ID or sweep:NAME")


def _run_lines(registry: Registry, r: RunRow, last: bool, only_output: int | None) -> list[str]:
    """A run's line, its outputs (only ``only_output`` when given) and, when not narrowed to an output, its
    evaluations."""
    sae = r.run.config.get("sae", {})
    nmse = r.summary.get("nmse")
    lines = [f"    {'└──' if last else '├──'} run {r.run.id} [{r.run.status}] sweep {r.sweep or '-'} "
             f"{sae.get('arch', '?')} d_sae={sae.get('d_sae', '?')} k={sae.get('k', '?')}"
             + (f" nmse={nmse:.4g}" if nmse is not None else "")]
    indent = f"    {'    ' if last else '│   '}└── "
    for o in registry.list_outputs(run_id=r.run.id):
        if only_output is None or o.id == only_output:
            od = registry.get_dataset_by_id(o.dataset_id)
            lines.append(f"{indent}output {o.id} on {od.name}: {o.n_rows}x{o.n_cols}, nnz {o.nnz}  {o.path}")
    if only_output is None:
        for e in registry.list_evaluations(run_id=r.run.id):
            ed = registry.get_dataset_by_id(e.dataset_id)
            score = f"fidelity {e.fidelity:.4g}" if e.fidelity is not None else "fidelity -"
            lines.append(f"{indent}eval on {ed.name} ({e.extra.get('model', '?')}, {e.n_images} images): {score}")
    return lines


def _foreign_outputs(registry: Registry, d: DatasetRecord) -> list[str]:
    """What was computed on dataset ``d`` by SAEs trained on other datasets."""
    foreign = [o for o in registry.list_outputs(dataset_id=d.id) if registry.get_run(o.run_id).dataset_id != d.id]
    lines = [f"    outputs on {d.name} from runs trained elsewhere:"] if foreign else []
    for i, o in enumerate(foreign):
        src = registry.get_dataset_by_id(registry.get_run(o.run_id).dataset_id)
        lines.append(f"    {'└──' if i == len(foreign) - 1 else '├──'} output {o.id} by run {o.run_id} "
                     f"(trained on {src.name}): {o.n_rows}x{o.n_cols}, nnz {o.nnz}  {o.path}")
    return lines
