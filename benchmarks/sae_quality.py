"""SAE families on a planted dictionary: does each one find the atoms the data were made of?

The data: 512 unit atoms in d 128; each row has about 8 of them (Poisson), chosen with Zipf frequencies, with
positive coefficients whose scale differs 8x from atom to atom, plus a mean offset much larger than the rest of the
row (as a ViT's activations: the mean is most of their norm), plus noise. A training dataset and a held-out one (other
rows, the same atoms) are written once as saev shard directories and registered through the normal import path
(`datasets import`); every family then trains in one multi-SAE pass over the same batches (`sweep submit`, executor
debug), ReLU and JumpReLU over a range of penalties so they can be compared with TopK at a matching L0. Printed per
run: held-out NMSE and L0, training dead fraction, the share of true atoms recovered (a decoder row with cosine > 0.9),
and the stability of TopK and the archetypal SAE: the mean best-match cosine between the decoders (`runs compare`) of
two init seeds, and of two data orders (a second sweep of the two with train seed 1).

    python benchmarks/sae_quality.py                       # new sweeps' defaults (scale_by centred-norm)
    python benchmarks/sae_quality.py --scale-by norm       # as runs before centred-norm were trained
    python benchmarks/sae_quality.py --steps 300 --rows 32768   # quicker, rougher
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

D, ATOMS, K, PATCHES = 128, 512, 8, 16


def write_dataset(root: pathlib.Path, rows: np.ndarray, name: str) -> pathlib.Path:
    """``rows`` as a saev shard directory of examples of PATCHES patch tokens (no CLS), one layer."""
    from saev_ops.shards import Metadata, ShardWriter, TokenLayout
    from saev_ops.shards.format import dataset_dir, encode_data_field

    n_examples = len(rows) // PATCHES
    md = Metadata(family="planted", ckpt="planted-d128", layers=(0,), content_tokens_per_example=PATCHES,
                  cls_token=False, d_model=D, n_examples=n_examples, max_tokens_per_shard=PATCHES * 4096,
                  data=encode_data_field({"kind": "planted", "name": name}), dataset=name, dtype="float32")
    path = dataset_dir(root, md.hash)
    w = ShardWriter(path, md, TokenLayout(n_cls=0, n_registers=0, n_patches=PATCHES))
    acts = rows[: n_examples * PATCHES].reshape(n_examples, 1, PATCHES, D)
    for s in range(0, n_examples, 1024):
        w.write(acts[s : s + 1024], None)
    w.finalize()
    return path


GRID = """name: planted
dataset: planted
val_dataset: planted-val
executor: debug
runs_root: {root}/runs
train: {{batch_size: {batch}, n_tokens: {tokens}, log_every: 50, eval_every: {steps}, val_tokens: 8192,
        ckpt_every: {steps}, lr_warmup_steps: 50, sparsity_warmup_steps: 50, buffer_mb: 64, scale_by: {scale_by}}}
base: {{layer: 0, tokens: patches, d_sae: {d_sae}, lr: 0.001, dead_tokens: 500000}}
runs:
  - {{arch: topk, k: {k}}}
  - {{arch: topk, k: {k}, seed: 1}}
  - {{arch: topk, k: {k}, encoder_hidden: 256}}
  - {{arch: batchtopk, k: {k}, batchtopk_rank: value}}
  - {{arch: batchtopk, k: {k}, batchtopk_rank: row-share}}
  - {{arch: batchtopk, k: {k}, batchtopk_rank: row-relative}}
  - {{arch: matryoshka, k: {k}, matryoshka_prefixes: [64, 256]}}
  - {{arch: mp, k: {k}}}
  - {{arch: omp, k: {k}}}
  - {{arch: archetypal, k: {k}}}
  - {{arch: archetypal, k: {k}, seed: 1}}
  - {{arch: relu, l1_coeff: {l1}}}
  - {{arch: jumprelu, l0_coeff: {l0}}}
