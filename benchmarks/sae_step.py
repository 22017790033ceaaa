"""How many patches/s one SAE training step consumes (no data loading), to set next to the loaders' rates.

    python benchmarks/sae_step.py --device cuda        # TopK 768 -> 16384, k 32, batch 16384
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from saev_ops.sae import SAEConfig, build_sae

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--arch", default="topk")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer does
    sae = build_sae(SAEConfig.of(arch=args.arch, d_model=args.d_model, d_sae=args.d_sae, k=args.k)).to(dev)
    opt = torch.optim.Adam(sae.parameters(), lr=4e-4)
    x = torch.randn(args.batch_size, args.d_model, device=dev)

    def step() -> None:
        sae.train_step(x, opt)

    for _ in range(5):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"{args.arch} {args.d_model}->{args.d_sae} k={args.k} batch={args.batch_size} on {name}: "
          f"{args.steps * args.batch_size / dt:,.0f} patches/s ({dt / args.steps * 1e3:.1f} ms/step)")


if __name__ == "__main__":
    main()
