"""`sweep status` of a 10,000-run Slurm sweep: reconciling the registry with sacct, against its floor, in one run.

    python benchmarks/sweeps.py                                  # SQLite in a temporary directory
    python benchmarks/sweeps.py --db postgresql://postgres@127.0.0.1:5432/test

The registry holds a sweep of 10,000 runs placed as the CI cluster places them (909 arrays of 11 and one plain job);
``sacct`` answers with the output recorded on the CI cluster after that sweep was cancelled while pending
(tests/data/sacct_10000_cancelled.txt, through a stand-in ``sacct`` on PATH that prints it). Prints the time of one
``reconcile`` that marks all 10,000 runs cancelled (target under 10 s), next to its floor measured in the same run: one
read of the sweep's runs plus the sacct calls. A second ``reconcile`` with nothing to change is also timed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "sacct_10000_cancelled.txt"


def main() -> None:
    from saev_ops.registry import Registry, RunQuery
    from saev_ops.sweeps.status import reconcile, sacct_states

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="registry URL (default: SQLite in a temporary directory); its tables are used as is")
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="saev-sweeps-bench-"))
    try:
        reg = Registry(args.db or f"sqlite:///{tmp / 'r.sqlite'}")
        name = f"bench-{os.getpid()}"
        ds = reg.create_dataset(name=name, content_hash=os.urandom(16).hex(), path=str(tmp), model_family="builtin",
                                model_ckpt="small", layers=[3], d_model=128, tokens_per_example=65, n_examples=1,
                                dtype="float32", status="complete")
        reg.get_or_create_sweep(name, f"name: {name}")
        t0 = time.perf_counter()
        runs = reg.add_runs(ds.name, [{"i": i} for i in range(10_000)], sweep=name)
        first = int(FIXTURE.read_text().split("_", 1)[0])
        reg.set_many_run_fields([(r.id, {"executor": "slurm", "slurm_job_id": str(first + i // 11),
                                         "slurm_array_index": i % 11 if i < 9_999 else None})
                                 for i, (r, _) in enumerate(runs)])
        print(f"registered and placed 10,000 runs in {time.perf_counter() - t0:.1f} s")
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        (bin_dir / "sacct").write_text(f"#!/bin/sh\ncat {FIXTURE}\n")
        (bin_dir / "sacct").chmod(0o755)
        os.environ["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
        t0 = time.perf_counter()
        rows = reg.list_runs(RunQuery(sweep=name, statuses=("queued", "running")))
        sacct_states([r.run.slurm_job_id for r in rows if r.run.slurm_job_id])
        floor = time.perf_counter() - t0
        t0 = time.perf_counter()
        changes = reconcile(reg, name)
        full = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = reconcile(reg, name)
        idle = time.perf_counter() - t0
        assert len(changes) == 10_000 and again == []
        print(f"floor (read the sweep's runs + sacct):   {floor:6.2f} s")
        print(f"reconcile, 10,000 runs marked cancelled: {full:6.2f} s  ({full / floor:.1f}x the floor; target < 10 s)")
        print(f"reconcile again, nothing to change:      {idle:6.2f} s")
        reg.delete_dataset(name, force=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
