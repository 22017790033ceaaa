"""SAE families against TopK over learning rates (and the archetypal SAE's relaxation bound), in-process on planted
data.

The planted dictionary of `benchmarks/sae_quality.py` (512 atoms in d 128, about 8 a row, a large mean offset),
32,768 training rows and 4,096 held out, scaled by the centred norm as new sweeps are; each SAE trains on the same
batches (batch 1,024, warm-up 50 steps then cosine decay, Adam) with `train_step`, as the trainer does, the archetypal
ones over 1,024 k-means candidates (`saev_ops.train.candidates.kmeans`), BatchTopK ranked by row share. Prints
held-out NMSE and L0 per configuration.

    python benchmarks/family_lr.py                 # 600 steps
    python benchmarks/family_lr.py --steps 300
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

CONFIGS = [("topk", 1.0, 1e-3), ("topk", 1.0, 4e-3), ("batchtopk", 1.0, 1e-3), ("batchtopk", 1.0, 4e-3),
           ("archetypal", 1.0, 1e-3), ("archetypal", 1.0, 4e-3), ("archetypal", 1.0, 1e-2), ("archetypal", 4.0, 4e-3),
           ("archetypal", 4.0, 1e-2), ("archetypal", 16.0, 4e-3)]


def main() -> None:
    import torch

    from saev_ops.sae import SAEConfig, build_sae
    from saev_ops.train.candidates import kmeans
    from tests.helpers import planted

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    rows, _ = planted(32768 + 4096, d=128, n_atoms=512, k=8, atoms_seed=123)
    x = torch.from_numpy(rows)
    train, held = x[:32768], x[32768:]
    mean = train.mean(0)
    scale = math.sqrt(128) / float((train - mean).norm(dim=1).mean())
    candidates = kmeans(train[:16384] - mean, 1024) * scale

    def nmse(arch: str, delta: float, lr: float) -> tuple[float, float]:
        cfg = SAEConfig.of(arch=arch, d_model=128, d_sae=1024, k=8, dead_tokens=500_000, archetypal_delta=delta,
                        batchtopk_rank="row-share")
        sae = build_sae(cfg, seed=0)
        sae.init_bias(mean * scale)
        if arch == "archetypal":
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
            return err, float((z != 0).sum(-1).float().mean())

    print(f"{'family':<12}{'delta':>7}{'lr':>8}{'val nmse':>10}{'val l0':>8}{'s':>6}")
    for arch, delta, lr in CONFIGS:
        t0 = time.perf_counter()
        err, l0 = nmse(arch, delta, lr)
        print(f"{arch:<12}{delta if arch == 'archetypal' else '':>7}{lr:>8.0e}{err:>10.3f}{l0:>8.1f}"
              f"{time.perf_counter() - t0:>6.0f}")


if __name__ == "__main__":
    main()
