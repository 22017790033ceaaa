"""Training metrics over a window of steps, and where they go: the registry, or a file when it is unreachable."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import torch

from saev_ops import errors


class Window:
    """Accumulates one SAE's metrics between reports."""

    def __init__(self, d_sae: int, device: torch.device) -> None:
        self.fire_counts = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        self.tokens = 0
        self.err = self.var = self.l0 = None  # device tensors, summed without syncing
        self.fire_counts.zero_()

    @torch.no_grad()
    def add(self, x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Accumulate on the device; nothing here waits for the GPU (values are read once, in :meth:`report`)."""
        for k, v in terms.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.n += 1
        self.tokens += x.shape[0]
        fired = z != 0
        err = (x_hat - x).pow(2).sum()
        var = (x - x.mean(0, keepdim=True)).pow(2).sum()
        l0 = fired.sum()
        self.err = err if self.err is None else self.err + err
        self.var = var if self.var is None else self.var + var
        self.l0 = l0 if self.l0 is None else self.l0 + l0
        self.fire_counts += fired.sum(0)

    def report(self, dead_frac: float) -> dict[str, float]:
        out = {k: float(v) / max(self.n, 1) for k, v in self.sums.items()}
        err = float(self.err) if self.err is not None else 0.0
        var = float(self.var) if self.var is not None else 0.0
        nmse = err / max(var, 1e-12)
        freq = self.fire_counts.float() / max(self.tokens, 1)
        l0 = float(self.l0) if self.l0 is not None else 0.0
        out.update({"nmse": nmse, "explained_variance": 1.0 - nmse, "l0": l0 / max(self.tokens, 1),
                    "dead_frac": dead_frac, "dense_frac": float((freq > 0.1).float().mean())})
        return out


class MetricSink:
    """Sends metrics to the registry; if it is unreachable, appends them to ``<run_dir>/metrics.jsonl`` so nothing is
    lost (``saev-ops sweep sync`` ingests the file later)."""

    def __init__(self, registry: Any, run_dirs: dict[int, pathlib.Path]) -> None:
        self.registry = registry
        self.run_dirs = run_dirs
        self.buffered = 0

    def log(self, run_id: int, step: int, values: dict[str, float]) -> None:
        points = [(k, step, v) for k, v in values.items()]
        if self.registry is not None:
            try:
                self.registry.log_metrics(run_id, points)
                return
            except errors.RegistryError:
                pass
        path = self.run_dirs[run_id] / "metrics.jsonl"
        with open(path, "a") as fh:
            fh.write(json.dumps({"run_id": run_id, "step": step, "values": values}) + "\n")
        self.buffered += 1


def sync_metrics_file(registry: Any, path: pathlib.Path) -> int:
    """Ingest a buffered ``metrics.jsonl`` into the registry; renames it to ``.synced`` after. Returns points sent."""
    n = 0
    lines = path.read_text().splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            points = [(k, int(rec["step"]), float(v)) for k, v in rec["values"].items()]
            run_id = int(rec["run_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.DataError(f"{path}:{lineno}: not a metrics record ({exc})") from None
        n += registry.log_metrics(run_id, points)
    path.rename(path.with_name(path.name + ".synced"))
    return n
