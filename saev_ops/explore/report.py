"""``saev-ops report``: one static HTML page per sweep that opens in a browser with no server.

It holds the sweep table, the Pareto plot, each run's metric curves, and, for chosen latents of an inference output,
a grid of top-activating image patches highlighted on their images (Pillow). Images sit beside ``index.html``.
"""

from __future__ import annotations

import html
import math
import pathlib
from typing import Any

from saev_ops import errors
from saev_ops.registry import Registry, RunQuery

_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-ok', String(ok));
});
</script>"""


def _curves(registry: Registry, run_ids: list[int], keys: tuple[str, ...], out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), dpi=90)
    for ax, key in zip(axes, keys):
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


def _patch_grid(output: Any, latent: int, n: int, out: pathlib.Path) -> int:
    """Top-n images for ``latent``, the activating patch outlined; returns how many were drawn."""
    from PIL import Image, ImageDraw

    tops = output.top_rows(latent, n)
    tiles = []
    for row, value in tops:
        e = output.row_example(row)
        if not e["path"] or not pathlib.Path(e["path"]).exists():
            continue
        with Image.open(e["path"]) as im:
            im = im.convert("RGB").resize((96, 96))
        info = output.info
        n_patches = len([t for t in info["token_idx"] if t >= info["token_idx"][0]])
        side = int(math.isqrt(max(n_patches, 1)))
        first = info["token_idx"][0]
        pos = e["token_idx"] - first
        if side * side == n_patches and 0 <= pos < n_patches:
            r, c = divmod(pos, side)
            cell = 96 / side
            ImageDraw.Draw(im).rectangle([c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1],
                                         outline=(255, 40, 40), width=2)
        tiles.append(im)
    if not tiles:
        return 0
    grid = Image.new("RGB", (96 * len(tiles), 96), (255, 255, 255))
    for i, t in enumerate(tiles):
        grid.paste(t, (96 * i, 0))
    grid.save(out)
    return len(tiles)


def build_report(registry: Registry, sweep: str, out_dir: pathlib.Path, *, output_id: int | None = None,
                 latents: tuple[int, ...] = (), n_top: int = 8) -> pathlib.Path:
    from saev_ops.explore.pareto import pareto_plot

    registry.get_sweep(sweep)
    rows = registry.list_runs(RunQuery(sweep=sweep, sort="nmse"))
    if not rows:
        raise errors.QueryError(f"sweep {sweep!r} has no runs")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>saev-ops: {html.escape(sweep)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}</style></head><body>",
             f"<h1>Sweep {html.escape(sweep)}</h1>"]
    keys = ["nmse", "l0", "dead_frac", "dense_frac", "explained_variance"]
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>status</th><th>arch</th><th>d_sae</th><th>k</th><th>lr</th>"
                 + "".join(f"<th>{k}</th>" for k in keys) + "</tr>")
    for r in rows:
        sae = r.run.config.get("sae", {})
        cells = "".join(f"<td>{r.summary[k]:.4g}</td>" if k in r.summary else "<td></td>" for k in keys)
        parts.append(f"<tr><td>{r.run.id}</td><td>{r.run.status}</td><td>{html.escape(str(sae.get('arch')))}</td>"
                     f"<td>{sae.get('d_sae')}</td><td>{sae.get('k')}</td><td>{r.run.config.get('lr')}</td>{cells}</tr>")
    parts.append("</table>")
    try:
        pareto_plot(registry, sweep, "l0", "nmse", out_dir / "pareto.png")
        parts.append("<h2>L0 vs NMSE</h2><img src='pareto.png' alt='pareto'>")
    except errors.QueryError:
        parts.append("<p>No run has both l0 and nmse yet.</p>")
    _curves(registry, [r.run.id for r in rows], ("loss", "nmse", "l0", "dead_frac"), out_dir / "curves.png")
    parts.append("<h2>Metric curves</h2><img src='curves.png' alt='curves'>")
    if output_id is not None:
        from saev_ops.infer import Output

        output = Output.open(registry, output_id)
        chosen = latents or tuple(int(i) for i in
                                  (-output.latent_stats()["frequency"]).argsort()[: min(4, output.record.n_cols)])
        parts.append(f"<h2>Top patches, output {output_id} (run {output.record.run_id})</h2>")
        for lat in chosen:
            name = f"latent-{lat}.png"
            if _patch_grid(output, lat, n_top, out_dir / name):
                parts.append(f"<h3>latent {lat}</h3><img src='{name}' alt='latent {lat}'>")
            else:
                parts.append(f"<h3>latent {lat}</h3><p>never fires, or its images are gone</p>")
    parts.append(_SCRIPT + "</body></html>")
    page = out_dir / "index.html"
    tmp = out_dir / "index.html.tmp"
    tmp.write_text("\n".join(parts))
    tmp.replace(page)
    return page
