"""Registry at scale: fill 100,000 runs and 10,000,000 metric points, then time the queries researchers run.

    python benchmarks/registry.py                       # SQLite (temp file) and Postgres if reachable
    python benchmarks/registry.py --runs 10000 --points 1000000 --backend sqlite

Timed (median of --repeat runs, in this process, after one warm-up):
- list: `runs list --dataset ds3 --where nmse<0.2 --where l0<=64 --sort nmse --limit 50` (Registry.list_runs)
- show: `runs show ID` (Registry.run_detail)
- history: one run's metric history (Registry.metric_history)
- baseline: plain `SELECT count(*) FROM runs`, measured in the same run, so the ratio is comparable across machines.
Also the wall time of the `saev-ops runs list ...` command as a subprocess (start-up included).

    python benchmarks/registry.py --writers 100 [--steps 200] [--backend postgres]

Many jobs, one registry: --writers processes each stream one run's metrics the way a training job does (the job's
registry, a connection only while writing, through its Journal: 10 keys per report, --steps reports back to back).
Prints points/s against one writer alone (measured first, in the same run), the peak number of server connections
(pg_stat_activity, sampled every 50 ms) against max_connections, how many reports had to be buffered to files (registry
refused) and synced, and checks that every point is in the registry exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from saev_ops.registry import Registry, RunQuery
from saev_ops.registry.engine import create_registry_engine

KEYS = ("loss", "mse", "nmse", "l0", "dead_frac")
N_DATASETS = 10
N_SWEEPS = 100
PG_URL = os.environ.get("SAEV_OPS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def fill(reg: Registry, n_runs: int, n_points: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    steps_per_key = max(1, n_points // (n_runs * len(KEYS)))
    now = "2026-01-01 00:00:00"
    with reg.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO datasets (name, content_hash, path, status, source_path, model_family, model_ckpt, layers,"
                " d_model, tokens_per_example, n_examples, dtype, extra, created_at) VALUES (:n, :h, '/d', 'complete',"
                " '/img', 'clip', 'b16', '[11]', 768, 197, 1000000, 'float32', '{}', :t)"
            ),
            [{"n": f"ds{i}", "h": uuid.uuid4().hex, "t": now} for i in range(N_DATASETS)],
        )
        conn.execute(
            sa.text("INSERT INTO sweeps (name, grid_yaml, created_at) VALUES (:n, '', :t)"),
            [{"n": f"sweep{i}", "t": now} for i in range(N_SWEEPS)],
        )
        conn.execute(
            sa.text(
                "INSERT INTO runs (id, sweep_id, dataset_id, config, config_hash, status, attempts, created_at)"
                " VALUES (:id, :sw, :ds, :cfg, :h, 'completed', 1, :t)"
            ),
            [
                {"id": i + 1, "sw": i % N_SWEEPS + 1, "ds": i % N_DATASETS + 1, "cfg": f'{{"k": {i % 512}}}',
                 "h": uuid.uuid4().hex, "t": now}
                for i in range(n_runs)
            ],
        )
    summaries = []
    for run in range(1, n_runs + 1):
        nmse = rng.random() * 0.6
        l0 = float(rng.randint(8, 256))
        summaries += [(run, "loss", nmse + 0.01), (run, "mse", nmse * 3), (run, "nmse", nmse), (run, "l0", l0),
                      (run, "dead_frac", rng.random() * 0.1)]
    final = {(r, k): v for r, k, v in summaries}
    t0 = time.perf_counter()
    if reg.dialect == "postgresql":
        raw = reg.engine.raw_connection()
        try:
            cur = raw.driver_connection.cursor()
            with cur.copy("COPY metric_summaries (run_id, key, value, step, updated_at) FROM STDIN") as cp:
                for (r, k), v in final.items():
                    cp.write_row((r, k, v, steps_per_key - 1, now))
            with cur.copy("COPY metric_points (run_id, key, step, value, time) FROM STDIN") as cp:
                for run in range(1, n_runs + 1):
                    for k in KEYS:
                        last = final[(run, k)]
                        for step in range(steps_per_key):
                            cp.write_row((run, k, step, last * (1 + (steps_per_key - 1 - step) * 0.01), now))
            raw.driver_connection.commit()
            cur.execute("ANALYZE")
            raw.driver_connection.commit()
        finally:
            raw.close()
    else:
        raw = reg.engine.raw_connection()
        try:
            dbapi = raw.driver_connection
            dbapi.execute("BEGIN")
            dbapi.executemany(
                "INSERT INTO metric_summaries (run_id, key, value, step, updated_at) VALUES (?, ?, ?, ?, ?)",
                (((r, k, v, steps_per_key - 1, now) for (r, k), v in final.items())),
            )
            dbapi.executemany(
                "INSERT INTO metric_points (run_id, key, step, value, time) VALUES (?, ?, ?, ?, ?)",
                (
                    (run, k, step, final[(run, k)] * (1 + (steps_per_key - 1 - step) * 0.01), now)
                    for run in range(1, n_runs + 1)
                    for k in KEYS
                    for step in range(steps_per_key)
                ),
            )
            dbapi.execute("COMMIT")
            dbapi.execute("ANALYZE")
        finally:
            raw.close()
    print(f"  filled {n_runs:,} runs, {n_runs * len(KEYS) * steps_per_key:,} metric points "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)


def timed(fn, repeat: int) -> float:  # noqa: ANN001
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def bench(url: str, label: str, n_runs: int, n_points: int, repeat: int) -> None:
    print(f"\n== {label}", flush=True)
    reg = Registry(url)
    fill(reg, n_runs, n_points)
    q = RunQuery(dataset="ds3", where=("nmse<0.2", "l0<=64"), sort="nmse", limit=50)
    rows = reg.list_runs(q)
    assert rows and all(r.summary["nmse"] < 0.2 and r.summary["l0"] <= 64 for r in rows)
    assert [r.summary["nmse"] for r in rows] == sorted(r.summary["nmse"] for r in rows)

    def count() -> None:
        with reg.engine.connect() as conn:
            conn.execute(sa.text("SELECT count(*) FROM runs")).scalar()

    t_count = timed(count, repeat)
    t_list = timed(lambda: reg.list_runs(q), repeat)
    show_id = rows[0].run.id
    t_show = timed(lambda: reg.run_detail(show_id), repeat)
    t_hist = timed(lambda: reg.metric_history(show_id), repeat)
    cmd = [sys.executable, "-m", "saev_ops", "--db", url, "runs", "list", "--dataset", "ds3", "--where", "nmse<0.2",
           "--where", "l0<=64", "--sort", "nmse", "--limit", "50"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    t_cli = time.perf_counter() - t0
    print(f"  baseline SELECT count(*) FROM runs : {t_count * 1e3:8.2f} ms")
    print(f"  runs list (where x2, sort, limit 50): {t_list * 1e3:8.2f} ms  = {t_list / t_count:6.1f}x baseline"
          f"  (target < 200 ms on SQLite)")
    print(f"  runs show                          : {t_show * 1e3:8.2f} ms  = {t_show / t_count:6.1f}x baseline")
    print(f"  metric history of one run          : {t_hist * 1e3:8.2f} ms  = {t_hist / t_count:6.1f}x baseline")
    print(f"  `saev-ops runs list ...` subprocess : {t_cli * 1e3:8.0f} ms (interpreter start-up included)")
    reg.close()


@contextlib.contextmanager
def pg_schema(url: str = PG_URL) -> Iterator[str]:
    """A registry URL on PostgreSQL ``url`` whose search_path is a fresh schema, dropped on exit (raises at once when
    the server does not answer)."""
    schema = "bench_" + uuid.uuid4().hex[:8]
    admin = create_registry_engine(url, connect_args={"connect_timeout": 3})
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        from saev_ops.registry.schema_version import reader_role

        with admin.begin() as conn:
            has_id = conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"),
                                  {"t": f"{schema}.registry_identity"}).scalar()
            rid = conn.execute(sa.text(f"SELECT id FROM {schema}.registry_identity")).scalar() if has_id else None
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            if rid is not None:  # its reader role is server-wide
                conn.execute(sa.text(f"DROP ROLE IF EXISTS {reader_role(str(rid))}"))
        admin.dispose()


WRITER_KEYS = ("loss", "mse", "nmse", "explained_variance", "l0", "dead_frac", "dense_frac", "lr", "auxk",
               "grad_norm")


def _writer(url: str, run_id: int, steps: int, run_dir: str, ready: Any, out: Any) -> None:
    """One job's metric stream (the registry a training job opens, its Journal); puts (reports sent, reports buffered
    to its journal file, start, end) on ``out``."""
    import pathlib

    from saev_ops.train.journal import Journal

    reg = Registry(url, hold_connections=False)  # as saev_ops.train.trainer._open_registry opens it in a job
    journal = Journal(reg, {run_id: pathlib.Path(run_dir)}, registry_id=reg.registry_id,
                      identities={run_id: reg.get_run(run_id).config_hash})
    if ready is not None:
        ready.wait()  # every writer starts together, imports done
    t0 = time.time()
    for step in range(1, steps + 1):
        journal.log(run_id, step, {k: random.random() for k in WRITER_KEYS})
    out.put((steps, journal.buffered, t0, time.time()))


def _sample_connections(url: str, stop: Any, peak: Any) -> None:
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        while not stop.is_set():
            n = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
                             ).scalar_one()
            peak.value = max(peak.value, int(n))
            time.sleep(0.05)


def writers(url: str, label: str, n: int, steps: int) -> None:
    import multiprocessing as mp
    import pathlib
    import threading

    from saev_ops.train.journal import sync_file

    reg = Registry(url)
    ds = reg.create_dataset(name=f"w-{uuid.uuid4().hex[:8]}", content_hash=uuid.uuid4().hex, path="/x",
                            model_family="builtin", model_ckpt="small", layers=[3], d_model=8, tokens_per_example=1,
                            n_examples=1, dtype="float32", status="complete")
    runs = [r.id for r, _ in reg.add_runs(ds.name, [{"w": i, "tag": uuid.uuid4().hex} for i in range(n + 1)])]
    pg = url.startswith("postgresql")
    limit = None
    if pg:
        with sa.create_engine(url).connect() as conn:
            limit = int(conn.execute(sa.text("SHOW max_connections")).scalar_one()) - int(
                conn.execute(sa.text("SHOW superuser_reserved_connections")).scalar_one())
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {rid: pathlib.Path(tmp) / f"run-{rid}" for rid in runs}
        for d in dirs.values():
            d.mkdir()
        q = ctx.Queue()
        _writer(url, runs[0], steps, str(dirs[runs[0]]), None, q)
        _, _, a0, a1 = q.get()
        alone = steps * len(WRITER_KEYS) / (a1 - a0)
        stop, peak = threading.Event(), ctx.Value("i", 0)
        sampler = threading.Thread(target=_sample_connections, args=(url, stop, peak)) if pg else None
        if sampler:
            sampler.start()
        ready = ctx.Barrier(n)
        procs = [ctx.Process(target=_writer, args=(url, rid, steps, str(dirs[rid]), ready, q)) for rid in runs[1:]]
        for proc in procs:
            proc.start()
        results = [q.get() for _ in procs]
        for proc in procs:
            proc.join()
        wall = max(r[3] for r in results) - min(r[2] for r in results)
        stop.set()
        if sampler:
            sampler.join()
        buffered = sum(r[1] for r in results)
        for rid in runs[1:]:  # what a refused write left in the journal goes in now, as `sweep sync` would
            f = dirs[rid] / "metrics.jsonl"
            if f.exists():
                sync_file(reg, f)
    expected = n * steps * len(WRITER_KEYS)
    with reg.engine.connect() as conn:
        got = conn.execute(sa.text("SELECT count(*), count(DISTINCT run_id || ':' || key || ':' || step) "
                                   "FROM metric_points WHERE run_id IN (" + ",".join(map(str, runs[1:])) + ")")
                           ).one()
    print(f"\n== {label}: {n} writers x {steps} reports x {len(WRITER_KEYS)} keys")
    print(f"  one writer alone:      {alone:10,.0f} points/s")
    print(f"  {n} writers together: {expected / wall:10,.0f} points/s  ({expected / wall / alone:.1f}x one writer)")
    if pg:
        print(f"  server connections:    peak {peak.value} of {limit} allowed (max_connections - reserved)")
    print(f"  reports buffered to journal files (registry refused, synced after): {buffered}")
    print(f"  points in the registry: {got[0]:,} of {expected:,} expected, {got[1]:,} distinct"
          f"{'  OK: none lost, none twice' if got[0] == got[1] == expected else '  LOST OR DUPLICATED'}")
    reg.delete_dataset(ds.name, force=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", type=int, help="Many-writers mode: this many processes stream metrics.")
    ap.add_argument("--steps", type=int, default=200, help="Reports per writer (many-writers mode).")
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--points", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--backend", choices=("all", "sqlite", "postgres"), default="all")
    args = ap.parse_args()
    if args.writers:
        if args.backend in ("all", "postgres"):
            with pg_schema() as url:
                writers(url, "PostgreSQL", args.writers, args.steps)
        if args.backend in ("all", "sqlite"):
            with tempfile.TemporaryDirectory() as tmp:
                writers(f"sqlite:///{tmp}/bench.sqlite", "SQLite (one file, one machine)", args.writers, args.steps)
        return
    if args.backend in ("all", "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            bench(f"sqlite:///{tmp}/bench.sqlite", "SQLite", args.runs, args.points, args.repeat)
    if args.backend in ("all", "postgres"):
        with contextlib.ExitStack() as stack:
            try:
                url = stack.enter_context(pg_schema())
            except Exception as exc:  # noqa: BLE001 - PostgreSQL is optional here
                print(f"\n== PostgreSQL skipped: {PG_URL} unreachable ({str(exc).splitlines()[0]})")
                return
            bench(url, "PostgreSQL", args.runs, args.points, args.repeat)


if __name__ == "__main__":
    main()
