"""Reconstruction metrics of an SAE over a set of activations: what the held-out evaluation during training
(``val/...`` metric keys) and inference (an output's summary) report, computed the same way in both.

Over rows ``x`` (activations in the SAE's training scale), reconstructions ``x_hat`` and latents ``z``:

| key | formula |
|---|---|
| ``nmse`` | sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (against predicting the mean row) |
| ``explained_variance`` | 1 - sum_d Var(x_d - x_hat_d) / sum_d Var(x_d) (a constant error offset is not counted) |
| ``l0`` | mean number of non-zero latents per row |
| ``unfired_frac`` | fraction of latents that never fire on the rows; None (too few rows to tell) below |
| | :data:`MIN_ROWS_PER_LATENT` rows a latent |
| ``dense_frac`` | fraction of latents that fire on more than 10% of the rows |
| ``cosine`` | mean cos(x, x_hat) |
| ``shrinkage`` | mean ||x_hat|| / ||x|| (below 1: the SAE shrinks its reconstructions) |

Sums run in float64 on the rows' device and are read once, in :meth:`ReconMetrics.result`, so streaming adds no
device synchronisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from saev_ops.sae.modules import SAE

DENSE_FREQUENCY = 0.1
METRIC_KEYS = ("nmse", "explained_variance", "l0", "unfired_frac", "dense_frac", "cosine", "shrinkage")
MIN_ROWS_PER_LATENT = 4
"""A latent that never fired on fewer rows than this per latent may just be rare: unfired_frac is not given."""


class ReconMetrics:
    """Streaming accumulator: :meth:`add` batches, :meth:`result` once."""

    def __init__(self, d_sae: int, device: torch.device | str = "cpu") -> None:
        self.fired = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.n = 0
        self._sums: dict[str, torch.Tensor] = {}

    def _acc(self, key: str, value: torch.Tensor) -> None:
        self._sums[key] = self._sums[key] + value if key in self._sums else value

    @torch.no_grad()
    def add(self, x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        r = x - x_hat
        self.n += x.shape[0]
        self._acc("x", x.sum(0))
        self._acc("x2", x.pow(2).sum())
        self._acc("r", r.sum(0))
        self._acc("r2", r.pow(2).sum())
        nx, nxh = x.norm(dim=1), x_hat.norm(dim=1)
        self._acc("cos", ((x * x_hat).sum(1) / (nx * nxh).clamp_min(1e-12)).sum())
        self._acc("shrink", (nxh / nx.clamp_min(1e-12)).sum())
        fired = z != 0
        self._acc("l0", fired.sum().double())
        self.fired += fired.sum(0)

    def sums(self) -> dict[str, Any]:
        """The float sums and counts so far, on the CPU (not ``fired``): what :meth:`fold` adds to another
        accumulator. Folding the sums of consecutive segments in order gives the same bits however the segments were
        computed (in one job or in several)."""
        return {"n": self.n, **{k: v.detach().cpu().double().numpy() for k, v in self._sums.items()}}

    def fold(self, sums: dict[str, Any]) -> None:
        """Add a segment's :meth:`sums` (CPU, float64), after those folded before it."""
        self.n += int(sums["n"])
        for k, v in sums.items():
            if k != "n":
                self._acc(k, torch.as_tensor(np.asarray(v, dtype=np.float64)))

    def result(self) -> dict[str, float | None]:
        if self.n == 0:
            raise ValueError("no rows were added")
        n = self.n
        s = {k: v.cpu() for k, v in self._sums.items()}
        total_var = float(s["x2"] - s["x"].pow(2).sum() / n)  # sum ||x - mean||^2
        resid_var = float(s["r2"] - s["r"].pow(2).sum() / n)
        denom = max(total_var, 1e-12)
        freq = self.fired.double().cpu() / n
        return {"nmse": float(s["r2"]) / denom, "explained_variance": 1.0 - resid_var / denom,
                "l0": float(s["l0"]) / n,
                "unfired_frac": float((self.fired == 0).double().mean())
                if n >= MIN_ROWS_PER_LATENT * self.fired.numel() else None,
                "dense_frac": float((freq > DENSE_FREQUENCY).double().mean()), "cosine": float(s["cos"]) / n,
                "shrinkage": float(s["shrink"]) / n}


@torch.no_grad()
def reconstruction_metrics(sae: SAE, x: torch.Tensor, batch_size: int = 4096) -> dict[str, float | None]:
    """The metrics of ``sae`` over the rows ``x`` (already in its training scale), in batches of ``batch_size``."""
    was_training = sae.training
    sae.eval()
    acc = ReconMetrics(sae.cfg.d_sae, x.device)
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            z = sae.encode(xb)
            acc.add(xb, sae.decode(z), z)
    finally:
        sae.train(was_training)
    return acc.result()
