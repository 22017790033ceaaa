"""Figures for docs/reliability.md: what survives concurrency, kills and corruption, measured here and now.

    python benchmarks/faults.py                         # SQLite (temp file) and PostgreSQL if reachable
    python benchmarks/faults.py --writers 16 --points 2000 --kills 11

1. writers x points -> rows: N processes each log P metric points the way training jobs do (one transaction per step,
   4 keys a step), all at once, into one registry; then each point is logged again by a second wave (a resumed job
   re-logging). Rows counted per run: expected P each, lost = expected - found, duplicates = found - expected.
2. kills survived: a recording (builtin:tiny on generated images, several shards) is killed with SIGKILL K times at
   random moments, resumed each time, and its shard files compared byte for byte with an uninterrupted recording.
3. corruptions caught: each corruption of docs/reliability.md's list is applied to a fresh copy of a dataset and
   `verify` (quick) is asked; a corruption counts as caught when verify names the damaged file.
4. owners kept apart: two recordings that differ only in their masks, an import of a registered directory, a runs
   folder synced into another registry, and (PostgreSQL) one registry's owner reading another registry; each case
   says whether ownership held.
"""

from __future__ import annotations

import argparse
import filecmp
import multiprocessing as mp
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

PG_URL = os.environ.get("SAEV_OPS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
KEYS = ("loss", "mse", "nmse", "l0")


def _writer(url: str, run_id: int, points: int, barrier) -> int:  # noqa: ANN001
    from saev_ops.registry import Registry

    reg = Registry(url)
    barrier.wait()
    n = 0
    for step in range(points // len(KEYS)):
        n += reg.log_metrics(run_id, [(k, step, step * 0.001 + i) for i, k in enumerate(KEYS)])
    reg.close()
    return n


def writers(url: str, label: str, n_writers: int, points: int) -> None:
    import sqlalchemy as sa

    from saev_ops.registry import Registry

    reg = Registry(url)
    reg.create_dataset(name="d", content_hash=uuid.uuid4().hex, path="/d", model_family="clip", model_ckpt="c",
                       layers=[1], d_model=8, tokens_per_example=2, n_examples=1, dtype="float32")
    run_ids = [r.id for r, _ in reg.add_runs("d", [{"writer": i} for i in range(n_writers)])]
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    for _wave in range(2):  # the second wave re-logs every point, as a resumed job does
        with ctx.Manager() as manager:
            barrier = manager.Barrier(n_writers)
            with ctx.Pool(n_writers) as pool:
                pool.starmap(_writer, [(url, rid, points, barrier) for rid in run_ids])
    wall = time.perf_counter() - t0
    with reg.engine.connect() as conn:
        per_run = dict(conn.execute(sa.text("SELECT run_id, count(*) FROM metric_points GROUP BY run_id")).all())
    want = points // len(KEYS) * len(KEYS)
    found = sum(per_run.get(r, 0) for r in run_ids)
    lost = sum(max(0, want - per_run.get(r, 0)) for r in run_ids)
    dup = sum(max(0, per_run.get(r, 0) - want) for r in run_ids)
    print(f"{label:10} {n_writers} writers x {want} points, logged twice: {found} rows "
          f"(expected {n_writers * want}), {lost} lost, {dup} duplicated, {2 * n_writers * want / wall:,.0f} points/s")
    reg.close()


def kills(n_kills: int, seed: int) -> None:
    from saev_ops.record.images import generate_images

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="saev-faults-"))
    rng = random.Random(seed)
    try:
        generate_images(tmp / "imgs", 96, size=48, n_classes=4)

        def cmd(db: str, root: str) -> list[str]:
            return [sys.executable, "-m", "saev_ops", "--db", db, "datasets", "record", "--name", "k", "--images",
                    str(tmp / "imgs"), "--model", "builtin:tiny", "--layers", "1,3", "--batch-size", "4",
                    "--data-root", str(tmp / root), "--max-tokens-per-shard", str(17 * 2 * 8)]

        ref = subprocess.run(cmd(str(tmp / "ref.sqlite"), "ref"), capture_output=True, text=True)
        assert ref.returncode == 0, ref.stderr
        t0 = time.perf_counter()
        subprocess.run(cmd(str(tmp / "t.sqlite"), "t"), capture_output=True)
        full = time.perf_counter() - t0
        shutil.rmtree(tmp / "t")
        (tmp / "t.sqlite").unlink()
        survived = 0
        for _ in range(n_kills):
            proc = subprocess.Popen(cmd(str(tmp / "k.sqlite"), "k"), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3, full * 0.9))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                survived += 1
            proc.wait()
        done = subprocess.run(cmd(str(tmp / "k.sqlite"), "k"), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        a = next((tmp / "ref" / "saev" / "shards").iterdir())
        b = next((tmp / "k" / "saev" / "shards").iterdir())
        names = sorted(p.name for p in a.iterdir()
                       if p.name.startswith("acts") or p.name in ("metadata.json", "shards.json", "labels.bin"))
        same = all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)
        print(f"recording killed with SIGKILL {survived} times mid-write (of {n_kills} tries), resumed: "
              f"{len(names)} saev files {'identical' if same else 'DIFFERENT'} to an uninterrupted recording")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def corruptions() -> None:
    import json

    import numpy as np

    from saev_ops.shards.verify import verify
    from tests.shard_helpers import write_dataset

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="saev-corrupt-"))

    def flip(p: pathlib.Path, at: int) -> None:
        raw = bytearray(p.read_bytes())
        raw[at] ^= 0xFF
        p.write_bytes(bytes(raw))

    def truncate(p: pathlib.Path, keep: float = 0.5) -> None:
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * keep)])

    def recount(p: pathlib.Path) -> None:
        listing = json.loads(p.read_text())
        listing[0]["n_examples"] -= 1
        listing[1]["n_examples"] += 1
        p.write_text(json.dumps(listing))

    def nan_recorded(p: pathlib.Path) -> None:
        side = json.loads(p.read_text())
        side["stats"]["n_nonfinite"] = 3
        p.write_text(json.dumps(side))

    def swap(p: pathlib.Path) -> None:
        other, hold = p.with_name("acts000002.bin"), p.with_name("swap")
        p.rename(hold)
        other.rename(p)
        hold.rename(other)

    def edit_index(p: pathlib.Path) -> None:
        import struct

        import lmdb

        env = lmdb.open(str(p), subdir=True)
        with env.begin(write=True) as txn:
            key = b"e" + struct.pack(">Q", 3)
            entry = json.loads(txn.get(key))
            entry[2] = "img/elsewhere.jpg"
            txn.put(key, json.dumps(entry, separators=(",", ":")).encode())
        env.close()

    cases = [
        ("shard truncated", "acts000001.bin", truncate, False),
        ("shard missing", "acts000002.bin", lambda p: p.unlink(), False),
        ("shard byte flipped", "acts000000.bin", lambda p: flip(p, 1000), True),
        ("NaN written into a shard", "acts000000.bin",
         lambda p: p.write_bytes(p.read_bytes()[:400] + np.float32("nan").tobytes() + p.read_bytes()[404:]), True),
        ("shards.json per-shard counts wrong, same total", "shards.json", recount, False),
        ("shards.json not JSON", "shards.json", lambda p: p.write_text("[{"), False),
        ("metadata.json changed", "metadata.json", lambda p: p.write_text(p.read_text().replace('"clip"', '"siglip"')),
         False),
        ("stats.npz truncated", "stats.npz", truncate, False),
        ("stats.npz missing", "stats.npz", lambda p: p.unlink(), False),
        ("labels.bin missing", "labels.bin", lambda p: p.unlink(), False),
        ("labels.bin truncated", "labels.bin", lambda p: truncate(p, 0.9), False),
        ("LMDB index damaged", "index.lmdb/data.mdb", lambda p: p.write_bytes(b"\xff" * 8192 + p.read_bytes()[8192:]),
         False),
        ("LMDB index missing", "index.lmdb/data.mdb", lambda p: p.unlink(), False),
        ("non-finite values recorded while writing", "saev_ops.json", nan_recorded, False),
        ("sidecar missing", "saev_ops.json", lambda p: p.unlink(), False),
        ("two shards swapped", "acts000001.bin", swap, False),
        ("an image path edited inside the index", "index.lmdb", edit_index, True),
        ("labels.bin values outside the dataset's classes", "labels.bin", lambda p: flip(p, 17), True),
    ]
    try:
        base = write_dataset(tmp / "base", n_examples=40, layers=(3, 7), n_patches=16, d_model=32, patch_labels=True)
        caught = 0
        print(f"{'corruption':48} {'quick':>6} {'--full':>6}")
        for name, rel, damage, full_only in cases:
            copy = tmp / "case"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(base, copy)
            damage(copy / rel)
            target = rel.split("/")[0]
            quick = any(target in str(p) for p in verify(copy))
            full = any(target in str(p) for p in verify(copy, full=True))
            caught += full
            print(f"{name:48} {'yes' if quick else 'no':>6} {'yes' if full else 'no':>6}"
                  + ("   (needs a full scan)" if full_only and not quick else ""))
        print(f"corruptions caught: {caught} of {len(cases)} (each names the damaged file)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ownership(pg_url: str | None) -> None:
    import json

    import numpy as np

    from saev_ops import datasets, errors
    from saev_ops.record import RecordSpec, record_dataset
    from saev_ops.registry import Registry
    from saev_ops.train.journal import Journal, sync_runs_root
    from tests.shard_helpers import masked_images

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="saev-owners-"))
    rows: list[tuple[str, bool, str]] = []
    try:
        imgs, masks = masked_images(tmp, 4, np.full((64, 64), 5))
        reg = Registry(f"sqlite:///{tmp / 'r.sqlite'}")
        spec = {"images": str(imgs), "model": "builtin:tiny", "layers": (1,), "data_root": str(tmp / "data")}
        a = record_dataset(reg, RecordSpec(name="a", masks=str(masks), **spec))
        labels = (pathlib.Path(a.path) / "labels.bin").read_bytes()
        b = record_dataset(reg, RecordSpec(name="b", **spec))
        held = a.path != b.path and (pathlib.Path(a.path) / "labels.bin").read_bytes() == labels
        rows.append(("two recordings, masks then none", held, f"{pathlib.Path(a.path).name} / "
                                                               f"{pathlib.Path(b.path).name}"))
        try:
            datasets.import_dataset(reg, pathlib.Path(a.path), "alias")
            rows.append(("import of a registered directory", False, "registered a second row"))
        except errors.DuplicateError as exc:
            rows.append(("import of a registered directory", "'a'" in str(exc), "refused, naming dataset 'a'"))
        other = Registry(f"sqlite:///{tmp / 'other.sqlite'}")
        other.create_dataset(name="a", content_hash="x" * 64, path="/elsewhere", model_family="clip", model_ckpt="c",
                             layers=[1], d_model=8, tokens_per_example=2, n_examples=1, dtype="float32")
        (run, _), = reg.add_runs("a", [{"k": 1}])
        other.add_runs("a", [{"k": 2}])
        run_dir = tmp / "runs" / f"run-{run.id:06d}"
        run_dir.mkdir(parents=True)
        journal = Journal(None, {run.id: run_dir}, registry_id=reg.registry_id, identities={run.id: run.config_hash})
        for step in range(1, 145):
            journal.log(run.id, step, {"nmse": 0.2})
        try:
            sync_runs_root(other, tmp / "runs")
            rows.append(("runs folder synced into another registry", False,
                         f"{len(other.metric_history(run.id))} points stored"))
        except errors.DataError:
            held = other.metric_history(run.id) == [] and json.dumps(other.summary(run.id)) == "{}"
            rows.append(("runs folder synced into another registry", held, "refused, 0 points stored"))
        if pg_url is not None:
            rows.append(_two_pg_registries(pg_url))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'owners kept apart':44} {'held':>5}  detail")
    for name, held, detail in rows:
        print(f"{name:44} {'yes' if held else 'NO':>5}  {detail}")


