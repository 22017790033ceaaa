"""Pareto frontier of runs over two summary metrics (lower is better on both, e.g. L0 against NMSE), and its plot."""

from __future__ import annotations

import pathlib
from typing import Any

from saev_ops import errors
from saev_ops.registry import Registry, RunQuery, RunRow


def frontier(rows: list[RunRow], x: str, y: str) -> tuple[list[tuple[float, float, int]], list[tuple[float, float, int]]]:
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


def pareto_plot(registry: Registry, sweep: str, x: str, y: str, out: pathlib.Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = registry.list_runs(RunQuery(sweep=sweep))
    pts, front = frontier(rows, x, y)
    if not pts:
        raise errors.QueryError(f"no run of sweep {sweep!r} has both {x!r} and {y!r} in its summary")
    arch = {r.run.id: r.run.config.get("sae", {}).get("arch", "?") for r in rows}
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for a in sorted(set(arch.values())):
        sel = [(px, py) for px, py, rid in pts if arch[rid] == a]
        ax.scatter([p[0] for p in sel], [p[1] for p in sel], label=a, alpha=0.7)
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="frontier")
    for px, py, rid in front:
        ax.annotate(str(rid), (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{sweep}: {y} vs {x}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return {"points": pts, "frontier": front, "path": str(out)}
