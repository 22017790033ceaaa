"""Pareto frontier of runs over two summary metrics (lower is better on both, e.g. L0 against NMSE), and its plot."""

from __future__ import annotations

import pathlib
from typing import Any

from saev_ops import atomic, errors
from saev_ops.registry import Registry, RunQuery, RunRow

Point = tuple[float, float, int]


def frontier(rows: list[RunRow], x: str, y: str) -> tuple[list[Point], list[Point]]:
    """(all points, frontier points) as (x, y, run id); a point is on the frontier if no other is <= on both and < on
    one."""
    pts = sorted((r.summary[x], r.summary[y], r.run.id) for r in rows if x in r.summary and y in r.summary)
    front = []
    best = float("inf")
    for px, py, rid in pts:
        if py < best:
            front.append((px, py, rid))
            best = py
    return pts, front


def arch_colors(archs: list[str]) -> dict[str, str]:
    """One fixed colour per architecture (the same arch has the same colour in every plot)."""
    from saev_ops.sae.config import ARCHS

    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
    known = {a: palette[i % len(palette)] for i, a in enumerate(ARCHS)}
    return {a: known.get(a, palette[-1]) for a in archs}


def pareto_plot(registry: Registry, sweep: str, x: str, y: str, out: pathlib.Path) -> dict[str, Any]:
    """Scatter of the sweep's runs, one colour per architecture, the frontier drawn and each frontier run labelled;
    a log x axis when ``x`` spans more than 10x (L0 of ReLU and TopK runs differ by that much)."""
    from saev_ops.extras import require

    require("matplotlib", "plot", "plotting").use("Agg")
    import matplotlib.pyplot as plt

    rows = registry.list_runs(RunQuery(sweep=sweep))
    pts, front = frontier(rows, x, y)
    if not pts:
        raise errors.QueryError(f"no run of sweep {sweep!r} has both {x!r} and {y!r} in its summary")
    arch = {r.run.id: r.run.config.get("sae", {}).get("arch", "?") for r in rows}
    colors = arch_colors(sorted(set(arch.values())))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for a, color in colors.items():
        sel = [(px, py) for px, py, rid in pts if arch[rid] == a]
        ax.scatter([p[0] for p in sel], [p[1] for p in sel], label=f"{a} ({len(sel)})", color=color, alpha=0.8, s=28)
    ax.plot([p[0] for p in front], [p[1] for p in front], color="black", ls="--", lw=1, label="Pareto frontier")
    for px, py, rid in front:
        ax.annotate(f"run {rid}", (px, py), fontsize=7, xytext=(4, 4), textcoords="offset points")
    xs = [p[0] for p in pts]
    log_x = min(xs) > 0 and max(xs) / min(xs) > 10
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(f"{x} (log scale)" if log_x else x)
    ax.set_ylabel(y)
    ax.set_title(f"{sweep}: {y} vs {x} (lower is better on both)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, title="arch (runs)")
    fig.tight_layout()
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_file(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return {"points": pts, "frontier": front, "path": str(out), "log_x": log_x}
