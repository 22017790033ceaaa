"""`saev-ops serve` on a large output: page latency and the server's memory.

An output of 1,000,192 rows (3,907 images x 256 patches) x 16,384 latents, TopK-like (k latents a row, latent
frequencies Zipf-distributed, so a few latents fire on a large share of rows and most on few), over a real dataset
directory (LMDB index, image classes, patch labels). It times, through the app (Starlette's test client, the whole
request: routing, registry reads, the page's data, the template):

- the first open (the latent index built: the transpose of the CSR matrix, strongest first, with each latent's
  purity), once;
- a latent page for the most frequent latent, a median one and a rare one (median of --repeats), against the baseline
  measured in the same run: finding the same latent's top rows by scanning the CSR matrix (`saev-ops latents top`);
- the output's latent table, an image page;
- the process's peak resident memory against the output's size on disk.

    python benchmarks/serve.py                  # 1M rows x 16,384 latents, k=32 (about 0.3 GB of CSR)
    python benchmarks/serve.py --examples 400   # smaller, quicker
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def write_output(folder: pathlib.Path, n_rows: int, d_sae: int, k: int, seed: int = 0) -> int:
    """A TopK-like CSR output in `saev-ops infer`'s layout, with its statistics; returns nnz."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, d_sae + 1) ** 1.1
    p /= p.sum()
    perm = rng.permutation(d_sae)  # frequent latents are not the low ids
    indices = np.empty((n_rows, k), dtype=np.int32)
    block = 1 << 17
    for a in range(0, n_rows, block):  # k distinct latents a row, drawn by frequency (duplicates redrawn)
        draw = np.sort(rng.choice(d_sae, size=(min(block, n_rows - a), k), p=p), axis=1)
        for attempt in range(50):
            dup = np.zeros(draw.shape, dtype=bool)
            dup[:, 1:] = draw[:, 1:] == draw[:, :-1]
            if not dup.any():
                break
            draw[dup] = rng.choice(d_sae, size=int(dup.sum()), p=p) if attempt < 40 else rng.integers(
                0, d_sae, int(dup.sum()))
            draw.sort(axis=1)
        indices[a : a + len(draw)] = np.sort(perm[draw], axis=1)
    data = rng.gamma(2.0, 0.5, size=(n_rows, k)).astype(np.float32)
    indices, data = indices.ravel(), data.ravel()
    indptr = np.arange(0, n_rows * k + 1, k, dtype=np.int64)
    folder.mkdir(parents=True)
    np.savez(folder / "latents.npz", indices=indices, indptr=indptr, format=np.array("csr"),
             shape=np.array([n_rows, d_sae]), data=data)
    freq = np.bincount(indices, minlength=d_sae)
    total = np.bincount(indices, weights=data, minlength=d_sae)
    top = np.zeros(d_sae, np.float32)
    np.maximum.at(top, indices, data)
    np.savez(folder / "latent_stats.npz", frequency=freq / n_rows, mean=(total / np.maximum(freq, 1)).astype(
        np.float32), max=top, count=freq)
    return int(len(indices))


def anon_mib() -> float:
    """This process's anonymous resident memory (not the file pages it maps, which the kernel can drop)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    from starlette.testclient import TestClient

    from saev_ops.infer.read import Output
    from saev_ops.registry import Registry
    from saev_ops.serve.app import create_app
    from tests.shard_helpers import write_dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=3907)
    ap.add_argument("--patches", type=int, default=256)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="saev-serve-bench-"))
    try:
        ds = write_dataset(tmp / "data", n_examples=args.examples, layers=(11,), n_patches=args.patches, d_model=4,
                           patch_labels=True)
        url = f"sqlite:///{tmp / 'r.sqlite'}"
        reg = Registry(url)
        reg.create_dataset(name="big", content_hash="b" * 32, path=str(ds), model_family="clip", model_ckpt="t",
                           layers=[11], d_model=4, tokens_per_example=args.patches + 1, n_examples=args.examples,
                           dtype="float32", status="complete",
                           extra={"token_layout": {"n_cls": 1, "n_registers": 0, "n_patches": args.patches}})
        (run, _), = reg.add_runs("big", [{"sae": {"arch": "topk", "d_sae": args.d_sae, "k": args.k}}])
        n_rows = args.examples * args.patches
        out = tmp / "out"
        t = time.perf_counter()
        nnz = write_output(out, n_rows, args.d_sae, args.k)
        print(f"output: {n_rows:,} rows x {args.d_sae:,} latents, nnz {nnz:,} "
              f"({(out / 'latents.npz').stat().st_size / 2**20:.0f} MiB), written in {time.perf_counter() - t:.0f} s")
        (out / "output.json").write_text(json.dumps({"tokens_per_example": args.patches,
                                                     "token_idx": list(range(1, args.patches + 1))}))
        rec = reg.add_output(run_id=run.id, dataset="big", path=str(out), n_rows=n_rows, n_cols=args.d_sae, nnz=nnz)
        anon0 = anon_mib()
        client = TestClient(create_app(url))
        t = time.perf_counter()
        assert client.get(f"/output/{rec.id}").status_code == 200
        build = time.perf_counter() - t
        print(f"first open (latent index built, {sum(f.stat().st_size for f in (out / 'by_latent').iterdir()) / 2**20:.0f}"
              f" MiB): {build:.1f} s")
        freq = np.load(out / "latent_stats.npz")["count"]
        alive = np.flatnonzero(freq)
        by_freq = alive[np.argsort(-freq[alive], kind="stable")]
        picks = {"most frequent": int(by_freq[0]), "median": int(by_freq[len(by_freq) // 2]),
                 "rare": int(by_freq[-1])}
        o = Output.open(reg, rec.id)
        rows = []
        for name, j in picks.items():
            ms = timed(lambda j=j: client.get(f"/output/{rec.id}/latent/{j}").raise_for_status(), args.repeats)
            rows.append((f"latent, {name} ({freq[j]:,} rows)", ms, j))
        for name, path in (("latent table (sorted by purity)", f"/output/{rec.id}?sort=purity"),
                           ("latent table, page 50", f"/output/{rec.id}?page=50"),
                           ("image page", f"/output/{rec.id}/image/{args.examples // 2}")):
            ms = timed(lambda path=path: client.get(path).raise_for_status(), args.repeats)
            rows.append((name, ms, None))
        anon_app = anon_mib()
        print(f"{'page':<38}{'ms (median)':>12}{'baseline ms':>13}{'ratio':>8}")
        for name, ms, j in rows:
            if j is None:
                print(f"{name:<38}{ms:>12.0f}")
                continue
            base = timed(lambda j=j: o.top_rows(j, 24 * 16), max(1, args.repeats // 2))
            print(f"{name:<38}{ms:>12.0f}{base:>13.0f}{base / ms:>7.1f}x")
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        print(f"anonymous memory: {anon0:.0f} MiB before the app, {anon_app:.0f} MiB after its pages (output + index "
              f"on disk: {size:.0f} MiB, mapped, not loaded); peak RSS of the whole run, baseline included: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        reg.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
