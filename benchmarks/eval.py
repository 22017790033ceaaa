"""What judging SAEs costs, measured against the work it judges, in one run.

    python benchmarks/eval.py                       # CPU here
    python benchmarks/eval.py --device cuda --d-sae 16384 --batch-size 4096

1. Held-out evaluation during training: a TopK SAE (768 -> --d-sae) trains --steps steps of --batch-size patches on a
   generated dataset, once without and once with a held-out evaluation every --eval-every steps (the trainer's own
   path: a fixed sample of --val-tokens rows). Prints the time of one training step and of one evaluation, the
   overhead at the default ``eval_every`` (one evaluation / (eval_every x one step); target under 5%) and the overhead
   measured in the run with evaluations (wall with / wall without - 1, at --eval-every).
2. Downstream evaluation (``saev-ops eval``): the spliced forward of --images images through --model at --layer with
   1 SAE and with 8 SAEs (TopK d_model -> 8 x d_model), both over the same images. Prints the 8-SAE pass as a multiple
   of the 1-SAE pass (target under 3x: the forward up to the layer is shared, and one pass carries the clean and
   ablated runs for all SAEs). Default: a ViT-B-shaped model (builtin:base, 12 blocks, d 768, 224 px) at layer -2,
   the layer saev's guide records; ``--model builtin:small --layer 3`` is the hard case (a middle layer of a small
   ViT, where every SAE costs as much as the blocks after it).
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


def held_out(args: argparse.Namespace, root: pathlib.Path) -> None:
    from loaders import generate, warm_cache

    from saev_ops.sae import SAEConfig
    from saev_ops.train import RunSpec, TrainJobSpec, TrainSettings
    from saev_ops.train.trainer import Trainer

    path = generate(root, args.gib, 768, 257, 1, "float32")
    warm_cache(path)
    default_every = TrainSettings().eval_every
    walls = {}
    trainer = None
    for label, val in (("without", None), ("with", "bench-val")):
        settings = TrainSettings(batch_size=args.batch_size, n_tokens=args.batch_size * args.steps,
                                 log_every=max(1, args.steps // 4), ckpt_every=10**9, device=args.device,
                                 lr_warmup_steps=5, buffer_mb=1024, val_dataset=val, eval_every=args.eval_every,
                                 val_tokens=args.val_tokens)
        runs = (RunSpec(run_id=1, sae=SAEConfig.of(arch="topk", d_model=768, d_sae=args.d_sae, k=args.k), lr=4e-4),)
        spec = TrainJobSpec(db_url="", dataset="bench", dataset_path=str(path), dataset_hash="bench", layer=11,
                            tokens="patches", settings=settings, runs=runs, runs_root=str(root / label),
                            val_dataset_path=str(path) if val else None)
        trainer = Trainer(spec, None)
        trainer.save_checkpoint = lambda: root  # type: ignore[method-assign]  # time the pass, not the disk
        t0 = time.perf_counter()
        trainer.train(_NullJournal())
        _sync(args.device)
        walls[label] = time.perf_counter() - t0
    assert trainer is not None and trainer.val_x is not None
    t_eval = _best(lambda: trainer.evaluate(_NullJournal(), {}), args.device)
    t_step = walls["without"] / args.steps
    n_evals = args.steps // args.eval_every + (args.steps % args.eval_every != 0)
    print(f"held-out evaluation, TopK 768->{args.d_sae} k={args.k}, batch {args.batch_size}, "
          f"{args.val_tokens} held-out rows, {args.device}")
    print(f"  one training step        {t_step * 1e3:9.1f} ms   ({args.batch_size / t_step:,.0f} patches/s)")
    print(f"  one evaluation           {t_eval * 1e3:9.1f} ms")
    print(f"  overhead at eval_every={default_every} (default): {t_eval / (default_every * t_step):.2%}  (target < 5%)")
    print(f"  measured: {args.steps} steps with {n_evals} evaluations (every {args.eval_every}) took "
          f"{walls['with'] / walls['without']:.3f}x the run without; "
          f"{(walls['with'] - walls['without']) / n_evals * 1e3:.1f} ms per evaluation")


def downstream(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from saev_ops.downstream.splice import SpliceModel, model_positions
    from saev_ops.record.models import load_model
    from saev_ops.sae import SAEConfig, build_sae

    adapter = load_model(args.model, args.device)
    model = SpliceModel(adapter)
    layer = adapter.resolve_layers([args.layer])[0]
    h, w = adapter.preprocess.out_hw
    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((args.images, 3, h, w), dtype=np.float32))
    pixels = pixels.to(args.device)
    pos = model_positions(adapter.layout, adapter.layout, "patches")
    d = adapter.d_model
    saes = [build_sae(SAEConfig.of(arch="topk", d_model=d, d_sae=8 * d, k=32), seed=i).to(args.device).eval()
            for i in range(8)]
    mean = torch.zeros(d, device=args.device)

    def edits(n: int) -> list:
        return [lambda x: x, lambda x: mean.expand_as(x)] + [
            (lambda s: lambda x: s.decode(s.encode(x)))(s) for s in saes[:n]]

    def run(n: int, identity: bool = False) -> None:
        todo = [lambda x: x] * (n + 2) if identity else edits(n)
        with torch.inference_mode():
            for start in range(0, args.images, args.image_batch):
                model.run(pixels[start:start + args.image_batch], layer, pos, todo)

    def saes_alone() -> None:  # the 8 SAEs on the rows they see in the pass, without the model
        rows = torch.randn(args.images * len(pos), d, device=args.device)
        with torch.inference_mode():
            for s in saes:
                for part in rows.split(args.image_batch * len(pos)):
                    s.decode(s.encode(part))

    t1 = _best(lambda: run(1), args.device)
    t8 = _best(lambda: run(8), args.device)
    t8_model = _best(lambda: run(8, identity=True), args.device)
    t8_saes = _best(saes_alone, args.device)
    print(f"downstream eval, {args.model} layer {layer} of {adapter.n_layers} (blocks 0-{adapter.n_layers - 1}), "
          f"{args.images} images "
          f"({args.image_batch} per forward), TopK {d}->{8 * d}, {args.device}")
    print(f"  1 SAE   {t1:8.3f} s   ({args.images / t1:,.1f} images/s)")
    print(f"  8 SAEs  {t8:8.3f} s   {t8 / t1:.2f}x the 1-SAE pass  (target < 3x; 8 separate passes: 8x)")
    print(f"  where the 8-SAE pass goes: the model on 10 variants {t8_model:.3f} s "
          f"({t8_model / t1:.2f}x the 1-SAE pass), the 8 SAEs' encode + decode alone {t8_saes:.3f} s")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _best(fn: object, device: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


class _NullJournal:
    def log(self, run_id: int, step: int, values: dict) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=0.5)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--val-tokens", type=int, default=16384)
    ap.add_argument("--model", default="builtin:base")
    ap.add_argument("--layer", type=int, default=-2)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--image-batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=["held-out", "downstream"])
    args = ap.parse_args()
    root = pathlib.Path(tempfile.mkdtemp(prefix="saev-eval-bench-"))
    try:
        if args.only in (None, "held-out"):
            held_out(args, root)
        if args.only in (None, "downstream"):
            downstream(args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
