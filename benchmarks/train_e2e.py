"""Training end to end: shard files -> ShuffledDataLoader -> 1 and N SAEs, against its two halves in the same run.

    python benchmarks/train_e2e.py                          # 2 GiB, TopK 768 -> 1024 (CPU-sized), 1 and 16 SAEs
    python benchmarks/train_e2e.py --device cuda --d-sae 16384 --gib 8 --steps 60   # a GPU host

For each SAE count, in this order, each timed over the same number of steps:

- loader alone: ``ShuffledDataLoader.stream()`` batches, moved to the device by the trainer's
  :class:`~saev_ops.loaders.feed.DeviceFeed` (on a GPU: pinned batch buffers, copies on a stream of their own);
- step alone: the Trainer itself with its loader's stream replaced by one batch held in memory, served again and
  again (scaling, finiteness check, every SAE's step, metric windows: everything but the reads);
- pipeline: :class:`saev_ops.train.trainer.Trainer` itself (loader, finiteness check, every SAE's step, metric
  windows; no registry: reports go to a null journal), from its first batch, as a run sees it.

Warm = the files in the page cache; cold = their pages dropped first (posix_fadvise DONTNEED) for the loader and the
pipeline. Target: the pipeline at 0.9x the slower half or better. Rates are patches (rows) per second.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


class NullJournal:
    def log(self, run_id: int, step: int, report: dict[str, Any]) -> None:
        pass


def job_spec(path: pathlib.Path, n_saes: int, args: argparse.Namespace, root: pathlib.Path) -> Any:
    from saev_ops.runconfig import TrainSettings
    from saev_ops.sae import SAEConfig
    from saev_ops.shards import ShardReader
    from saev_ops.train.spec import RunSpec, TrainJobSpec

    reader = ShardReader(path)
    layer = reader.md.layers[-1]
    settings = TrainSettings(batch_size=args.batch_size, n_tokens=args.batch_size * args.steps, device=args.device,
                             log_every=max(1, args.steps // 4), ckpt_every=10**9, heartbeat_s=10**9)
    sae = SAEConfig.of(arch="topk", d_model=reader.d_model, d_sae=args.d_sae, k=args.k)
    runs = tuple(RunSpec(run_id=i + 1, sae=sae, lr=1e-3, seed=i) for i in range(n_saes))
    return TrainJobSpec(db_url="sqlite://", dataset="bench", dataset_path=str(path), dataset_hash="bench",
                        layer=layer, tokens="all", settings=settings, runs=runs, runs_root=str(root))


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def loader_alone(trainer: Any, steps: int, device: str) -> float:
    stream = trainer.loader.stream()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        x = trainer.feed(next(stream))  # as the trainer moves it: pinned, on a copy stream, on a GPU
    del x
    trainer.feed.close()
    sync(device)
    dt = time.perf_counter() - t0
    stream.close()
    return steps * trainer.spec.settings.batch_size / dt


def step_alone(spec: Any, device: str) -> float:
    """The Trainer's whole step (scaling, finiteness check, every SAE's step, metric windows) on one batch held in
    memory, served again and again in place of the loader's stream."""
    from saev_ops.train.trainer import Trainer

    trainer = Trainer(spec, None)
    stream = trainer.loader.stream()
    batch = next(stream)
    stream.close()

    def same_batch() -> Any:
        while True:
            yield batch

    trainer.loader.stream = same_batch  # type: ignore[method-assign]  # the benchmark's stand-in for the reads
    sync(device)
    t0 = time.perf_counter()
    trainer.train(NullJournal())
    sync(device)
    return spec.settings.n_steps * spec.settings.batch_size / (time.perf_counter() - t0)


def pipeline(spec: Any, device: str) -> float:
    from saev_ops.train.trainer import Trainer

    trainer = Trainer(spec, None)
    sync(device)
    t0 = time.perf_counter()
    trainer.train(NullJournal())
    sync(device)
    return spec.settings.n_steps * spec.settings.batch_size / (time.perf_counter() - t0)


def main() -> None:
    from loaders import drop_cache, generate, warm_cache

    from saev_ops.train.trainer import Trainer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--saes", default="1,16", help="SAE counts, comma-separated")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16384)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=pathlib.Path, help="generate into (or reuse) this directory")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--json", type=pathlib.Path, help="also write the figures as JSON here")
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="saev-e2e-"))
    path = generate(args.keep or tmp, args.gib, 768, 257, 1, "float32")
    print(f"ncpu={os.cpu_count()} device={args.device} dataset {path} ({args.gib} GiB), TopK 768->{args.d_sae} "
          f"k={args.k}, batch {args.batch_size}, {args.steps} steps per figure")
    print(f"{'SAEs':>4} {'cache':5} {'loader alone':>13} {'step alone':>11} {'pipeline':>10} {'x slower half':>13}")
    results = []
    stayed = 0.0

    def prepare(cache: str) -> None:
        nonlocal stayed
        if cache == "warm":
            warm_cache(path)
        else:
            stayed = max(stayed, drop_cache(path))

    for n in [int(s) for s in args.saes.split(",")]:
        spec = job_spec(path, n, args, tmp / f"runs-{n}")
        probe = Trainer(spec, None)
        step = step_alone(spec, args.device)
        for cache in ("warm",) if args.no_cold else ("warm", "cold"):
            prepare(cache)
            load = loader_alone(probe, args.steps, args.device)
            prepare(cache)
            pipe = pipeline(spec, args.device)
            print(f"{n:4d} {cache:5} {load:13,.0f} {step:11,.0f} {pipe:10,.0f} {pipe / min(load, step):13.2f}",
                  flush=True)
            results.append({"saes": n, "cache": cache, "loader_alone": load, "step_alone": step, "pipeline": pipe,
                            "x_slower_half": pipe / min(load, step), "device": args.device, "d_sae": args.d_sae,
                            "k": args.k, "batch_size": args.batch_size, "steps": args.steps, "gib": args.gib,
                            "ncpu": os.cpu_count()})
        del probe
    if stayed > 0.5:
        print(f"WARNING: {stayed:.0%} of the files' pages stayed cached after dropping them (this kernel or file "
              "system ignores posix_fadvise DONTNEED): the cold figures above are not reads from disk")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