"""


def main() -> None:
    import torch

    from saev_ops.datasets import import_dataset
    from saev_ops.explore.compare import compare_runs
    from saev_ops.registry import Registry, RunQuery
    from saev_ops.sae.io import load_sae
    from saev_ops.sweeps import parse_sweep, submit_sweep
    from tests.helpers import planted

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=131072)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--scale-by", choices=["norm", "centred-norm"], default="centred-norm")
    ap.add_argument("--l1", default="[0.3, 1.0, 3.0, 10.0]", help="ReLU's l1_coeff values (a YAML list)")
    ap.add_argument("--l0", default="[0.3, 1.0, 3.0, 10.0]", help="JumpReLU's l0_coeff values (a YAML list)")
    ap.add_argument("--keep", type=pathlib.Path, help="keep the registry and runs here (an earlier run's: reused)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tmp = args.keep or pathlib.Path(tempfile.mkdtemp(prefix="saev-quality-"))
    try:
        t0 = time.perf_counter()
        x, atoms = planted(args.rows + 8192, d=D, n_atoms=ATOMS, k=K, atoms_seed=123)
        url = f"sqlite:///{tmp / 'r.sqlite'}"
        reg = Registry(url)
        if not any(d.name == "planted" for d in reg.list_datasets()):  # --keep of an earlier run: its data and runs
            import_dataset(reg, write_dataset(tmp / "data", x[: args.rows], "planted"), "planted")
            import_dataset(reg, write_dataset(tmp / "data", x[args.rows :], "planted-val"), "planted-val")
        raw, centred = np.linalg.norm(x, axis=1).mean(), np.linalg.norm(x - x.mean(0), axis=1).mean()
        print(f"data: {args.rows:,} training rows, 8,192 held out; mean norm {raw:.1f}, about the mean {centred:.1f} "
              f"({time.perf_counter() - t0:.0f} s)")
        grid = GRID.format(root=tmp, batch=args.batch, tokens=args.batch * args.steps, steps=args.steps, k=K,
                           d_sae=args.d_sae, scale_by=args.scale_by, l1=args.l1.split(",")[0].strip("[ ]"),
                           l0=args.l0.split(",")[0].strip("[ ]"))
        # ReLU and JumpReLU over their penalties: a grid over the penalty of one entry each
        grid = grid.replace(f"  - {{arch: relu, l1_coeff: {args.l1.split(',')[0].strip('[ ]')}}}",
                            "\n".join(f"  - {{arch: relu, l1_coeff: {v.strip()}}}" for v in args.l1.strip("[]")
                                      .split(",")))
        grid = grid.replace(f"  - {{arch: jumprelu, l0_coeff: {args.l0.split(',')[0].strip('[ ]')}}}",
                            "\n".join(f"  - {{arch: jumprelu, l0_coeff: {v.strip()}}}" for v in args.l0.strip("[]")
                                      .split(",")))
        t0 = time.perf_counter()
        submit_sweep(reg, parse_sweep(grid), url)
        print(f"trained {args.steps} steps of {args.batch} rows, scale_by {args.scale_by}, d_sae {args.d_sae}: "
              f"{time.perf_counter() - t0:.0f} s")
        truth = torch.from_numpy(atoms)
        rows = reg.list_runs(RunQuery(sweep="planted"))
        print(f"{'run':>4} {'family':<34}{'val/nmse':>9}{'val/l0':>8}{'dead':>7}{'atoms found':>13}")
        for r in rows:
            sae = r.run.config["sae"]
            label = sae["arch"] + {"relu": f" l1 {sae.get('l1_coeff')}", "jumprelu": f" l0c {sae.get('l0_coeff')}"}.get(
                sae["arch"], f" k{sae.get('k')}")  # a run stores its own family's fields
            label += f" {sae['batchtopk_rank']}" if sae["arch"] == "batchtopk" else ""
            label += f" MLP {sae['encoder_hidden']}" if sae.get("encoder_hidden") else ""
            label += f" seed {r.run.config['seed']}" if r.run.config["seed"] else ""
            w = load_sae(pathlib.Path(r.run.checkpoint_path or ""))[0].W_dec.detach()
            w = w / w.norm(dim=1, keepdim=True)
            found = float(((truth @ w.T).max(dim=1).values > 0.9).float().mean())
            s = r.summary
            nan = float("nan")
            print(f"{r.run.id:>4} {label:<34}{s.get('val/nmse', nan):>9.3f}{s.get('val/l0', nan):>8.1f}"
                  f"{s.get('dead_frac', nan):>7.3f}{found:>13.1%}")
        # a second data order: the same TopK and archetypal entries in a sweep of train seed 1 (other batches)
        other = grid.replace("name: planted", "name: planted-order").replace("scale_by:", "seed: 1, scale_by:")
        other = "\n".join(line for line in other.splitlines()
                          if not line.startswith("  - ") or ("seed" not in line and "encoder_hidden" not in line and (
                              "{arch: topk," in line or "{arch: archetypal," in line))) + "\n"
        submit_sweep(reg, parse_sweep(other), url)
        reordered = {r.run.config["sae"]["arch"]: r.run.id for r in reg.list_runs(RunQuery(sweep="planted-order"))}
        for arch in ("topk", "archetypal"):
            seeds = [r.run.id for r in rows if r.run.config["sae"]["arch"] == arch
                     and not r.run.config["sae"].get("encoder_hidden")]
            pairs = [("init seeds 0 and 1", tuple(seeds))] if len(seeds) == 2 else []
            pairs += [("data orders 0 and 1", (seeds[0], reordered[arch]))] if seeds and arch in reordered else []
            for what, pair in pairs:
                (c,) = compare_runs(reg, pair)
                print(f"stability, {arch}, {what} (runs {pair[0]} and {pair[1]}): mean best-match cosine "
                      f"{(c.trained.best_match_ab + c.trained.best_match_ba) / 2:.3f}")
        reg.close()
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
