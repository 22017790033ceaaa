"""``sweep watch``: one snapshot of a sweep's runs as a table (status, step of n, last metrics), for a live view."""

from __future__ import annotations

import dataclasses
from typing import Any

from saev_ops.registry import Registry, RunQuery

ACTIVE = ("queued", "running")
COLUMNS = ("run", "sae", "status", "step", "nmse", "l0", "dead_frac", "loss")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    counts: dict[str, int]

    @property
    def active(self) -> bool:
        """Whether any run may still change (queued or running)."""
        return any(self.counts.get(s, 0) for s in ACTIVE)

    def headline(self, sweep: str) -> str:
        return f"{sweep}: " + ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))


def _sae(config: dict[str, Any]) -> str:
    sae = config.get("sae", {})
    k = f" k={sae['k']}" if sae.get("arch") in ("topk", "batchtopk", "matryoshka", "signed-topk") else ""
    return f"{sae.get('arch', '?')} {sae.get('d_sae', '?')}{k} lr={config.get('lr', '?')}"


def snapshot(registry: Registry, sweep: str) -> Snapshot:
    rows = registry.list_runs(RunQuery(sweep=sweep))
    steps = registry.last_steps([r.run.id for r in rows])
    out: list[tuple[Any, ...]] = []
    counts: dict[str, int] = {}
    for r in rows:
        train = r.run.config.get("train", {})
        n_steps = max(1, int(train.get("n_tokens", 0)) // max(1, int(train.get("batch_size", 1)))) if train else None
        step = steps.get(r.run.id)
        out.append((r.run.id, _sae(r.run.config), r.run.status,
                    f"{step or 0}/{n_steps}" if n_steps else (step or ""),
                    *(r.summary.get(k) for k in ("nmse", "l0", "dead_frac", "loss"))))
        counts[r.run.status] = counts.get(r.run.status, 0) + 1
    return Snapshot(COLUMNS, out, counts)
