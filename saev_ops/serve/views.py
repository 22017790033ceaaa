"""What each page of the explorer shows, as plain data (the templates lay it out; :mod:`saev_ops.serve.app` routes).

Registry reads and mapped output files only: nothing here writes to the registry or the data. Every function takes
already validated arguments; user text (``--where`` terms, sort keys, plot keys) goes through the same parsers as the
CLI (:mod:`saev_ops.registry.query`), which raise :class:`~saev_ops.errors.QueryError` with the reason.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from saev_ops import errors
from saev_ops.directions import MEANING, better
from saev_ops.explore.lineage import lineage_lines
from saev_ops.explore.pareto import frontiers, run_label
from saev_ops.registry import Registry, RunQuery, RunRow
from saev_ops.registry.params import PARAMS
from saev_ops.serve.outputs import DENSE, OutputView

SHOWN_PARAMS = ("arch", "d_sae", "k", "l1_coeff", "l0_coeff", "lr", "seed", "layer")
SHOWN_METRICS = ("nmse", "l0", "dead_frac", "val/nmse", "val/l0", "val/unfired_frac", "fidelity")
LATENTS_PER_PAGE = 100
IMAGES_PER_PAGE = 24
LATENT_SORTS = ("id", "frequency", "mean", "max", "purity")


def _finite(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else None


def home(registry: Registry) -> dict[str, Any]:
    outputs = registry.list_outputs()
    datasets = {d.id: d for d in registry.list_datasets()}
    return {
        "sweeps": [{"name": s.name, "created": s.created_at, "counts": counts, "n": sum(counts.values())}
                   for s, counts in registry.list_sweeps()],
        "datasets": list(datasets.values()),
        "outputs": [{"o": o, "dataset": datasets[o.dataset_id].name if o.dataset_id in datasets else "?"}
                    for o in outputs],
    }


def _keys(rows: list[RunRow]) -> tuple[list[str], list[str]]:
    """(hyperparameters some run sets, metrics some run has), in a stable order."""
    params = [k for k in PARAMS if any(r.params.get(k) is not None for r in rows)]
    metrics = sorted({k for r in rows for k in r.summary})
    return params, metrics


def sweep(registry: Registry, name: str, where: tuple[str, ...], sort: str | None) -> dict[str, Any]:
    """The sweep's runs (filtered and sorted as ``runs list``), with live progress, and the keys a plot can use."""
    from saev_ops.sweeps.watch import snapshot

    record = registry.get_sweep(name)
    rows = registry.list_runs(RunQuery(sweep=name, where=where, sort=sort))
    every = registry.list_runs(RunQuery(sweep=name))
    params, metrics = _keys(every)
    snap = snapshot(registry, name, every)
    at = {c: i for i, c in enumerate(snap.columns)}
    live = {line[0]: {c: line[at[c]] for c in ("step", "elapsed", "patches/s", "eta")} for line in snap.rows}
    shown_params = [k for k in SHOWN_PARAMS if k in params]
    shown_metrics = [k for k in SHOWN_METRICS if k in metrics] or metrics[:6]
    table = [{"id": r.run.id, "status": r.run.status, **live.get(r.run.id, {}),
              "params": [r.params.get(k) for k in shown_params],
              "metrics": [_finite(r.summary.get(k)) for k in shown_metrics]} for r in rows]
    return {"sweep": record, "rows": table, "params": shown_params, "metrics": shown_metrics,
            "all_keys": params + metrics, "metric_keys": metrics, "counts": snap.counts, "active": snap.active,
            "where": where, "sort": sort or "", "n_all": len(every),
            "meaning": {k: MEANING.get(k.removeprefix("val/"), "") for k in shown_metrics}}


def check_key(rows: list[RunRow], key: str, what: str) -> str:
    params, metrics = _keys(rows)
    if key not in params and key not in metrics:
        raise errors.QueryError(f"{what} {key!r} is neither a hyperparameter nor a metric of these runs; "
                                f"known: {', '.join(params + metrics)}")
    return key


def points(registry: Registry, name: str, x: str, y: str, group_by: str | None,
           where: tuple[str, ...] = ()) -> dict[str, Any]:
    """Scatter points and per-group Pareto frontiers of ``x`` against ``y``, each judged in its own direction."""

    registry.get_sweep(name)
    rows = registry.list_runs(RunQuery(sweep=name, where=where))
    for key, what in ((x, "x"), (y, "y"), *(((group_by, "group by"),) if group_by else ())):
        check_key(rows, key, what)
    fronts = frontiers(rows, x, y, group_by)
    by_id = {r.run.id: r for r in rows}
    groups = []
    for g, (pts, front) in fronts.items():
        groups.append({
            "group": g,
            "points": [{"x": px, "y": py, "run": rid, "label": run_label(by_id[rid]), "status": by_id[rid].run.status}
                       for px, py, rid in pts],
            "frontier": [{"x": px, "y": py, "run": rid} for px, py, rid in front],
        })
    return {"x": x, "y": y, "group_by": group_by, "better": {"x": better(x), "y": better(y)}, "groups": groups}


