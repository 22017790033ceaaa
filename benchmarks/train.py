"""Many SAEs in one data pass against one SAE per pass, in one run.

    python benchmarks/train.py                              # CPU here: small SAEs so the data pass dominates
    python benchmarks/train.py --device cuda --d-sae 16384 --k 32 --gib 4

Generates a dataset (d_model 768, 257 tokens; --gib of float32), then trains N = 1, 4 and 16 TopK SAEs together for
--steps steps of --batch-size patches each (the registry is not used). Prints SAE-patches/s (N x patches / wall time)
and the wall time of the N-SAE pass as a multiple of the 1-SAE pass ("separate passes" cost N x that).
Target: 16 SAEs in one pass < 4x one SAE's wall time when the data pass dominates.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def main() -> None:
    from loaders import generate, warm_cache

    from saev_ops.sae import SAEConfig
    from saev_ops.train import RunSpec, TrainJobSpec, TrainSettings
    from saev_ops.train.trainer import Trainer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--d-sae", type=int, default=512)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--counts", default="1,4,16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=pathlib.Path)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="saev-train-bench-")
    root = args.keep or pathlib.Path(tmp)
    try:
        path = generate(root, args.gib, 768, 257, 1, "float32")
        warm_cache(path)
        settings = TrainSettings(batch_size=args.batch_size, n_tokens=args.batch_size * args.steps,
                                 log_every=max(1, args.steps // 4), ckpt_every=10**9, device=args.device,
                                 lr_warmup_steps=5, buffer_mb=1536)
        results = {}
        for n in [int(x) for x in args.counts.split(",")]:
            runs = tuple(RunSpec(run_id=i + 1, sae=SAEConfig.of(arch="topk", d_model=768, d_sae=args.d_sae, k=args.k),
                                 lr=4e-4, seed=i) for i in range(n))
            spec = TrainJobSpec(db_url="", dataset="bench", dataset_path=str(path), dataset_hash="bench", layer=11,
                                tokens="patches", settings=settings, runs=runs, runs_root=str(pathlib.Path(tmp) / f"r{n}"))
            trainer = Trainer(spec, None)
            trainer.save_checkpoint = lambda: None  # type: ignore[method-assign]  # time the pass, not the disk
            t0 = time.perf_counter()
            trainer.train()
            if args.device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            results[n] = time.perf_counter() - t0
            print(f"  {n:3d} SAE(s): {results[n]:7.2f} s", flush=True)
        base = results[min(results)]
        patches = args.batch_size * args.steps
        print(f"\ndevice={args.device} d_sae={args.d_sae} k={args.k} batch={args.batch_size} steps={args.steps}")
        print(f"{'SAEs':>5} {'wall s':>8} {'x 1-SAE wall':>13} {'SAE-patches/s':>14} {'vs separate passes':>19}")
        for n, t in results.items():
            print(f"{n:5d} {t:8.2f} {t / base:13.2f} {n * patches / t:14,.0f} {n * base / t:18.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
