"""``saev-ops report``: one static HTML page per sweep that opens in a browser with no server.

It holds the sweep table, the Pareto plot, each run's metric curves, and, for the best runs' inference outputs (the
Pareto frontier, unless outputs or runs are named), their most telling latents: those that fire on some patches but not
on most, by highest activation. Each latent gets one tile per image: the image with the latent's activation over its
patch grid as a heat map (upsampled, as Overcomplete's ``overlay_top_heatmaps`` draws it), the top value and the label.
Images sit beside ``index.html``; a script in the page records how many images loaded, whether every heat map has the
size of its image, and how many errors the page raised (the tests read these in headless Chromium).
"""

from __future__ import annotations

import html
import pathlib
from typing import Any

import numpy as np

from saev_ops import atomic, errors
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
</style>""".replace("%(t)d", str(TILE))


def _curves(registry: Registry, run_ids: list[int], keys: tuple[str, ...], out: pathlib.Path) -> None:
    from saev_ops.extras import require

    require("matplotlib", "plot", "plotting").use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), dpi=90)
    for ax, key in zip(axes, keys, strict=True):
        for rid in run_ids:
            pts = registry.metric_history(rid, key)
            if pts:
                ax.plot([p.step for p in pts], [p.value for p in pts], lw=1, label=str(rid))
        ax.set_title(key)
        ax.set_xlabel("step")
    if len(run_ids) <= 16:
        axes[-1].legend(fontsize=6, title="run", title_fontsize=6)
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
    from saev_ops.explore.pareto import frontier

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
    from saev_ops.explore.pareto import default_key

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


def _heat_rgba(grid: np.ndarray, vmax: float) -> Any:
    """The patch grid upsampled to the tile: crimson, its opacity rising with the activation (visible on any image)."""
    from PIL import Image

    a = np.clip(grid / max(vmax, 1e-12), 0.0, 1.0).astype(np.float32)
    up = np.asarray(Image.fromarray(a, mode="F").resize((TILE, TILE), Image.Resampling.BILINEAR))
    up = np.clip(up, 0.0, 1.0)
    rgba = np.stack([np.full_like(up, 220.0), np.full_like(up, 20.0), np.full_like(up, 60.0), 200.0 * up], axis=-1)
    return Image.fromarray(rgba.round().astype(np.uint8), mode="RGBA")


def _latent_strip(output: Any, latent: int, n: int, out_dir: pathlib.Path) -> list[str]:
    """Figures (HTML) for ``latent``: one per image, its top patch value, heat map over the image, and label."""
    from PIL import Image

    from saev_ops.record.preprocess import to_rgb

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
        parts = [str(e["label_name"])] if e.get("label_name") is not None else []
        if e.get("patch_label") is not None:  # the top patch's class (segmentation mask, or the image's class)
            parts.append(f"patch class {e['patch_label']}")
        label = html.escape(" · ".join(parts))
        figures.append(f"<figure class='tile'><div class='stack'><img class='base' src='{base.name}' alt='image {ex}'>"
                       f"<img class='heat' src='{heat}' alt='latent {latent} on image {ex}'></div>"
                       f"<figcaption>{value:.3g}{' &middot; ' + label if label else ''}</figcaption></figure>")
    return figures


def build_report(registry: Registry, sweep: str, out_dir: pathlib.Path, *, output_ids: tuple[int, ...] = (),
                 run_ids: tuple[int, ...] = (), latents: tuple[int, ...] = (), n_top: int = 8) -> pathlib.Path:
    from saev_ops.explore.pareto import default_key, pareto_plot

    registry.get_sweep(sweep)
    rows = registry.list_runs(RunQuery(sweep=sweep, sort="nmse"))
    if not rows:
        raise errors.QueryError(f"sweep {sweep!r} has no runs")
    rows = registry.list_runs(RunQuery(sweep=sweep, sort=default_key(rows, "nmse")))  # held-out first where present
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>saev-ops: {html.escape(sweep)}</title>",
             _SCRIPT, _STYLE, "</head><body>", f"<h1>Sweep {html.escape(sweep)}</h1>"]
    keys = ["nmse", "l0", "dead_frac", "dense_frac", "explained_variance"]
    keys += [k for k in ("val/nmse", "val/l0", "val/dead_frac", "fidelity") if any(k in r.summary for r in rows)]
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>status</th><th>arch</th><th>d_sae</th><th>k</th><th>lr</th>"
                 + "".join(f"<th>{k}</th>" for k in keys) + "</tr>")
    for r in rows:
        sae = r.run.config.get("sae", {})
        cells = "".join(f"<td>{r.summary[k]:.4g}</td>" if k in r.summary else "<td></td>" for k in keys)
        parts.append(f"<tr><td>{r.run.id}</td><td>{r.run.status}</td><td>{html.escape(str(sae.get('arch')))}</td>"
                     f"<td>{sae.get('d_sae')}</td><td>{sae.get('k')}</td><td>{r.run.config.get('lr')}</td>{cells}</tr>")
    parts.append("</table>")
    try:
        res = pareto_plot(registry, sweep, None, None, out_dir / "pareto.png")  # held-out metrics when present
        parts.append(f"<h2>{html.escape(res['x'])} vs {html.escape(res['y'])}</h2>"
                     "<img class='plot' src='pareto.png' alt='pareto'>")
    except errors.QueryError:
        parts.append("<p>No run has both l0 and nmse yet.</p>")
    _curves(registry, [r.run.id for r in rows], ("loss", "nmse", "l0", "dead_frac"), out_dir / "curves.png")
    parts.append("<h2>Metric curves</h2><img class='plot' src='curves.png' alt='curves'>")
    sweep_runs = {r.run.id for r in rows}
    for output_id in best_outputs(registry, rows, output_ids=output_ids, run_ids=run_ids):
        from saev_ops.infer import Output

        output = Output.open(registry, output_id)
        chosen = list(latents) or interesting_latents(output.latent_stats())
        where = "" if output.record.run_id in sweep_runs else " (not of this sweep)"
        parts.append(f"<h2>Latents of run {output.record.run_id}{where}, output {output_id}</h2>")
        for lat in chosen:
            figures = _latent_strip(output, lat, n_top, out_dir)
            parts.append(f"<h3>latent {lat}</h3>")
            parts.append(f"<div class='strip'>{''.join(figures)}</div>" if figures else
                         "<p>never fires, or its images are gone</p>")
    parts.append("</body></html>")
    page = out_dir / "index.html"
    atomic.write_text(page, "\n".join(parts))
    return page
