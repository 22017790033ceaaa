"""Splicing SAEs back into the model: the spliced forward equals a manual one (built-in ViT, a random-init HF ViT with
and without a classifier head), an identity SAE scores fidelity 1 and the mean ablation 0, results are registered."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from click.testing import CliRunner

from saev_ops import errors
from saev_ops.cli import cli
from saev_ops.explore.lineage import lineage_lines
from saev_ops.downstream.run import EvalSpec, run_eval, select_examples
from saev_ops.downstream.splice import SpliceModel, model_positions
from saev_ops.record import RecordSpec, record_dataset
from saev_ops.record.images import generate_images
from saev_ops.record.models import load_model
from saev_ops.registry import Registry, RunQuery
from saev_ops.sae import SAEConfig, build_sae
from saev_ops.sae.io import save_sae
from saev_ops.shards import ShardReader
from saev_ops.shards.format import TokenLayout
from tests.helpers import constant_sae, identity_sae, tiny_hf


def _edit(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x.flip(-1) + 1.0


def _keep(x: torch.Tensor) -> torch.Tensor:
    return x


def test_builtin_splice_equals_a_manual_forward() -> None:
    adapter = load_model("builtin:small@3")
    vit = adapter.model
    pixels = torch.randn(3, 3, 64, 64)
    layer, pos = 2, [0, 5, 7, 30]
    with torch.no_grad():
        x = vit.patch(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([vit.cls.expand(3, -1, -1), x], dim=1) + vit.pos
        x = torch.cat([x[:, :1], vit.registers.expand(3, -1, -1), x[:, 1:]], dim=1)
        for i, block in enumerate(vit.blocks):
            x = block(x)
            if i == layer:
                x[:, pos] = _edit(x[:, pos])
        want = x[:, 0]
    model = SpliceModel(adapter)
    for shared in (True, False):
        out = model.run(pixels, layer, pos, [_keep, _edit], shared=shared)
        assert out.embed.shape == (2, 3, 128) and out.logits is None
        torch.testing.assert_close(out.embed[1], want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.embed[0], adapter.hidden_states(pixels, [adapter.n_layers - 1])[:, 0, 0])


@pytest.mark.parametrize("family", ["vit", "vit-cls"])
def test_hf_splice_equals_a_manual_forward(tmp_path: pathlib.Path, family: str) -> None:
    spec = tiny_hf(tmp_path, family)
    adapter = load_model(spec)
    model = SpliceModel(adapter)
    assert model.has_head == (family == "vit-cls")
    net = model.model
    base = net.base_model
    pixels = torch.randn(2, 3, 32, 32)
    layer, pos = 1, [1, 2, 3, 16]
    with torch.no_grad():
        h = base.embeddings(pixels)
        for i, block in enumerate(base.layers):  # transformers 5: ViTModel.layers, each called without a mask
            out = block(h, None)
            h = out[0] if isinstance(out, tuple) else out
            if i == layer:
                h = h.clone()
                h[:, pos] = _edit(h[:, pos])
        final = base.layernorm(h)
    out = model.run(pixels, layer, pos, [_keep, _edit, _edit])
    torch.testing.assert_close(out.embed[1], final[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.embed[2], out.embed[1])
    if family == "vit-cls":
        assert out.logits is not None and out.logits.shape == (3, 2, 3)
        torch.testing.assert_close(out.logits[1], net.classifier(final[:, 0]), rtol=1e-4, atol=1e-5)
    # every variant running the whole model gives the same as the shared prefix
    alone = model.run(pixels, layer, pos, [_keep, _edit], shared=False)
    torch.testing.assert_close(alone.embed, out.embed[:2], rtol=1e-4, atol=1e-5)


def test_model_positions_skip_dropped_registers() -> None:
    model = TokenLayout(n_cls=1, n_registers=4, n_patches=9)
    saev_like = TokenLayout(n_cls=1, n_registers=0, n_patches=9)
    assert model_positions(saev_like, model, "patches") == list(range(5, 14))
    assert model_positions(saev_like, model, "cls") == [0]
    assert model_positions(model, model, "all") == list(range(14))
    with pytest.raises(errors.ConfigError, match="does not come from this model"):
        model_positions(TokenLayout(n_cls=1, n_registers=0, n_patches=16), model, "patches")


@pytest.mark.parametrize("model", [TokenLayout(n_cls=1, n_registers=2, n_patches=9),   # built-in ViT: registers
                                   TokenLayout(n_cls=1, n_registers=0, n_patches=9),   # CLIP, DINOv2
                                   TokenLayout(n_cls=0, n_registers=0, n_patches=9)])  # SigLIP
def test_every_recorded_token_choice_maps_onto_the_model(model: TokenLayout) -> None:
    """`eval` refused every `--tokens patches` recording: its rows are the model's patch positions all the same."""
    from saev_ops.record.recorder import stored_layout
    from saev_ops.tokens import RECORDABLE

    patches = list(range(model.n_cls + model.n_registers, model.n_tokens))
    for choice in RECORDABLE:
        selection = choice  # what a recording stores is what the same name selects
        if choice == "cls" and not model.n_cls:
            continue
        stored = stored_layout(model, choice)
        if stored.n_patches:
            assert model_positions(stored, model, "patches") == patches, choice
        got = model_positions(stored, model, selection)
        assert got == model.indices(selection), choice  # the rows the recording kept are these model positions


