"""Shared by the Slurm test modules: is the CI cluster up, waiting on it, reading sacct."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import REQUIRE_SERVICES


def cluster_ready() -> str | None:
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set (start the cluster with tests/slurm/cluster.sh up)"
    if shutil.which("scontrol") is None:
        return "scontrol is not installed"
    res = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return None if "UP" in res.stdout else f"slurmctld does not answer: {res.stdout.strip()} {res.stderr.strip()}"


def require_cluster() -> None:
    """Skip without the cluster; fail instead under SAEV_OPS_REQUIRE_SERVICES=1 (CI)."""
    reason = cluster_ready()
    if reason:
        if REQUIRE_SERVICES:
            pytest.fail(f"the Slurm cluster is required (SAEV_OPS_REQUIRE_SERVICES=1): {reason}")
        pytest.skip(reason)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def sacct_rows(job: str) -> list[dict[str, Any]]:
    """The allocations of ``job`` (every array task): JobID, State, Start, End (datetimes where known)."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,Start,End", "-j", job],
                         capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) != 4:
            continue
        row: dict[str, Any] = dict(zip(("JobID", "State", "Start", "End"), parts, strict=True))
        for k in ("Start", "End"):
            try:
                row[k] = dt.datetime.fromisoformat(row[k])
            except ValueError:
                row[k] = None
        rows.append(row)
    return rows
