"""``saev-ops report``: one static HTML page per sweep that opens in a browser with no server.

It holds the sweep table (what each metric means; sorted by the plot's y; the Pareto frontier and the best run within
an L0 budget marked), the Pareto plot, training and held-out curves, and, for the Pareto frontier's inference outputs
(unless outputs or runs are named), their most telling latents: those that fire on some patches but not on most, by
highest activation. Each latent gets one tile per image: the image with the latent's activation as a heat map, one
flat block per patch (a colour scale from weak to strong; patches where it does not fire veiled), and a caption
naming the image, the top activation and the classes. Without an output the page says how to make one. Images sit
beside ``index.html``; a script in the page records how many images loaded, whether every heat map has the size of
its image, and how many errors the page raised (the tests read these in headless Chromium).
"""

from __future__ import annotations

import html
import pathlib
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from saev_ops import atomic, errors
from saev_ops.directions import MEANING
from saev_ops.explore.pareto import DEFAULT_L0_BUDGET, best_under, default_key, frontier, pareto_plot, run_label
from saev_ops.extras import require
from saev_ops.record.preprocess import to_rgb
from saev_ops.registry import Registry, RunQuery, RunRow

TILE = 112  # px, base image and heat map alike
DENSE = 0.1  # a latent firing on more than this fraction of patches marks background, not a feature

_SCRIPT = """<script>
window.__errors = 0;
window.addEventListener('error', function () { window.__errors++; }, true);  // scripts and failed resources
(function () {
  var e = console.error;
  console.error = function () { window.__errors++; e.apply(console, arguments); };
})();
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var bad = 0, heats = 0;
  document.querySelectorAll('.stack').forEach(function (s) {
    var base = s.querySelector('img.base'), heat = s.querySelector('img.heat');
    heats++;
    var a = base.getBoundingClientRect(), b = heat.getBoundingClientRect();
    if (base.naturalWidth !== heat.naturalWidth || base.naturalHeight !== heat.naturalHeight ||
        a.width !== b.width || a.height !== b.height || a.left !== b.left || a.top !== b.top) { bad++; }
  });
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-ok', String(ok));
  document.body.setAttribute('data-heatmaps', String(heats));
  document.body.setAttribute('data-heatmaps-misfit', String(bad));
  document.body.setAttribute('data-errors', String(window.__errors));
});
</script>"""

_STYLE = """<style>
body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img.plot{max-width:100%}
.strip{display:flex;flex-wrap:wrap;gap:6px}.tile{margin:0;font-size:11px;text-align:center}
.stack{position:relative;width:%(t)dpx;height:%(t)dpx}.stack img{position:absolute;left:0;top:0}
.legend{font-size:12px;color:#333}td.why{color:#888;font-style:italic}tr.front td{background:#eef5ff}
tr.best td{background:#fff3c4;font-weight:bold}.scale{font-size:12px}.scale img{vertical-align:middle;height:10px}
.veil{display:inline-block;width:14px;height:10px;background:rgba(40,40,40,.4);vertical-align:middle}
.front-key{background:#eef5ff;padding:0 3px}
</style>""".replace("%(t)d", str(TILE))