def _two_pg_registries(pg_url: str) -> tuple[str, bool, str]:
    """One registry's `saev-ops sql` asked for another registry's rows on the same server."""
    from registry import pg_schema  # benchmarks/registry.py

    from saev_ops import errors
    from saev_ops.registry import Registry
    from saev_ops.registry.sql import run_read_only

    with pg_schema(pg_url) as url_a, pg_schema(pg_url) as url_b:
        a, b = Registry(url_a), Registry(url_b)
        other = url_b.rsplit("%3D", 1)[1]
        try:
            run_read_only(a, f"SELECT count(*) AS n FROM {other}.datasets")
            held, detail = False, "read the other registry"
        except errors.QueryError as exc:
            held, detail = "permission denied" in str(exc), "permission denied"
        a.close()
        b.close()
    return "registry A's sql reading registry B", held, detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", type=int, default=16)
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--kills", type=int, default=11)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="saev-writers-"))
    try:
        writers(f"sqlite:///{tmp / 'r.sqlite'}", "sqlite", args.writers, args.points)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        from registry import pg_schema  # benchmarks/registry.py: a throw-away schema

        with pg_schema(PG_URL) as url:
            writers(url, "postgresql", args.writers, args.points)
    except Exception as exc:  # noqa: BLE001 - PostgreSQL is optional here
        print(f"postgresql: skipped ({str(exc).splitlines()[0]})")
    kills(args.kills, args.seed)
    corruptions()
    try:
        from registry import pg_schema

        with pg_schema(PG_URL):
            pg_url: str | None = PG_URL
    except Exception:  # noqa: BLE001 - PostgreSQL is optional here
        pg_url = None
    ownership(pg_url)


if __name__ == "__main__":
    main()
