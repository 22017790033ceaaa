"""Training metrics over a window of steps (where they go: :mod:`saev_ops.train.journal`)."""

from __future__ import annotations

import torch


class Window:
    """Accumulates one SAE's metrics between reports."""

    def __init__(self, d_sae: int, device: torch.device) -> None:
        self.fire_counts = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        self.tokens = 0
        # device tensors, summed without syncing
        self.err: torch.Tensor | None = None
        self.var: torch.Tensor | None = None
        self.l0: torch.Tensor | None = None
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
