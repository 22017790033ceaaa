"""Inference throughput (patches/s through 1 and 8 SAEs per pass) and `latents top` on a large CSR matrix.

    python benchmarks/infer.py                          # CPU here: 0.5 GiB dataset, TopK 768 -> 4096
    python benchmarks/infer.py --device cuda --gib 4 --d-sae 16384 --csr-rows 10000000
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def main() -> None:
    import torch

    from loaders import generate, warm_cache

    from saev_ops.infer.read import Output
    from saev_ops.infer.run import _CsrWriter
    from saev_ops.loaders import OrderedConfig, OrderedDataLoader, ShardSelection
    from saev_ops.sae import SAEConfig, build_sae

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=0.5)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csr-rows", type=int, default=10_000_000)
    ap.add_argument("--csr-cols", type=int, default=16384)
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="saev-infer-bench-"))
    try:
        path = generate(tmp, args.gib, 768, 257, 1, "float32")
        warm_cache(path)
        for n in (1, 8):
            cfg = SAEConfig.of(arch="topk", d_model=768, d_sae=args.d_sae, k=args.k)
            saes = [build_sae(cfg, seed=i).to(args.device) for i in range(n)]
            writers = []
            for i in range(n):
                (tmp / f"w{n}-{i}").mkdir()
                writers.append(_CsrWriter(tmp / f"w{n}-{i}", args.d_sae))
            loader = OrderedDataLoader(path, OrderedConfig(selection=ShardSelection(tokens="patches"), batch_size=16384))
            t0 = time.perf_counter()
            with torch.inference_mode():
                for b in loader:
                    x = b["act"].to(args.device)
                    for sae, w in zip(saes, writers):
                        w.add(sae.encode(x).float().cpu().numpy())
            for w in writers:
                w.finish(loader.n_rows)
            dt = time.perf_counter() - t0
            print(f"{n} SAE(s) per pass: {loader.n_rows / dt:10,.0f} patches/s ({n * loader.n_rows / dt:10,.0f} "
                  f"SAE-patches/s), {dt:.1f} s, CSR written", flush=True)
        # latents top on a big CSR matrix (k nonzeros per row, random columns)
        rows, cols, k = args.csr_rows, args.csr_cols, args.k
        rng = np.random.default_rng(0)
        csr_dir = tmp / "csr"
        csr_dir.mkdir()
        t0 = time.perf_counter()
        indices = np.empty(rows * k, dtype=np.int32)
        step = 1_000_000
        for s in range(0, rows, step):
            e = min(rows, s + step)
            indices[s * k : e * k] = rng.integers(0, cols, size=(e - s) * k, dtype=np.int32)
        data = rng.random(rows * k, dtype=np.float32)
        np.savez(csr_dir / "latents.npz", indices=indices, indptr=np.arange(0, rows * k + 1, k, dtype=np.int64),
                 format=np.array("csr"), shape=np.array([rows, cols]), data=data)
        del indices, data
        print(f"built a {rows:,} x {cols:,} CSR matrix (nnz {rows * k:,}) in {time.perf_counter() - t0:.0f} s")
        out = Output.__new__(Output)
        out.path = csr_dir
        out.record = type("rec", (), {"n_cols": cols, "id": 0})()
        t0 = time.perf_counter()
        top = out.top_rows(123, 20)
        print(f"latents top (one latent, 20 rows) on it: {time.perf_counter() - t0:.2f} s; best value {top[0][1]:.4f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
