"""Pareto frontiers of runs over two keys, each in its own direction (:mod:`saev_ops.directions`: lower L0, lower
NMSE, higher fidelity), and their plot.

A key is a summary metric (``nmse``, ``val/nmse``, ``fidelity``) or a hyperparameter (``d_sae``, ``lr``), whichever
:meth:`~saev_ops.registry.RunRow.value` finds. Held-out metrics are the default when the runs have them.
"""

from __future__ import annotations

import pathlib
from typing import Any

from saev_ops import atomic, errors
from saev_ops.directions import best_first_descending, describe
from saev_ops.extras import require
from saev_ops.registry import Registry, RunQuery, RunRow
from saev_ops.sae.config import ARCHS, sparsity_field

Point = tuple[float, float, int]
_KNOB_LABEL = {"l1_coeff": "l1 ", "l0_coeff": "l0c ", "k": "k"}  # how a label writes the sparsity field


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def run_label(r: RunRow) -> str:
    """A run as a reader tells it apart: id, architecture, width and k or penalty."""
    sae = r.run.config.get("sae", {})
    arch = sae.get("arch", "?")
    field = sparsity_field(arch)
    knob = f"{_KNOB_LABEL[field]}{sae.get(field)}"
    return f"#{r.run.id} {arch} {sae.get('d_sae', '?')} {knob}"


def frontier(rows: list[RunRow], x: str, y: str) -> tuple[list[Point], list[Point]]:
    """(all points, frontier points) as (x, y, run id); a point is on the frontier if no other is at least as good on
    both keys and better on one, each key judged in its own direction (a key with none: lower is better). Frontier
    points are in order of x, best x first."""
    sx = -1.0 if best_first_descending(x) else 1.0
    sy = -1.0 if best_first_descending(y) else 1.0
    pts = []
    for r in rows:
        value = getattr(r, "value", None)
        px = _number(value(x) if value else r.summary.get(x))
        py = _number(value(y) if value else r.summary.get(y))
        if px is not None and py is not None:
            pts.append((px, py, r.run.id))
    pts.sort()
    front = []
    best = float("inf")
    for px, py, rid in sorted(pts, key=lambda p: (sx * p[0], sy * p[1])):
        if sy * py < best:
            front.append((px, py, rid))
            best = sy * py
    return pts, front


DEFAULT_L0_BUDGET = 32.0
"""The sparsity budget "best" is chosen under when none is given: at most this many active latents per row."""


def best_under(rows: list[RunRow], x: str, y: str, budget: float) -> RunRow | None:
    """The run a researcher would pick: the best ``y`` (in its direction) among runs whose ``x`` is within ``budget``
    (an L0 budget: sparse enough to be read); None when no run is within it."""
    sy = -1.0 if best_first_descending(y) else 1.0
    within = [(sy * float(r.value(y)), r.run.id, r) for r in rows
              if _number(r.value(x)) is not None and _number(r.value(y)) is not None and float(r.value(x)) <= budget]
    return min(within, key=lambda t: (t[0], t[1]))[2] if within else None


def frontiers(rows: list[RunRow], x: str, y: str, group_by: str | None = None) -> dict[str, tuple[list[Point],
                                                                                                  list[Point]]]:
    """One frontier per value of ``group_by`` (a hyperparameter or metric; all runs in one group when None)."""
    groups: dict[str, list[RunRow]] = {}
    for r in rows:
        key = "all" if group_by is None else str(r.value(group_by))
        groups.setdefault(key, []).append(r)
    return {g: frontier(rs, x, y) for g, rs in sorted(groups.items())}


def default_key(rows: list[RunRow], key: str) -> str:
    """``val/<key>`` when any run has that held-out metric, else ``key``."""
    return f"val/{key}" if any(f"val/{key}" in r.summary for r in rows) else key


def arch_colors(archs: list[str]) -> dict[str, str]:
    """One fixed colour per architecture (the same arch has the same colour in every plot)."""

    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
    known = {a: palette[i % len(palette)] for i, a in enumerate(ARCHS)}
    extra = [a for a in archs if a not in known]
    return {a: known.get(a, palette[(len(ARCHS) + extra.index(a)) % len(palette)] if a in extra else palette[-1])
            for a in archs}


def pareto_plot(registry: Registry, sweep: str, x: str | None, y: str | None, out: pathlib.Path, *,
                group_by: str | None = None) -> dict[str, Any]:
    """Scatter of the sweep's runs coloured by ``group_by`` (default: architecture), one frontier per group when
    ``group_by`` is given (else one over all runs), frontier runs labelled; a log x axis when ``x`` spans more than
    10x. ``x``/``y`` default to L0 and NMSE, held-out when the runs have them."""

    require("matplotlib", "plot", "plotting").use("Agg")
    import matplotlib.pyplot as plt

    rows = registry.list_runs(RunQuery(sweep=sweep))
    x = x or default_key(rows, "l0")
    y = y or default_key(rows, "nmse")
    groups = frontiers(rows, x, y, group_by)
    pts = [p for g in groups.values() for p in g[0]]
    if not pts:
        raise errors.QueryError(f"no run of sweep {sweep!r} has both {x!r} and {y!r} (metrics or hyperparameters)")
    colour_key = group_by or "arch"
    label_of = {r.run.id: str(r.value(colour_key)) for r in rows}
    labels = {r.run.id: run_label(r) for r in rows}
    colors = arch_colors(sorted(set(label_of.values())))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for a, color in colors.items():
        sel = [(px, py) for px, py, rid in pts if label_of[rid] == a]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], label=f"{a} ({len(sel)})", color=color, alpha=0.8,
                       s=28)
    for g, (_, front) in groups.items():
        color = "black" if group_by is None else colors.get(g, "black")
        ax.plot([p[0] for p in front], [p[1] for p in front], color=color, ls="--", lw=1,
                label="Pareto frontier" if group_by is None else f"frontier {g}")
        for px, py, rid in front:
            ax.annotate(labels.get(rid, f"#{rid}"), (px, py), fontsize=7, xytext=(4, 4), textcoords="offset points")
    xs = [p[0] for p in pts]
    log_x = min(xs) > 0 and max(xs) / min(xs) > 10
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(f"{x} (log scale)" if log_x else x)
    ax.set_ylabel(y)
    ax.set_title(f"{sweep}: {y} vs {x} ({describe(x, y)})", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              title=f"{colour_key} (runs)")
    fig.tight_layout()
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_file(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    front_all = frontier(rows, x, y)[1] if group_by is not None else groups["all"][1]
    return {"points": sorted(pts), "frontier": front_all, "groups": {g: f for g, (_, f) in groups.items()},
            "path": str(out), "log_x": log_x, "x": x, "y": y}