def curves(registry: Registry, run_ids: list[int], key: str) -> dict[str, Any]:
    """Each run's history of ``key`` and, for a training metric, of its held-out twin ``val/<key>`` beside it."""
    keys = [key] if key.startswith("val/") else [key, f"val/{key}"]
    out = []
    for rid in run_ids:
        for k in keys:
            pts = registry.metric_history(rid, k)
            if pts:
                out.append({"run": rid, "key": k, "held_out": k.startswith("val/"), "step": [p.step for p in pts],
                            "value": [_finite(p.value) for p in pts]})
    return {"key": key, "series": out}


def run(registry: Registry, run_id: int) -> dict[str, Any]:
    detail = registry.run_detail(run_id)
    row = detail.row
    keys = sorted({p.key for p in registry.metric_history(run_id)})
    peers = registry.list_runs(RunQuery(sweep=row.sweep) if row.sweep else RunQuery(dataset=row.dataset))
    datasets = {d.id: d.name for d in registry.list_datasets()}
    return {
        "row": row, "dataset": detail.dataset, "sweep": detail.sweep,
        "summary": sorted((k, _finite(v)) for k, v in row.summary.items()),
        "params": [(k, v) for k, v in row.params.items() if v is not None],
        "lineage": lineage_lines(registry, f"run:{run_id}"),
        "outputs": [{"o": o, "dataset": datasets.get(o.dataset_id, "?")} for o in detail.outputs],
        "evaluations": [{"e": e, "dataset": datasets.get(e.dataset_id, "?"), **e.figures()}
                        for e in detail.evaluations],
        "curve_keys": keys,
        "peers": [r.run.id for r in peers if r.run.id != run_id and r.run.status == "completed"],
    }


def compare(registry: Registry, a: int, b: int) -> dict[str, Any]:
    from saev_ops.explore.compare import compare_runs

    (c,) = compare_runs(registry, (a, b))
    def figures(s: Any) -> list[tuple[str, Any]]:
        return [(f"best-match cosine, each atom of run {a} in run {b}", s.best_match_ab),
                (f"best-match cosine, each atom of run {b} in run {a}", s.best_match_ba),
                ("mean cosine of a one-to-one matching", s.matched),
                ("share of matched pairs above 0.9", s.matched_above)]

    return {"a": a, "b": b, "trained": figures(c.trained),
            "initial": figures(c.initial) if c.initial is not None else None, "shared_init": c.shared_init}


def output(view: OutputView, sort: str, descending: bool, page: int, show: str) -> dict[str, Any]:
    """The output's latents as a table page: frequency, mean and max activation, label purity, dead or dense."""
    freq, mean, top = view.stats["frequency"], view.stats["mean"], view.stats["max"]
    purity = np.asarray(view.index.purity, dtype=np.float64)
    top_label = np.asarray(view.index.top_label)
    ids = np.arange(len(freq))
    if show == "alive":
        ids = ids[freq > 0]
    elif show == "dead":
        ids = ids[freq == 0]
    elif show == "dense":
        ids = ids[freq > DENSE]
    if sort != "id":
        key = {"frequency": freq, "mean": mean, "max": top, "purity": np.nan_to_num(purity, nan=-1.0)}[sort][ids]
        order = np.lexsort((ids, -key if descending else key))
        ids = ids[order]
    elif descending:
        ids = ids[::-1]
    n_pages = max(1, math.ceil(len(ids) / LATENTS_PER_PAGE))
    page = min(page, n_pages - 1)
    shown = ids[page * LATENTS_PER_PAGE : (page + 1) * LATENTS_PER_PAGE]
    rows = [{"id": int(j), "frequency": float(freq[j]), "mean": float(mean[j]), "max": float(top[j]),
             "purity": None if np.isnan(purity[j]) else float(purity[j]),
             "label": view.labels.name(top_label[j]), "kind": _kind(freq[j])} for j in shown]
    return {"view": view, "o": view.record, "rows": rows, "page": page, "n_pages": n_pages, "n": len(ids), "sort": sort,
            "descending": descending, "show": show, "n_dead": int((freq == 0).sum()),
            "n_dense": int((freq > DENSE).sum()), "n_latents": len(freq),
            "hist": _histogram(np.log10(freq[freq > 0]), 40)}