def test_select_examples_spreads_over_the_dataset() -> None:
    assert select_examples(10, 4).tolist() == [0, 3, 6, 9]
    assert select_examples(3, 50).tolist() == [0, 1, 2]


def _register_sae(reg: Registry, dataset: str, sae: torch.nn.Module, *, layer: int, tokens: str, scale: float,
                  root: pathlib.Path, tag: str) -> int:
    config = {"sae": sae.cfg.to_dict(), "layer": layer, "tokens": tokens, "tag": tag}
    ((run, _),) = reg.add_runs(dataset, [config])
    target = root / f"sae-{run.id}"
    save_sae(sae, target, scale=scale, dataset_hash="h", layer=layer, extra={"tokens": tokens})
    reg.transition_run(run.id, "running", executor="import")
    reg.transition_run(run.id, "completed", checkpoint_path=str(target))
    return run.id


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pathlib.Path]:
    tmp = tmp_path_factory.mktemp("downstream")
    images = generate_images(tmp / "images", 24, size=64, n_classes=3).root
    url = f"sqlite:///{tmp / 'r.sqlite'}"
    reg = Registry(url)
    record_dataset(reg, RecordSpec(name="d", images=str(images), model="builtin:small@1", layers=(2, 5),
                                   batch_size=8, data_root=str(tmp / "data")))
    return url, tmp


