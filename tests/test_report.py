"""Pareto frontier and the static HTML report, rendered by a real headless Chromium (Debian's package)."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

from saev_ops.explore.pareto import frontier
from saev_ops.explore.report import build_report
from saev_ops.infer import InferSpec, run_inference
from saev_ops.registry import RunQuery
from tests.conftest import REQUIRE_SERVICES


def test_frontier() -> None:
    from saev_ops.registry.records import RunRow

    class R:
        def __init__(self, i: int, x: float, y: float) -> None:
            self.run = type("run", (), {"id": i})()
            self.summary = {"l0": x, "nmse": y}

    rows = [R(1, 8, 0.5), R(2, 16, 0.3), R(3, 16, 0.4), R(4, 32, 0.35), R(5, 64, 0.1), R(6, 4, 0.9)]
    _, front = frontier(rows, "l0", "nmse")  # type: ignore[arg-type]
    assert [rid for _, _, rid in front] == [6, 1, 2, 5]
    assert RunRow  # the real rows have the same two attributes


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_with_its_images(tmp_path: pathlib.Path) -> None:
    from saev_ops.record import RecordSpec, record_dataset
    from saev_ops.record.images import generate_images
    from saev_ops.registry import Registry
    from saev_ops.sweeps import parse_sweep, submit_sweep

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    generate_images(tmp_path / "imgs", 12, size=32, n_classes=2)
    record_dataset(reg, RecordSpec(name="tiny", images=str(tmp_path / "imgs"), model="builtin:tiny",
                                   data_root=str(tmp_path / "data")))
    grid = f"""name: rep
dataset: tiny
executor: debug
runs_root: {tmp_path / 'runs'}
train: {{batch_size: 64, n_tokens: 1280, log_every: 5, ckpt_every: 10, lr_warmup_steps: 2, buffer_mb: 0.2}}
base: {{arch: topk, d_sae: 64, dead_tokens: 640}}
grid: {{k: [4, 8]}}
"""
    submit_sweep(reg, parse_sweep(grid), url)
    ids = tuple(r.run.id for r in reg.list_runs(RunQuery(sweep="rep")))
    (out, _) = run_inference(InferSpec(db_url=url, run_ids=ids, dataset="tiny", out_root=str(tmp_path / "o")))
    page = build_report(reg, "rep", tmp_path / "report", output_id=out.id, n_top=4)
    text = page.read_text()
    assert "pareto.png" in text and "curves.png" in text and text.count("<img src='latent-") >= 1
    browser = _chromium()
    if browser is None:
        if REQUIRE_SERVICES:
            pytest.fail("Chromium is required (SAEV_OPS_REQUIRE_SERVICES=1): install Debian's chromium")
        pytest.skip("no Chromium on this machine")
    res = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", res.stdout)
    assert body, res.stderr[-2000:]
    n = re.search(r'data-images="(\d+)"', body.group(0))
    ok = re.search(r'data-images-ok="(\d+)"', body.group(0))
    assert n and ok and int(n.group(1)) >= 3 and ok.group(1) == n.group(1), body.group(0)
