"""SAEs in and out: saev checkpoint files and SAELens directories, read back bit for bit and computing the same latents
as those projects' own forward passes (written out here from their source: saev's encode has no decoder-bias
subtraction and keeps the top-k values as they are; SAELens subtracts b_dec when apply_b_dec_to_input)."""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from saev_ops import errors
from saev_ops.cli import cli
from saev_ops.registry import Registry
from saev_ops.sae import SAEConfig, build_sae
from saev_ops.sae.interop import export_saelens, export_saev, read_saelens, read_saev

D, W = 16, 64


def saev_file(path: pathlib.Path, activation: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint laid out as saev's dump() writes it (schema 5: JSON header line, then torch.save of the state)."""
    g = torch.Generator().manual_seed(seed)
    state = {"W_dec": torch.randn(W, D, generator=g), "b_dec": torch.randn(D, generator=g) * 0.1,
             "W_enc": torch.randn(D, W, generator=g), "b_enc": torch.randn(W, generator=g) * 0.1}
    aux = {"cls": "AuxK", "params": {"key": "auxk", "k_aux": 512, "alpha": 1 / 32}}
    params = {"TopK": {"key": "top-k", "top_k": 8, "sparsity": {"cls": "NoSparsity", "params": {"key": "no-sparsity"}},
                       "aux": aux},
              "Relu": {"key": "relu", "sparsity": {"cls": "L1Sparsity", "params": {"key": "l1-sparsity", "coeff": 4e-4}},
                       "aux": {"cls": "NoAux", "params": {"key": "no-aux"}}},
              "BatchTopK": {"key": "batch-top-k", "top_k": 8, "momentum": 0.1, "aux": aux,
                            "sparsity": {"cls": "NoSparsity", "params": {"key": "no-sparsity"}}}}[activation]
    if activation == "BatchTopK":
        state["activation.threshold"] = torch.tensor(0.37)
    header = {"schema": 5, "cfg": {"d_model": D, "d_sae": W, "activation": {"cls": activation, "params": params},
                                   "reinit_blend": 0.8, "reinit_enc_dec_tranpose": True, "remove_parallel_grads": True,
                                   "normalize_w_dec": True}, "commit": "abc", "lib": "1.0"}
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(json.dumps(header).encode() + b"\n" + buf.getvalue())
    return state


def read_saev_raw(path: pathlib.Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """What saev's load() reads: the header line and the state dict after it."""
    with open(path, "rb") as fh:
        header = json.loads(fh.readline())
        return header, torch.load(io.BytesIO(fh.read()), weights_only=True)


def saev_encode(state: dict[str, torch.Tensor], activation: str, x: torch.Tensor) -> torch.Tensor:
    """saev's SparseAutoencoder.encode in eval mode."""
    h = x @ state["W_enc"] + state["b_enc"]
    if activation == "Relu":
        return torch.relu(h)
    if activation == "TopK":
        idx = h.topk(8, dim=-1).indices
        return torch.zeros_like(h).scatter(-1, idx, 1.0) * h
    t = state["activation.threshold"]
    return torch.where(h > t, h, torch.zeros_like(h))


@pytest.mark.parametrize("activation", ["TopK", "Relu", "BatchTopK"])
def test_saev_checkpoint_round_trip_bit_for_bit(tmp_path: pathlib.Path, activation: str) -> None:
    src = tmp_path / "sae.pt"
    state = saev_file(src, activation)
    sae, header = read_saev(src)
    assert sae.cfg.arch == {"TopK": "topk", "Relu": "relu", "BatchTopK": "batchtopk"}[activation]
    assert not sae.cfg.apply_b_dec_to_input
    x = torch.randn(200, D, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        want = saev_encode(state, activation, x)
        got = sae.encode(x)
    assert torch.equal(got, want)  # saev's TopK keeps negative values among the top k: so does the import
    if activation == "TopK":
        assert not sae.cfg.topk_relu
    out = export_saev(sae, {"scale": 1.0}, tmp_path / "again.pt")
    header2, state2 = read_saev_raw(out)
    assert header2["schema"] == 5 and header2["cfg"]["activation"]["cls"] == activation
    assert header2["cfg"]["d_model"] == D and header2["cfg"]["d_sae"] == W
    if activation != "Relu":
        assert header2["cfg"]["activation"]["params"]["top_k"] == 8
    for k, v in state.items():
        assert torch.equal(state2[k], v), k  # bit for bit
    assert set(state2) == set(state)


@pytest.mark.parametrize("arch", ["topk", "relu", "batchtopk"])
def test_saev_ops_sae_to_saev_computes_the_same_latents(tmp_path: pathlib.Path, arch: str) -> None:
    sae = build_sae(SAEConfig.of(arch=arch, d_model=D, d_sae=W, k=8), seed=3)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.5)
        sae.b_enc.normal_(0, 0.1)
        if arch == "batchtopk":
            sae.get_buffer("threshold").fill_(0.2)
    sae.eval()
    scale = 1.7
    out = export_saev(sae, {"scale": scale, "layer": 3}, tmp_path / "sae.pt")
    header, state = read_saev_raw(out)
    assert header["saev_ops"]["scale"] == scale and header["saev_ops"]["config"]["arch"] == arch
    x = torch.randn(300, D, generator=torch.Generator().manual_seed(2)) * 2
    activation = {"topk": "TopK", "relu": "Relu", "batchtopk": "BatchTopK"}[arch]
    with torch.no_grad():
        ours = sae.encode(x * scale)  # saev-ops SAEs read scaled activations
        theirs = saev_encode(state, activation, x)  # saev reads them raw: its latents are ours in raw units
        np.testing.assert_allclose((theirs * scale).numpy(), ours.numpy(), rtol=1e-5, atol=1e-5)
        # the format's invariants: saev's config says normalize_w_dec, and its decoder rows are unit norm as ours
        assert header["cfg"]["normalize_w_dec"]
        torch.testing.assert_close(state["W_dec"].norm(dim=1), sae.W_dec.detach().norm(dim=1))
        torch.testing.assert_close(state["W_dec"].norm(dim=1), torch.ones(W), rtol=1e-5, atol=1e-5)
        assert torch.equal(state["W_enc"], sae.W_enc.detach())
        back, _ = read_saev(out)
        recon = back.decode(back.encode(x))
        np.testing.assert_allclose(recon.numpy(), (sae.decode(ours) / scale).numpy(), rtol=1e-4, atol=1e-5)
    again = export_saev(back, {"scale": 1.0}, tmp_path / "again.pt")  # a fixed point from here on
    assert all(torch.equal(read_saev_raw(again)[1][k], v) for k, v in state.items())


def test_saev_refuses_what_it_cannot_hold(tmp_path: pathlib.Path) -> None:
    with pytest.raises(errors.ConfigError, match="saev has no jumprelu activation.*SAELens"):
        export_saev(build_sae(SAEConfig.of(arch="jumprelu", d_model=D, d_sae=W)), {}, tmp_path / "x.pt")
    (tmp_path / "bad.pt").write_bytes(b"not json\n")
    with pytest.raises(errors.DataError, match="not a saev checkpoint"):
        read_saev(tmp_path / "bad.pt")


def saelens_encode(cfg: dict, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """SAELens' encode for its standard, topk and jumprelu SAEs."""
    sae_in = x - state["b_dec"] * cfg["apply_b_dec_to_input"]
    pre = sae_in @ state["W_enc"] + state["b_enc"]
    if cfg["architecture"] == "standard":
        return torch.relu(pre)
    if cfg["architecture"] == "topk":
        top = pre.topk(cfg["k"], dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return torch.relu(pre) * (pre > state["threshold"])


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "batchtopk"])
def test_saelens_export_and_round_trip(tmp_path: pathlib.Path, arch: str) -> None:
    sae = build_sae(SAEConfig.of(arch=arch, d_model=D, d_sae=W, k=8), seed=4)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.5)
        if arch == "batchtopk":
            sae.get_buffer("threshold").fill_(0.3)
    sae.eval()
    out = export_saelens(sae, {"scale": 0.8, "layer": 5}, tmp_path / "lens")
    cfg = json.loads((out / "cfg.json").read_text())
    state = load_file(str(out / "sae_weights.safetensors"))
    assert cfg["architecture"] == {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu",
                                   "batchtopk": "jumprelu"}[arch]
    assert cfg["d_in"] == D and cfg["normalize_activations"] == "none" and cfg["metadata"]["hook_layer"] == 5
    x = torch.randn(300, D, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        np.testing.assert_allclose((saelens_encode(cfg, state, x) * 0.8).numpy(), sae.encode(x * 0.8).numpy(),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state["W_dec"].norm(dim=1), sae.W_dec.detach().norm(dim=1))  # unit rows kept
    back, _ = read_saelens(out)
    again = export_saelens(back, {"scale": 1.0}, tmp_path / "again")
    state2 = load_file(str(again / "sae_weights.safetensors"))
    for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(state2[k], state[k]), k  # bit for bit
    if "threshold" in state:  # stored as log(threshold): exp(log(t)) is t to within a rounding
        torch.testing.assert_close(state2["threshold"], state["threshold"], rtol=1e-6, atol=0)


def test_a_directory_written_like_saelens_imports(tmp_path: pathlib.Path) -> None:
    g = torch.Generator().manual_seed(0)
    state = {"W_enc": torch.randn(D, W, generator=g), "b_enc": torch.randn(W, generator=g),
             "W_dec": torch.randn(W, D, generator=g), "b_dec": torch.randn(D, generator=g)}
    d = tmp_path / "lens"
    d.mkdir()
    save_file(state, str(d / "sae_weights.safetensors"))
    cfg = {"architecture": "topk", "d_in": D, "d_sae": W, "k": 6, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none", "meta": {}}
    (d / "cfg.json").write_text(json.dumps(cfg))
    sae, _ = read_saelens(d)
    x = torch.randn(50, D, generator=g)
    with torch.no_grad():
        assert torch.equal(sae.encode(x), saelens_encode(cfg, state, x))
    (d / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "expected_average_only_in"}))
    with pytest.raises(errors.DataError, match="fold the scaling factor"):
        read_saelens(d)


def test_runs_import_then_infer_and_export_through_the_cli(tmp_path: pathlib.Path) -> None:
    from tests.helpers import make_dataset
    from tests.shard_helpers import write_dataset

    path = write_dataset(tmp_path / "data", n_examples=20, layers=(3, 7), n_patches=16, d_model=D)
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    sidecar = json.loads((path / "saev_ops.json").read_text())
    make_dataset(reg, name="tiny", path=str(path), d_model=D, layers=[3, 7], tokens_per_example=17, n_examples=20,
                 status="complete", extra={"metadata_hash": sidecar["content_hash"],
                                           "token_layout": sidecar["token_layout"]})
    state = saev_file(tmp_path / "sae.pt", "TopK")
    run = CliRunner()
    args = ["--db", url, "runs", "import", str(tmp_path / "sae.pt"), "--dataset", "tiny",
            "--runs-root", str(tmp_path / "runs")]
    res = run.invoke(cli, args)
    assert res.exit_code != 0 and "say which one the SAE reads (--layer)" in res.output
    res = run.invoke(cli, [*args, "--layer", "7"])
    assert res.exit_code == 0, res.output
    run_id = int(res.output.split()[1].rstrip(":"))
    assert reg.get_run(run_id).status == "completed"
    assert "already imported" in run.invoke(cli, [*args, "--layer", "7"]).output
    res = run.invoke(cli, ["--db", url, "infer", str(run_id), "--dataset", "tiny", "--out-root", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    (out,) = reg.list_outputs()
    import scipy.sparse

    from saev_ops.shards import ShardReader

    x = torch.from_numpy(ShardReader(path).read(0, 20, layer_idx=1)[:, 1:].reshape(-1, D).copy())
    want = saev_encode(state, "TopK", x).clamp_min(0).numpy()
    np.testing.assert_allclose(scipy.sparse.load_npz(pathlib.Path(out.path) / "latents.npz").toarray(), want,
                               rtol=1e-5, atol=1e-6)
    res = run.invoke(cli, ["--db", url, "runs", "export", str(run_id), "--format", "saev", "--out",
                           str(tmp_path / "out.pt")])
    assert res.exit_code == 0, res.output
    assert all(torch.equal(read_saev_raw(tmp_path / "out.pt")[1][k], v) for k, v in state.items())


def _saelens_6_metadata(cfg: dict) -> dict:
    """What SAELens 6's ``load_from_disk`` ends with as the SAE's metadata (its ``handle_config_defaulting``, read from
    its source): the config's own ``metadata`` when ``sae_lens_version`` (top level or in ``metadata``) is 6.0 or later,
    else the model, hook and dataset names taken from top-level keys (the pre-6 layout)."""
    from packaging.version import Version

    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if version and Version(str(version)) >= Version("6.0.0rc0"):
        return dict(cfg.get("metadata") or {})
    return {k: cfg.get(k) for k in ("model_name", "hook_name", "hook_head_index", "dataset_path")}


def test_saelens_6_reads_the_exported_names(tmp_path: pathlib.Path) -> None:
    """The export wrote its names under ``meta``, which SAELens 6 does not read: model, hook and dataset came back as
    None."""
    sae = build_sae(SAEConfig.of(arch="topk", d_model=8, d_sae=16, k=2), seed=0)
    out = export_saelens(sae, {"scale": 1.0, "layer": 5, "model": "clip:/models/b16", "dataset": "inat21"},
                         tmp_path / "lens")
    md = _saelens_6_metadata(json.loads((out / "cfg.json").read_text()))
    assert md["model_name"] == "clip:/models/b16" and md["dataset_path"] == "inat21"
    assert md["hook_name"] == "blocks.5.hook_resid_post" and md["saev_ops"]["layer"] == 5


def test_a_saev_topk_with_negative_pre_activations_computes_what_saev_computes(tmp_path: pathlib.Path) -> None:
    """A saev dump() with b_enc = -25: L0 16 in saev, 0.008 in saev-ops (its TopK applied a ReLU), reconstruction
    100% off. The import keeps saev's TopK, a run's config and identity say so, and it trains the same way."""
    from saev_ops.registry import Registry
    from saev_ops.transfer import import_run
    from tests.helpers import make_dataset

    src = tmp_path / "neg.pt"
    state = saev_file(src, "TopK")
    state["b_enc"] = torch.full((W,), -25.0)
    header, _ = read_saev_raw(src)
    buf = io.BytesIO()
    torch.save(state, buf)
    src.write_bytes(json.dumps(header).encode() + b"\n" + buf.getvalue())
    sae, _ = read_saev(src)
    x = torch.randn(100, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = saev_encode(state, "TopK", x), sae.encode(x)
    assert torch.equal(got, want) and float((got != 0).sum(-1).float().mean()) == 8
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    make_dataset(reg, "d", d_model=D, layers=[3], status="complete")
    run, _ = import_run(reg, src, dataset="d", runs_root=tmp_path / "runs")
    assert run.config["sae"]["topk_relu"] is False
    from saev_ops.runconfig import run_identity

    assert run_identity(run.config)["sae"]["topk_relu"] is False
    relu_cfg = {**run.config, "sae": {**run.config["sae"], "topk_relu": True}}
    assert "topk_relu" not in run_identity(relu_cfg)["sae"]  # the default keeps the identities runs had
    with pytest.raises(errors.ConfigError, match="SAELens' TopK applies a ReLU"):
        export_saelens(sae, {}, tmp_path / "lens")


def test_exporting_a_relu_topk_to_saev_says_how_often_it_differs(tmp_path: pathlib.Path, caplog) -> None:
    from saev_ops.registry import Registry
    from saev_ops.sae.io import save_sae
    from saev_ops.transfer import export_run
    from tests.helpers import make_dataset
    from tests.shard_helpers import write_dataset

    path = write_dataset(tmp_path / "data", n_examples=40, layers=(3,), n_patches=16, d_model=D)
    reg = Registry(f"sqlite:///{tmp_path / 'r.sqlite'}")
    make_dataset(reg, "d", path=str(path), d_model=D, layers=[3], status="complete")
    sae = build_sae(SAEConfig.of(arch="topk", d_model=D, d_sae=W, k=8), seed=1)
    with torch.no_grad():
        sae.b_enc.fill_(-0.5)  # some rows' top k include negative pre-activations
    (run, _), = reg.add_runs("d", [{"sae": sae.cfg.to_dict(), "layer": 3, "tokens": "patches"}])
    save_sae(sae, tmp_path / "sae", scale=1.0, dataset_hash="h", layer=3)
    reg.transition_run(run.id, "running")
    reg.transition_run(run.id, "completed", checkpoint_path=str(tmp_path / "sae"))
    export_run(reg, run.id, "saev", tmp_path / "out.pt")
    assert "saev's TopK has no ReLU" in caplog.text and "% of the first rows of 'd'" in caplog.text
    with pytest.raises(errors.ConfigError, match="--strict refuses it"):
        export_run(reg, run.id, "saev", tmp_path / "strict.pt", strict=True)
    assert not (tmp_path / "strict.pt").exists()
