"""saev-ops' SAE families against Overcomplete's at the same budget, in-process on planted data.

The planted dictionary of `benchmarks/sae_quality.py` (512 atoms in d 128, about 8 a row, a large mean offset, uneven
scales), 32,768 training rows and 4,096 held out, scaled by the centred norm as new sweeps are. Both sides train on
the same batches (batch 1,024, drawn by one seeded generator), with Adam at the same learning rate, 50 warm-up steps
then cosine decay, for the same number of steps; the archetypal SAEs of both over the same 1,024 k-means candidates
(`saev_ops.train.candidates.kmeans`). Overcomplete's SAEs have no decoder bias: they are given the rows centred by
the training mean (their best case; saev-ops' SAEs get the rows as they are and start their decoder bias at the mean,
as the trainer does) and trained on the mean squared error, as Overcomplete's examples do. Overcomplete's BatchTopK
keeps k x batch activations of the batch (its ``top_k`` is the batch's budget). Held-out NMSE is the squared error
over the held-out rows' variance about their mean, the same for both; L0 is the mean number of non-zero latents per
held-out row; dead is the share of latents that fire on none of them.

Needs ``overcomplete`` (0.3; ``pip install --no-deps overcomplete einops``). Its package ``__init__`` imports
torchvision, timm and scikit-learn for its models and classical solvers; the SAE modules need none of them, so this
script loads ``overcomplete.sae``'s modules without running that ``__init__``.

    python benchmarks/overcomplete_compare.py                 # 600 steps, lr 1e-3 and 4e-3
    python benchmarks/overcomplete_compare.py --steps 300 --lr 4e-3
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import pathlib
import sys
import time
import types
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

D, D_SAE, K, BATCH = 128, 1024, 8, 1024


def overcomplete_sae() -> types.ModuleType:
    """``overcomplete.sae``'s modules, loaded without the package ``__init__`` files (which import torchvision)."""
    spec = importlib.util.find_spec("overcomplete")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("overcomplete is not installed: pip install --no-deps overcomplete einops")
    root = pathlib.Path(next(iter(spec.submodule_search_locations)))
    for name, folder in (("overcomplete", root), ("overcomplete.sae", root / "sae"),
                         ("overcomplete.optimization", root / "optimization")):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    sae = sys.modules["overcomplete.sae"]
    sae.SAE = importlib.import_module("overcomplete.sae.base").SAE  # type: ignore[attr-defined]  # as its __init__ does
    optimization = sys.modules["overcomplete.optimization"]
    optimization.batched_matrix_nnls = importlib.import_module(  # type: ignore[attr-defined]  # as its __init__ does
        "overcomplete.optimization.utils").batched_matrix_nnls
    for module in ("topk_sae", "batchtopk_sae", "rasae", "mp_sae", "omp_sae"):
        importlib.import_module(f"overcomplete.sae.{module}")
    return sae


def main() -> None:
    import torch

    from saev_ops.sae import SAEConfig, build_sae
    from saev_ops.train.candidates import kmeans
    from tests.helpers import planted

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-3, 4e-3])
    ap.add_argument("--families", nargs="+", default=["topk", "batchtopk", "archetypal", "mp", "omp"])
    args = ap.parse_args()
    oc = overcomplete_sae()
    rows, _ = planted(32768 + 4096, d=D, n_atoms=512, k=K, atoms_seed=123)
    x = torch.from_numpy(rows)
    train, held = x[:32768], x[32768:]
    mean = train.mean(0)
    scale = math.sqrt(D) / float((train - mean).norm(dim=1).mean())
    candidates = kmeans(train[:16384] - mean, D_SAE) * scale

    def ours(arch: str) -> tuple[Any, Any]:
        cfg = SAEConfig.of(arch=arch, d_model=D, d_sae=D_SAE, k=K, dead_tokens=500_000, batchtopk_rank="row-relative")
        sae = build_sae(cfg, seed=0)
        sae.init_bias(mean * scale)
        if arch == "archetypal":
            sae.set_candidates(candidates)  # type: ignore[operator]  # an archetypal SAE has it

        def step(batch: torch.Tensor, opt: torch.optim.Optimizer) -> None:
            sae.train_step(batch * scale, opt)

        def infer(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x_hat, z, _ = sae(v * scale)
            return x_hat / scale, z

        return sae, (step, infer)

    def theirs(arch: str) -> tuple[Any, Any]:
        torch.manual_seed(0)
        made = {"topk": lambda: oc.topk_sae.TopKSAE(D, D_SAE, top_k=K),
                "batchtopk": lambda: oc.batchtopk_sae.BatchTopKSAE(D, D_SAE, top_k=K * BATCH),
                "archetypal": lambda: oc.rasae.RATopKSAE(D, D_SAE, points=candidates.clone(), top_k=K),
                "mp": lambda: oc.mp_sae.MpSAE(D, D_SAE, k=K),
                "omp": lambda: oc.omp_sae.OMPSAE(D, D_SAE, k=K)}
        sae = made[arch]()

        def step(batch: torch.Tensor, opt: torch.optim.Optimizer) -> None:
            v = (batch - mean) * scale
            _, _, x_hat = sae(v)
            loss = (x_hat - v).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def infer(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            _, z, x_hat = sae((v - mean) * scale)
            return x_hat / scale + mean, z

        return sae, (step, infer)

    def run(build: Any, arch: str, lr: float) -> tuple[float, float, float]:
        sae, (step, infer) = build(arch)
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
        g = torch.Generator().manual_seed(0)
        sae.train()
        for i in range(args.steps):
            warm = min(1.0, (i + 1) / 50)
            decay = 0.5 * (1 + math.cos(math.pi * max(0, i - 50) / max(1, args.steps - 50)))
            for group in opt.param_groups:
                group["lr"] = lr * warm * decay
            step(train[torch.randint(0, len(train), (BATCH,), generator=g)], opt)
        sae.eval()
        with torch.no_grad():
            x_hat, z = infer(held)
            err = float((x_hat - held).pow(2).sum(-1).mean() / (held - held.mean(0)).pow(2).sum(-1).mean())
            return err, float((z != 0).sum(-1).float().mean()), float(((z != 0).sum(0) == 0).float().mean())

    print(f"{args.steps} steps of {BATCH} rows, d_sae {D_SAE}, k {K}")
    print(f"{'family':<12}{'lr':>8}{'ours nmse':>11}{'l0':>6}{'dead':>7}{'theirs nmse':>13}{'l0':>6}{'dead':>7}"
          f"{'s':>6}")
    for arch in args.families:
        for lr in args.lr:
            t0 = time.perf_counter()
            a, b = run(ours, arch, lr), run(theirs, arch, lr)
            print(f"{arch:<12}{lr:>8.0e}{a[0]:>11.3f}{a[1]:>6.1f}{a[2]:>7.3f}{b[0]:>13.3f}{b[1]:>6.1f}{b[2]:>7.3f}"
                  f"{time.perf_counter() - t0:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
