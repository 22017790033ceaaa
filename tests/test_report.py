"""Pareto frontier and the static HTML report, rendered by a real headless Chromium (Debian's package)."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import pytest

from saev_ops.explore.pareto import frontier, run_label
from saev_ops.explore.report import build_report
from saev_ops.registry import RunQuery
from tests.helpers import REQUIRE_SERVICES


def test_frontier() -> None:

    class R:
        def __init__(self, i: int, x: float, y: float) -> None:
            self.run = type("run", (), {"id": i})()
            self.summary = {"l0": x, "nmse": y}

    rows = [R(1, 8, 0.5), R(2, 16, 0.3), R(3, 16, 0.4), R(4, 32, 0.35), R(5, 64, 0.1), R(6, 4, 0.9)]
    _, front = frontier(rows, "l0", "nmse")  # type: ignore[arg-type]
    assert [rid for _, _, rid in front] == [6, 1, 2, 5]


def test_a_run_label_names_the_field_that_sets_its_sparsity() -> None:
    from types import SimpleNamespace

    def label(sae: dict[str, object]) -> str:
        row = SimpleNamespace(run=SimpleNamespace(id=7, config={"sae": sae}))  # the RunRow fields a label reads
        return run_label(row)  # type: ignore[arg-type]  # a stand-in with only those fields

    assert label({"arch": "relu", "d_sae": 64, "l1_coeff": 0.1, "k": 4}) == "#7 relu 64 l1 0.1"
    assert label({"arch": "jumprelu", "d_sae": 64, "l0_coeff": 2.0, "k": 4}) == "#7 jumprelu 64 l0c 2.0"
    assert label({"arch": "batchtopk", "d_sae": 64, "k": 4, "l1_coeff": 0.1}) == "#7 batchtopk 64 k4"


def test_a_higher_is_better_metric_has_its_frontier_at_the_top() -> None:
    """`runs pareto --y fidelity` computed the frontier lower-is-better: its "best" TopK was the worst SAE."""

    class R:
        def __init__(self, i: int, x: float, y: float) -> None:
            self.run = type("run", (), {"id": i})()
            self.summary = {"l0": x, "fidelity": y, "val/explained_variance": y}

    rows = [R(1, 8, 0.61), R(2, 16, 0.9), R(3, 16, 0.7), R(4, 32, 0.95), R(5, 64, 0.8), R(6, 4, 0.5)]
    for y in ("fidelity", "val/explained_variance"):
        _, front = frontier(rows, "l0", y)  # type: ignore[arg-type]
        assert [rid for _, _, rid in front] == [6, 1, 2, 4]  # 3 and 5 are dominated (2 and 4 beat them)
    from saev_ops.directions import better, describe

    assert (better("nmse"), better("val/fidelity"), better("kl"), better("lr")) == ("lower", "higher", "lower", None)
    assert describe("l0", "fidelity") == "lower l0 and higher fidelity are better"


def test_pareto_plot_and_sort_follow_each_metrics_direction(tmp_path: pathlib.Path) -> None:
    from saev_ops.explore.pareto import pareto_plot
    from saev_ops.registry import Registry
    from tests.helpers import make_dataset

    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    make_dataset(reg, "d")
    reg.get_or_create_sweep("s")
    runs = [r for r, _ in reg.add_runs("d", [{"arch": "topk", "k": i} for i in range(4)], sweep="s")]
    for r, (l0, fid) in zip(runs, [(8, 0.61), (16, 0.9), (16, 0.7), (32, 0.95)], strict=True):
        reg.log_metrics(r.id, [("l0", 1, l0), ("fidelity", 1, fid), ("nmse", 1, 1 - fid)])
    res = pareto_plot(reg, "s", "l0", "fidelity", tmp_path / "p.png")
    assert [rid for _, _, rid in res["frontier"]] == [runs[0].id, runs[1].id, runs[3].id]
    order = [row.run.id for row in reg.list_runs(RunQuery(sweep="s", sort="fidelity"))]
    assert order == [runs[3].id, runs[1].id, runs[2].id, runs[0].id]  # best first
    assert [row.run.id for row in reg.list_runs(RunQuery(sweep="s", sort="nmse"))] == order
    assert [row.run.id for row in reg.list_runs(RunQuery(sweep="s", sort="+fidelity"))] == order[::-1]
    assert [row.run.id for row in reg.list_runs(RunQuery(sweep="s", sort="-nmse"))] == order[::-1]


def test_interesting_latents_skip_dead_and_dense_ones() -> None:
    import numpy as np

    from saev_ops.explore.report import interesting_latents

    stats = {"frequency": np.array([0.0, 0.9, 0.05, 0.02, 0.5, 0.01]),
             "max": np.array([0.0, 9.0, 3.0, 5.0, 8.0, 1.0])}
    assert interesting_latents(stats, n=2) == [3, 2]  # not 1 and 4 (background), not 0 (dead)


def test_pareto_uses_a_log_axis_when_l0_spans_more_than_10x(tmp_path: pathlib.Path) -> None:
    from saev_ops.explore.pareto import pareto_plot
    from saev_ops.registry import Registry
    from tests.helpers import make_dataset

    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    make_dataset(reg)
    reg.get_or_create_sweep("p")
    for i, (arch, l0, nmse) in enumerate([("relu", 255.0, 0.05), ("topk", 8.0, 0.3), ("topk", 32.0, 0.1)]):
        ((run, _),) = reg.add_runs("inat21", [{"sae": {"arch": arch}, "i": i}], sweep="p")
        reg.log_metrics(run.id, [("l0", 1, l0), ("nmse", 1, nmse)])
    res = pareto_plot(reg, "p", "l0", "nmse", tmp_path / "p.png")
    assert res["log_x"] and len(res["frontier"]) == 3 and (tmp_path / "p.png").stat().st_size > 0


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
def test_report_renders_with_its_images(tmp_path: pathlib.Path) -> None:
    from saev_ops.registry import Registry
    from tests.helpers import mini_loop

    loop = mini_loop(f"sqlite:///{tmp_path / 'r.sqlite'}", tmp_path)
    reg = Registry(loop["url"])
    outs = [reg.get_output(o) for o in loop["outputs"]]
    best = reg.list_runs(RunQuery(sweep="rep", sort="nmse", limit=1))[0].run.id
    page = build_report(reg, "rep", tmp_path / "report", n_top=4)
    text = page.read_text()
    assert "pareto.png" in text and "curves.png" in text
    best_output = next(o.id for o in outs if o.run_id == best)
    assert f"Latents of run {best}, output {best_output}" in text  # the best run's, not the lowest output id
    for strip in re.findall(r"<div class='strip'>(.*?)(?=<h[23]|</body>)", text, flags=re.S):
        bases = re.findall(r"src='(img-\d+\.png)'", strip)
        assert bases and len(bases) == len(set(bases))  # one tile per image
    from PIL import Image

    for heat in (tmp_path / "report").glob("heat-*.png"):
        ex = heat.stem.rsplit("-", 1)[1]
        assert Image.open(heat).size == Image.open(tmp_path / "report" / f"img-{ex}.png").size
    # a heat map is the patch grid, one flat block per patch (no blur across patch boundaries): few colours
    import numpy as np

    some = np.asarray(Image.open(next((tmp_path / "report").glob("heat-*.png"))))
    assert len({tuple(p) for p in some.reshape(-1, 4)}) <= 16 + 1  # builtin:tiny: a 4x4 grid, and the veil
    # what each metric means, the frontier and the best run marked, the colour scale, captions that say what they are
    for needle in ("<b>nmse</b>: squared reconstruction error", "<b>dead_frac</b>: share of latents that have not fired",
                   "class='best'", "on the Pareto frontier", "scale.png", "top activation"):
        assert needle in text, needle
    assert re.search(r"<b>best</b> \(highlighted\): run \d+, the lowest nmse among runs with l0 &le; 32", text)
    # frontier runs' latents: every frontier run that has an output (here both runs)
    assert len(re.findall(r"<h2>Latents of run", text)) == len(outs)
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
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(0)))
    assert int(attrs["images"]) >= 3 and attrs["images-ok"] == attrs["images"], body.group(0)
    assert int(attrs["heatmaps"]) >= 2 and attrs["heatmaps-misfit"] == "0", body.group(0)
    assert attrs["errors"] == "0", body.group(0)
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'chrome2'}", "--virtual-time-budget=10000", "--window-size=1280,2400",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    if os.environ.get("SAEV_OPS_KEEP_SCREENSHOT"):  # a person's look at the page
        shutil.copy(shot, os.environ["SAEV_OPS_KEEP_SCREENSHOT"])
    assert shot.exists() and shot.stat().st_size > 10_000


def test_a_report_without_outputs_says_how_to_get_them(tmp_path: pathlib.Path) -> None:
    from saev_ops.registry import Registry
    from tests.helpers import make_dataset

    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    make_dataset(reg, "d")
    reg.get_or_create_sweep("s")
    for i, (l0, nmse) in enumerate([(8, 0.5), (16, 0.3), (64, 0.1)]):
        (run, _), = reg.add_runs("d", [{"sae": {"arch": "topk", "d_sae": 64, "k": 2 ** (i + 3)}, "lr": 1e-3}],
                                 sweep="s")
        reg.log_metrics(run.id, [("l0", 1, l0), ("nmse", 1, nmse)])
    text = build_report(reg, "s", tmp_path / "report").read_text()
    assert "No inference output of this sweep's runs yet: run <code>saev-ops infer s --dataset d</code>" in text
    # best: the lowest nmse within the L0 budget (run 2: l0 16), not the densest run (run 3: l0 64)
    assert "<b>best</b> (highlighted): run 2, the lowest nmse among runs with l0 &le; 32" in text
    assert "<tr class='best'><td>2</td>" in text and "<tr class='front'><td>3</td>" in text