def test_identity_scores_one_and_mean_ablation_zero(recorded, caplog) -> None:  # noqa: ANN001
    url, tmp = recorded
    reg = Registry(url)
    ds = reg.get_dataset("d")
    reader = ShardReader(ds.path)
    li = reader.layer_index(2)
    mean, scale = torch.from_numpy(reader.stats()["mean"][li]).float(), float(reader.stats()["scale"][li])
    ident = _register_sae(reg, "d", identity_sae(128), layer=2, tokens="patches", scale=scale, root=tmp, tag="id")
    ablate = _register_sae(reg, "d", constant_sae(128, mean * scale), layer=2, tokens="patches", scale=scale,
                           root=tmp, tag="mean")
    other = _register_sae(reg, "d", build_sae(SAEConfig.of(arch="topk", d_model=128, d_sae=256, k=8), seed=4),
                          layer=5, tokens="all", scale=1.0, root=tmp, tag="rand")
    results = {e.run_id: e for e in run_eval(EvalSpec(db_url=url, run_ids=(ident, ablate, other), dataset="d",
                                                      n_images=12, batch_size=5))}
    assert results[ident].fidelity == pytest.approx(1.0, abs=1e-6)
    assert results[ablate].fidelity == pytest.approx(0.0, abs=1e-6)
    assert results[other].extra["layer"] == 5 and results[other].fidelity is not None
    assert results[ident].kl is None  # the built-in ViT has no classifier head
    # generated images carry 3 classes: a probe on the clean representation, and the identity keeps its accuracy
    assert results[ident].probe_clean is not None and results[ident].probe_spliced == results[ident].probe_clean
    assert all(e.n_images == 12 for e in results.values())
    # 16 images gave all ten SAEs the same probe accuracy (0.875): 6 held-out images move it in steps of 16.7%
    assert "the probe is scored on 6 held-out images: its accuracy moves in steps of 16.7%" in caplog.text
    rows = {r.run.id: r for r in reg.list_runs(RunQuery(dataset="d", where=("fidelity>0.999",)))}
    assert set(rows) == {ident} and rows[ident].summary["fidelity"] == pytest.approx(1.0, abs=1e-6)
    res = CliRunner().invoke(cli, ["--db", url, "eval", str(ident), "--dataset", "d", "--n-images", "6",
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)
    assert row["run"] == ident and row["images"] == 6 and row["fidelity"] == pytest.approx(1.0, abs=1e-6)
    # a figure that cannot be computed says why, here and in `runs show` (it was a blank cell)
    assert row["kl"] == "(no classification head)"
    assert len(reg.list_evaluations(run_id=ident)) == 1  # re-evaluated on the same dataset: replaced
    res = CliRunner().invoke(cli, ["--db", url, "runs", "show", str(ident)])
    assert "evaluations (the SAE spliced into its model)" in res.output and "fidelity 1" in res.output
    assert "kl (no classification head)" in res.output
    lines = lineage_lines(reg, f"run:{ident}")
    assert "eval on d (builtin:small@1, 6 images): fidelity 1" in lines[-1]


def test_a_missing_probe_says_why() -> None:
    from saev_ops.downstream import run as downstream

    clean = torch.randn(1, 16, 8)  # (token, image, width): the probe reads one representation per image
    labels = [(i // 2) % 2 for i in range(16)]  # both classes among the even (fitting) images
    (acc, _), why = downstream._probe(clean[0], labels)
    assert why is None and 0 <= acc <= 1
    assert downstream._probe(clean[0], [None] * 16) == (None, "images without class labels")
    assert downstream._probe(clean[0], [1] * 16) == (None, "one class")


def test_eval_refuses_runs_without_weights_and_changed_models(recorded) -> None:  # noqa: ANN001
    url, tmp = recorded
    reg = Registry(url)
    ((run, _),) = reg.add_runs("d", [{"sae": SAEConfig.of(d_model=128).to_dict(), "layer": 2, "tokens": "patches",
                                       "tag": "queued"}])
    with pytest.raises(errors.ConfigError, match=f"run {run.id} is queued"):
        run_eval(EvalSpec(db_url=url, run_ids=(run.id,), dataset="d"))
    ds = reg.get_dataset("d")
    prov = json.loads(json.dumps(ds.extra["provenance"]))
    prov["model"]["weights_sha256"] = "0" * 64
    reg.update_dataset("d", extra={**ds.extra, "provenance": prov})
    try:
        ident = _register_sae(reg, "d", identity_sae(128), layer=2, tokens="patches", scale=1.0, root=tmp,
                              tag="id2")
        with pytest.raises(errors.ConfigError, match="changed since dataset 'd' was recorded"):
            run_eval(EvalSpec(db_url=url, run_ids=(ident,), dataset="d"))
    finally:
        reg.update_dataset("d", extra=ds.extra)


@pytest.mark.parametrize("family", ["clip", "dinov2-reg", "siglip", "dinov3", "siglip2"])
def test_every_family_splices_the_same_shared_or_alone(tmp_path: pathlib.Path, family: str) -> None:
    adapter = load_model(tiny_hf(tmp_path, family))
    model = SpliceModel(adapter)
    h, w = adapter.preprocess.out_hw
    pixels = torch.randn(2, 3, h, w)
    pos = model_positions(adapter.layout, adapter.layout, "patches")[:5]
    alone = model.run(pixels, 1, pos, [_keep, _edit], shared=False)
    assert not torch.allclose(alone.embed[0], alone.embed[1])  # the edit reaches the final representation
    default = model.run(pixels, 1, pos, [_keep, _edit])
    torch.testing.assert_close(default.embed, alone.embed, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["builtin:small@1", "vit"])
@pytest.mark.parametrize("tokens", ["patches", "cls", "all"])
def test_eval_works_for_every_recorded_token_choice(tmp_path: pathlib.Path, model: str, tokens: str) -> None:
    """A recording of patches only (the common choice: what SAEs train on), of the CLS only, or of every token is
    judged like saev's CLS + patches: an SAE that reconstructs exactly keeps the model's output (fidelity 1)."""
    spec_model = tiny_hf(tmp_path, "vit", image_size=64) if model == "vit" else model
    images = generate_images(tmp_path / "images", 8, size=64, n_classes=2).root
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    d = record_dataset(reg, RecordSpec(name="d", images=str(images), model=spec_model, layers=(1,), tokens=tokens,
                                       batch_size=8, data_root=str(tmp_path / "data")))
    reader = ShardReader(d.path)
    scale = float(reader.stats()["scale"][0])
    read = "cls" if tokens == "cls" else "patches"
    ident = _register_sae(reg, "d", identity_sae(d.d_model), layer=1, tokens=read, scale=scale, root=tmp_path,
                          tag=tokens)
    (result,) = run_eval(EvalSpec(db_url=url, run_ids=(ident,), dataset="d", n_images=6, batch_size=3))
    if result.fidelity is not None:  # a CLS-only edit at the last block may not reach the output: said so
        assert result.fidelity == pytest.approx(1.0, abs=1e-5)
    else:
        assert result.extra["missing"]["fidelity"].startswith("undefined")
