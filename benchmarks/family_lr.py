"""SAE families against TopK over learning rates (BatchTopK's ranks, the archetypal SAE's relaxation bound), in-process
on planted data.

The planted dictionary of `benchmarks/sae_quality.py` (512 atoms in d 128, about 8 a row, a large mean offset),
32,768 training rows (``--rows``) and 4,096 held out, scaled by the centred norm as new sweeps are; each SAE trains on
the same batches (batch 1,024, warm-up 50 steps then cosine decay, Adam) with `train_step`, as the trainer does, the
archetypal ones over 1,024 k-means candidates (`saev_ops.train.candidates.kmeans`). Prints held-out NMSE and L0 (and
the spread of L0 over the held-out rows) per configuration.

    python benchmarks/family_lr.py                                  # 600 steps on 32,768 rows
    python benchmarks/family_lr.py --steps 1500 --rows 131072 --only topk batchtopk
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

CONFIGS: list[tuple[str, dict[str, Any], float]] = [
    *[("topk", {"arch": "topk"}, lr) for lr in (1e-3, 4e-3)],
    *[(f"batchtopk {rank}", {"arch": "batchtopk", "batchtopk_rank": rank}, lr)
      for lr in (1e-3, 4e-3) for rank in ("value", "row-share", "row-relative")],
    *[(f"archetypal delta {delta:g}", {"arch": "archetypal", "archetypal_delta": delta}, lr)
      for delta, lr in ((1.0, 1e-3), (1.0, 4e-3), (1.0, 1e-2), (4.0, 4e-3), (4.0, 1e-2), (16.0, 4e-3))],
]


def main() -> None:
    import torch

    from saev_ops.sae import SAEConfig, build_sae
    from saev_ops.train.candidates import kmeans
    from tests.helpers import planted

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--rows", type=int, default=32768)
    ap.add_argument("--only", nargs="+", default=["topk", "batchtopk", "archetypal"], help="families to train")
    args = ap.parse_args()
    rows, _ = planted(args.rows + 4096, d=128, n_atoms=512, k=8, atoms_seed=123)
    x = torch.from_numpy(rows)
    train, held = x[: args.rows], x[args.rows :]
    mean = train.mean(0)
    scale = math.sqrt(128) / float((train - mean).norm(dim=1).mean())
    configs = [c for c in CONFIGS if c[1]["arch"] in args.only]
    candidates = kmeans(train[:16384] - mean, 1024) * scale if "archetypal" in args.only else None

    def nmse(fields: dict[str, Any], lr: float) -> tuple[float, float, float]:
        sae = build_sae(SAEConfig.of(d_model=128, d_sae=1024, k=8, dead_tokens=500_000, **fields), seed=0)
        sae.init_bias(mean * scale)
        if fields["arch"] == "archetypal":
            sae.set_candidates(candidates)  # type: ignore[operator]  # an archetypal SAE has it
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
        g = torch.Generator().manual_seed(0)
        for step in range(args.steps):
            warm = min(1.0, (step + 1) / 50)
            decay = 0.5 * (1 + math.cos(math.pi * max(0, step - 50) / max(1, args.steps - 50)))
            for group in opt.param_groups:
                group["lr"] = lr * warm * decay
            sae.train_step(train[torch.randint(0, len(train), (1024,), generator=g)] * scale, opt)
        sae.eval()
        with torch.no_grad():
            v = held * scale
            x_hat, z, _ = sae(v)
            err = float((x_hat - v).pow(2).sum(-1).mean() / (v - v.mean(0)).pow(2).sum(-1).mean())
            l0 = (z != 0).sum(-1).float()
            return err, float(l0.mean()), float(l0.std())

    print(f"{args.steps} steps of 1,024 rows, {args.rows:,} training rows")
    print(f"{'family':<26}{'lr':>8}{'val nmse':>10}{'val l0':>8}{'l0 sd':>7}{'s':>6}")
    for label, fields, lr in configs:
        t0 = time.perf_counter()
        err, l0, sd = nmse(fields, lr)
        print(f"{label:<26}{lr:>8.0e}{err:>10.4f}{l0:>8.2f}{sd:>7.2f}{time.perf_counter() - t0:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