def _kind(frequency: float) -> str:
    return "dead" if frequency == 0 else "dense" if frequency > DENSE else ""


def _histogram(values: np.ndarray, bins: int) -> dict[str, list[float]]:
    """Counts and bin edges of ``values`` (both empty without values), for the page's plot."""
    counts, edges = np.histogram(values, bins=bins) if len(values) else (np.zeros(0), np.zeros(0))
    return {"counts": counts.tolist(), "edges": edges.tolist()}


def _heat(view: OutputView, example: int, latent: int) -> list[list[float]] | None:
    tokens, cols, vals = view.example_rows(example)
    hit = cols == latent
    return view.patch_grid(tokens[hit], vals[hit])


def _distribution(values: np.ndarray, names: dict[int, str], none: int, n: int = 12) -> list[tuple[str, int, float]]:
    """(label, count, share) of the ``n`` commonest labels among ``values`` (``none`` left out)."""
    values = values[values != none]
    if len(values) == 0:
        return []
    counts = np.bincount(values)
    order = np.argsort(-counts, kind="stable")[:n]
    return [(names.get(int(i), str(int(i))), int(counts[i]), float(counts[i] / len(values))) for i in order
            if counts[i] > 0]


def latent(view: OutputView, j: int, page: int) -> dict[str, Any]:
    """A latent: its statistics, its images strongest first (a page of them, each with its patch grid), the image and
    patch labels among its activations, and a histogram of its activations."""
    view.check_latent(j)
    rows, values = view.index.of(j)
    rows, values = np.asarray(rows, dtype=np.int64), np.asarray(values)
    examples = rows // view.per
    first = np.unique(examples, return_index=True)[1]  # rows are strongest first: an image's first row is its best
    first.sort()
    n_images = len(first)
    n_pages = max(1, math.ceil(n_images / IMAGES_PER_PAGE))
    page = min(page, n_pages - 1)
    tiles = []
    vmax = float(values[0]) if len(values) else 1.0
    for i in first[page * IMAGES_PER_PAGE : (page + 1) * IMAGES_PER_PAGE]:
        ex = int(examples[i])
        tiles.append({"example": ex, "value": float(values[i]), "grid": _heat(view, ex, j),
                      "label": view.labels.of(ex)})
    image_labels = view.labels.labels[examples[first]] if len(view.labels.labels) else np.zeros(0, np.int32)
    patch = view.patch_label_of(rows)
    freq = float(view.stats["frequency"][j])
    purity = float(view.index.purity[j])
    return {"view": view, "o": view.record, "latent": j, "page": page, "n_pages": n_pages, "n_images": n_images,
            "n_rows": len(rows),
            "tiles": tiles, "vmax": vmax, "frequency": freq, "mean": float(view.stats["mean"][j]),
            "max": float(view.stats["max"][j]), "purity": None if math.isnan(purity) else purity,
            "kind": _kind(freq),
            "image_labels": _distribution(image_labels.astype(np.int64), view.labels.names, -1),
            "patch_labels": _distribution(patch, {}, 255) if patch is not None else None,
            "hist": _histogram(values, 30)}


def image(view: OutputView, example: int, n_per_patch: int = 12) -> dict[str, Any]:
    """An image with, for each patch, how many latents fire there and the ``n_per_patch`` strongest, and the image's
    top latents."""
    view.check_example(example)
    tokens, cols, vals = view.example_rows(example)
    first, n_patches, side = view.layout()
    patches: dict[str, list[tuple[int, float]]] = {}
    totals: dict[str, int] = {}
    counts = np.zeros(n_patches, dtype=np.int64)
    for t, n in zip(*np.unique(tokens, return_counts=True), strict=True):
        hit = tokens == t
        order = np.argsort(-vals[hit], kind="stable")[:n_per_patch]
        p = int(t) - first
        patches[str(p)] = [(int(c), float(v)) for c, v in zip(cols[hit][order], vals[hit][order], strict=True)]
        totals[str(p)] = int(n)  # every latent that fires there, not only those listed
        if 0 <= p < n_patches:
            counts[p] = n
    best: dict[int, float] = {}
    for c, v in zip(cols.tolist(), vals.tolist(), strict=True):
        best[c] = max(v, best.get(c, 0.0))
    top = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:24]
    return {"view": view, "o": view.record, "example": example, "side": side, "patches": patches, "totals": totals,
            "other_tokens": {k: v for k, v in patches.items() if not 0 <= int(k) < n_patches},
            "count_grid": counts.reshape(side, side).tolist() if side else None, "top": top,
            "label": view.labels.of(example)}