def _curves(registry: Registry, rows: list[RunRow], keys: tuple[str, ...], out: pathlib.Path) -> None:
    """One panel per key with history, the held-out key beside its training one; L0 on a log axis when it spans
    more than 10x; the legend names each run's architecture, width and k."""

    require("matplotlib", "plot", "plotting").use("Agg")
    import matplotlib.pyplot as plt

    history = {(r.run.id, k): registry.metric_history(r.run.id, k) for r in rows for k in keys}
    keys = tuple(k for k in keys if any(history[(r.run.id, k)] for r in rows)) or keys[:1]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), dpi=90, squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        values = []
        for r in rows:
            pts = history[(r.run.id, key)]
            if pts:
                ax.plot([p.step for p in pts], [p.value for p in pts], lw=1, label=run_label(r),
                        marker="o" if key.startswith("val/") else None, ms=2)
                values += [p.value for p in pts]
        positive = [v for v in values if v > 0]
        if key.removeprefix("val/") == "l0" and positive and max(positive) / min(positive) > 10:
            ax.set_yscale("log")
            key += " (log)"
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
    if len(rows) <= 16:
        fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=6, loc="lower center",
                   ncol=min(4, max(1, len(rows))), bbox_to_anchor=(0.5, -0.02))
        fig.tight_layout(rect=(0, 0.08 + 0.03 * (len(rows) // 4), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def interesting_latents(stats: dict[str, np.ndarray], n: int = 4) -> list[int]:
    """Latents that fire on some patches but not on most (below :data:`DENSE`), by highest activation: features, not
    the background that the most frequent latents mark."""
    freq, top = stats["frequency"], stats["max"]
    candidates = np.flatnonzero((freq > 0) & (freq < DENSE))
    if candidates.size == 0:
        candidates = np.flatnonzero((freq > 0) & (freq < 1))
    order = candidates[np.argsort(-top[candidates], kind="stable")]
    return [int(i) for i in order[:n]]


def best_outputs(registry: Registry, rows: list[RunRow], *, output_ids: tuple[int, ...] = (),
                 run_ids: tuple[int, ...] = (), n: int = 2) -> list[int]:
    """Outputs to show: the named ones; else the outputs of the named runs; else those of the sweep's Pareto frontier
    (L0 vs NMSE), lowest NMSE first; else the lowest-NMSE run that has one."""

    if output_ids:
        return list(output_ids)
    by_run: dict[int, int] = {}
    for o in registry.list_outputs():
        by_run.setdefault(o.run_id, o.id)
    if run_ids:
        missing = [r for r in run_ids if r not in by_run]
        if missing:
            raise errors.NotFoundError(f"runs {missing} have no inference output yet (run `saev-ops infer`)")
        return [by_run[r] for r in run_ids]

    x, y = default_key(rows, "l0"), default_key(rows, "nmse")  # held-out metrics when the runs have them
    _, front = frontier(rows, x, y)
    ranked = [rid for _, _, rid in sorted(front, key=lambda p: p[1])]
    ranked += [r.run.id for r in sorted(rows, key=lambda r: r.summary.get(y, float("inf")))]
    chosen: list[int] = []
    for rid in ranked:
        if rid in by_run and by_run[rid] not in chosen:
            chosen.append(by_run[rid])
        if len(chosen) == n:
            break
    return chosen


# The heat map's colour scale, from a weak activation to the strongest (dark violet -> orange -> yellow), so it reads
# on dark and bright images alike; patches where the latent does not fire are veiled in grey.
_SCALE = np.array([[80, 20, 140], [200, 50, 110], [250, 140, 30], [255, 240, 60]], dtype=np.float32)
VEIL = (40, 40, 40, 100)


def heat_colour(a: np.ndarray) -> np.ndarray:
    """RGB of activations ``a`` in [0, 1] along :data:`_SCALE`."""
    pos = a * (len(_SCALE) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(_SCALE) - 2)
    t = (pos - lo)[..., None]
    return _SCALE[lo] * (1 - t) + _SCALE[lo + 1] * t


def heat_rgba(grid: ArrayLike, vmax: float) -> np.ndarray:
    """RGBA (0-255) of each patch of ``grid``: where the latent fires, :data:`_SCALE`'s colour of its activation over
    ``vmax``, more opaque the stronger; the others veiled (:data:`VEIL`). The report's tiles and the explorer's."""
    a = np.clip(np.asarray(grid, dtype=np.float32) / max(vmax, 1e-12), 0.0, 1.0)
    rgba = np.zeros((*a.shape, 4), dtype=np.float32)
    rgba[..., :3] = heat_colour(a)
    rgba[..., 3] = 150 + 90 * a
    rgba[a <= 0] = VEIL
    return rgba


def _heat_rgba(grid: np.ndarray, vmax: float) -> Any:
    """The patch grid at the tile's size, one flat block per patch (no blur across patch boundaries)."""
    from PIL import Image

    img = Image.fromarray(heat_rgba(grid, vmax).round().astype(np.uint8), mode="RGBA")
    return img.resize((TILE, TILE), Image.Resampling.NEAREST)


def _scale_bar(out_dir: pathlib.Path) -> str:
    """The colour scale as an image (written once), and its HTML with its ends labelled."""
    from PIL import Image

    path = out_dir / "scale.png"
    if not path.exists():
        ramp = heat_colour(np.linspace(0, 1, 160, dtype=np.float32))[None].repeat(10, axis=0)
        Image.fromarray(ramp.round().astype(np.uint8), mode="RGB").save(path)
    return ("<p class='scale'>heat map: <span class='veil'></span> does not fire &nbsp; 0 "
            "<img src='scale.png' alt='colour scale'> the strongest activation among the latent's tiles</p>")


def _latent_strip(output: Any, latent: int, n: int, out_dir: pathlib.Path) -> list[str]:
    """Figures (HTML) for ``latent``: one per image, its top patch value, heat map over the image, and label."""
    from PIL import Image

    tiles: list[tuple[int, float, dict[str, Any]]] = []
    seen: set[int] = set()
    for row, value in output.top_rows(latent, n * 16):  # several rows per image: keep each image's best once
        e = output.row_example(row)
        if e["example_idx"] in seen or not e["path"] or not pathlib.Path(e["path"]).exists():
            continue
        seen.add(e["example_idx"])
        tiles.append((e["example_idx"], value, e))
        if len(tiles) == n:
            break
    grids = [output.patch_grid(ex, latent) for ex, _, _ in tiles]
    vmax = max([float(g.max()) for g in grids if g is not None] + [v for _, v, _ in tiles] + [1e-12])
    figures = []
    for (ex, value, e), grid in zip(tiles, grids, strict=True):
        base = out_dir / f"img-{ex}.png"
        if not base.exists():
            with Image.open(e["path"]) as im:
                to_rgb(im).resize((TILE, TILE), Image.Resampling.BICUBIC).save(base)
        heat = f"heat-{output.record.id}-{latent}-{ex}.png"
        (_heat_rgba(grid, vmax) if grid is not None else Image.new("RGBA", (TILE, TILE))).save(out_dir / heat)
        parts = [f"image {ex}", f"top activation {value:.3g}"]
        if e.get("label_name") is not None:
            parts.append(f"class {e['label_name']}")
        if e.get("patch_label") is not None:  # the top patch's class (segmentation mask, or the image's class)
            parts.append(f"top patch's class {e['patch_label']}")
        caption = "<br>".join(html.escape(p) for p in parts)
        figures.append(f"<figure class='tile'><div class='stack'><img class='base' src='{base.name}' alt='image {ex}'>"
                       f"<img class='heat' src='{heat}' alt='latent {latent} on image {ex}'></div>"
                       f"<figcaption>{caption}</figcaption></figure>")
    return figures


def build_report(registry: Registry, sweep: str, out_dir: pathlib.Path, *, output_ids: tuple[int, ...] = (),
                 run_ids: tuple[int, ...] = (), latents: tuple[int, ...] = (), n_top: int = 8,
                 l0_budget: float | None = None) -> pathlib.Path:
    """The page for ``sweep`` under ``out_dir``; ``l0_budget``: the L0 the best run must stay within (default
    :data:`~saev_ops.explore.pareto.DEFAULT_L0_BUDGET`)."""

    registry.get_sweep(sweep)
    rows = registry.list_runs(RunQuery(sweep=sweep, sort="nmse"))
    if not rows:
        raise errors.QueryError(f"sweep {sweep!r} has no runs")
    x, y = default_key(rows, "l0"), default_key(rows, "nmse")  # held-out where present, as the plot
    rows = registry.list_runs(RunQuery(sweep=sweep, sort=y))  # the table in the plot's order: best y first
    budget = DEFAULT_L0_BUDGET if l0_budget is None else l0_budget
    front = {rid for _, _, rid in frontier(rows, x, y)[1]}
    best = best_under(rows, x, y, budget)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>saev-ops: {html.escape(sweep)}</title>",
             _SCRIPT, _STYLE, "</head><body>", f"<h1>Sweep {html.escape(sweep)}</h1>"]
    keys = ["nmse", "l0", "dead_frac", "dense_frac", "explained_variance"]
    held_out = any("val/nmse" in r.summary for r in rows)
    keys += [k for k in ("val/nmse", "val/l0") if any(k in r.summary for r in rows)]
    keys += ["val/unfired_frac"] if held_out else []
    keys += ["fidelity"] if any("fidelity" in r.summary for r in rows) else []
    parts.append("<h2>Runs</h2><ul class='legend'>" + "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(MEANING[k.removeprefix('val/')])}"
        f"{' (on the held-out dataset)' if k.startswith('val/') else ''}</li>" for k in keys) + "</ul>")
    chosen = (f"<b>best</b> (highlighted): run {best.run.id}, the lowest {html.escape(y)} among runs with "
              f"{html.escape(x)} &le; {budget:g}" if best is not None else
              f"no run has {html.escape(x)} &le; {budget:g}, so none is marked best")
    parts.append(f"<p class='legend'>Sorted by {html.escape(y)}; <span class='front-key'>blue</span> rows are on the "
                 f"Pareto frontier of {html.escape(x)} against {html.escape(y)}; {chosen}.</p>")
    parts.append("<table><tr><th>run</th><th>status</th><th>arch</th><th>d_sae</th><th>k</th><th>lr</th>"
                 + "".join(f"<th>{k}</th>" for k in keys) + "<th>note</th></tr>")

    def cell(r: RunRow, k: str) -> str:
        if k in r.summary:
            return f"<td>{r.summary[k]:.4g}</td>"
        if k == "val/unfired_frac" and "val/nmse" in r.summary:
            return "<td class='why'>too few rows</td>"
        return "<td></td>"

    for r in rows:
        sae = r.run.config.get("sae", {})
        cells = "".join(cell(r, k) for k in keys)
        is_best, on_front = best is not None and r.run.id == best.run.id, r.run.id in front
        css = " class='best'" if is_best else " class='front'" if on_front else ""
        note = "best" if is_best else "frontier" if on_front else ""
        if is_best and on_front:
            note = "best, frontier"
        parts.append(f"<tr{css}><td>{r.run.id}</td><td>{r.run.status}</td><td>{html.escape(str(sae.get('arch')))}</td>"
                     f"<td>{sae.get('d_sae')}</td><td>{sae.get('k')}</td><td>{r.run.config.get('lr')}</td>{cells}"
                     f"<td>{note}</td></tr>")
    parts.append("</table>")
    try:
        res = pareto_plot(registry, sweep, None, None, out_dir / "pareto.png")  # held-out metrics when present
        parts.append(f"<h2>{html.escape(res['x'])} vs {html.escape(res['y'])}</h2>"
                     "<img class='plot' src='pareto.png' alt='pareto'>")
    except errors.QueryError:
        parts.append("<p>No run has both l0 and nmse yet.</p>")
    _curves(registry, rows, ("loss", "nmse", "val/nmse", "l0", "val/l0", "dead_frac"), out_dir / "curves.png")
    parts.append("<h2>Metric curves</h2><p class='legend'>Training metrics (lines) beside their held-out values "
                 "(dots), where the sweep has a val_dataset.</p><img class='plot' src='curves.png' alt='curves'>")
    sweep_runs = {r.run.id for r in rows}
    shown = best_outputs(registry, rows, output_ids=output_ids, run_ids=run_ids, n=max(2, len(front)))
    if not shown:
        dataset = rows[0].dataset
        parts.append(f"<h2>Latents</h2><p>No inference output of this sweep's runs yet: run <code>saev-ops infer "
                     f"{html.escape(sweep)} --dataset {html.escape(dataset)}</code>, then this report again, to see "
                     "what their latents fire on.</p>")
    else:
        parts.append(_scale_bar(out_dir))
    labels = {r.run.id: run_label(r) for r in rows}
    for output_id in shown:
        from saev_ops.infer import Output

        output = Output.open(registry, output_id)
        chosen_latents = list(latents) or interesting_latents(output.latent_stats())
        rid = output.record.run_id
        where = "" if rid in sweep_runs else " (not of this sweep)"
        parts.append(f"<h2>Latents of run {rid}{where}, output {output_id}"
                     f"{' &middot; ' + html.escape(labels[rid]) if rid in labels else ''}</h2>")
        for lat in chosen_latents:
            figures = _latent_strip(output, lat, n_top, out_dir)
            parts.append(f"<h3>latent {lat}</h3>")
            parts.append(f"<div class='strip'>{''.join(figures)}</div>" if figures else
                         "<p>never fires, or its images are gone</p>")
    parts.append("</body></html>")
    page = out_dir / "index.html"
    atomic.write_text(page, "\n".join(parts))
    return page
