"""Reconstruction metrics with known answers, and the held-out evaluation of a sweep (``val_dataset:``)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

from saev_ops import errors
from saev_ops.registry import Registry, RunQuery
from saev_ops.registry.records import OUTPUT_METRICS
from saev_ops.sae import SAEConfig, build_sae
from saev_ops.sae.evaluate import METRIC_KEYS, ReconMetrics, reconstruction_metrics
from saev_ops.sweeps import parse_sweep, submit_sweep
from saev_ops.sweeps.submit import bind_configs, job_for_runs
from saev_ops.train.trainer import Trainer
from tests.helpers import constant_sae, identity_sae, make_dataset
from tests.shard_helpers import write_dataset


def test_metric_keys_match_the_registry_columns() -> None:
    assert tuple(METRIC_KEYS) == OUTPUT_METRICS


def test_identity_sae_scores_perfectly() -> None:
    x = torch.randn(500, 8) * 3 + 1
    m = reconstruction_metrics(identity_sae(8), x, batch_size=128)
    assert m["nmse"] == pytest.approx(0, abs=1e-10) and m["explained_variance"] == pytest.approx(1)
    assert m["cosine"] == pytest.approx(1) and m["shrinkage"] == pytest.approx(1)
    assert m["l0"] == pytest.approx(8) and m["unfired_frac"] == 0 and m["dense_frac"] == 1


def test_mean_and_zero_reconstructions() -> None:
    x = torch.randn(400, 6) + 5
    mean = constant_sae(6, x.mean(0))
    m = reconstruction_metrics(mean, x, batch_size=64)
    assert m["nmse"] == pytest.approx(1) and m["explained_variance"] == pytest.approx(0, abs=1e-9)
    assert m["l0"] == 0 and m["unfired_frac"] == 1 and m["dense_frac"] == 0
    zero = reconstruction_metrics(constant_sae(6, torch.zeros(6)), x)
    # predicting 0 is worse than the mean by the mean's energy; the residual's variance is still x's own
    expected = float((x.double() ** 2).sum() / ((x.double() - x.double().mean(0)) ** 2).sum())
    assert zero["nmse"] == pytest.approx(expected) and zero["explained_variance"] == pytest.approx(0, abs=1e-9)
    assert zero["shrinkage"] == 0 and zero["cosine"] == 0


def test_streamed_metrics_equal_direct_formulas() -> None:
    torch.manual_seed(0)
    sae = build_sae(SAEConfig.of(arch="topk", d_model=10, d_sae=40, k=3), seed=2).eval()
    x = torch.randn(300, 10)
    acc = ReconMetrics(40)
    for part in x.split(70):
        z = sae.encode(part)
        acc.add(part, sae.decode(z), z)
    m = acc.result()
    with torch.no_grad():
        z = sae.encode(x)
        xh = sae.decode(z)
    xd, xhd = x.double().numpy(), xh.double().numpy()
    r = xd - xhd
    assert m["nmse"] == pytest.approx((r**2).sum() / ((xd - xd.mean(0)) ** 2).sum())
    assert m["explained_variance"] == pytest.approx(1 - r.var(0).sum() / xd.var(0).sum())
    cos = (xd * xhd).sum(1) / (np.linalg.norm(xd, axis=1) * np.linalg.norm(xhd, axis=1))
    assert m["cosine"] == pytest.approx(cos.mean())
    assert m["shrinkage"] == pytest.approx((np.linalg.norm(xhd, axis=1) / np.linalg.norm(xd, axis=1)).mean())
    fired = (z != 0).numpy()
    assert m["l0"] == pytest.approx(3) and m["unfired_frac"] == pytest.approx((fired.sum(0) == 0).mean())
    assert m["dense_frac"] == pytest.approx((fired.mean(0) > 0.1).mean())


GRID = """\
name: held
dataset: tiny
val_dataset: {val}
executor: debug
runs_root: {root}
train: {{batch_size: 64, n_tokens: 1280, log_every: 5, ckpt_every: 50, eval_every: 8, val_tokens: 100,
        lr_warmup_steps: 2, buffer_mb: 0.2}}
base: {{arch: topk, d_sae: 64, k: 4, layer: 7, dead_tokens: 640}}
grid: {{lr: [0.001, 0.003]}}
"""


def _register(reg: Registry, name: str, path: pathlib.Path, **extra: object) -> None:
    sidecar = json.loads((path / "saev_ops.json").read_text())
    md = json.loads((path / "metadata.json").read_text())
    make_dataset(reg, name=name, path=str(path), d_model=32, layers=list(md["layers"]), tokens_per_example=17,
                 n_examples=md["n_examples"], status="complete", **extra)
    reg.update_dataset(name, extra={"metadata_hash": sidecar["content_hash"],
                                    "token_layout": sidecar["token_layout"]})


@pytest.fixture
def env(tmp_path: pathlib.Path) -> tuple[Registry, str]:
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    _register(reg, "tiny", write_dataset(tmp_path / "train", n_examples=40, layers=(3, 7), n_patches=16, d_model=32))
    _register(reg, "tiny-val", write_dataset(tmp_path / "val", n_examples=24, layers=(3, 7), n_patches=16,
                                             d_model=32))
    return reg, url


def test_sweep_logs_held_out_metrics_on_a_fixed_sample(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    reg, url = env
    spec = parse_sweep(GRID.format(val="tiny-val", root=tmp_path / "runs"))
    assert spec.settings.val_dataset == "tiny-val"
    submit_sweep(reg, spec, url)
    rows = reg.list_runs(RunQuery(sweep="held", sort="val/nmse"))
    assert len(rows) == 2 and all(r.run.status == "completed" for r in rows)
    for r in rows:
        assert {f"val/{k}" for k in METRIC_KEYS if k != "unfired_frac"} <= set(r.summary)
        assert "val/unfired_frac" not in r.summary  # 100 held-out rows for 64 latents: too few to tell
        # 20 steps, every 8 and at the end
        assert [p.step for p in reg.metric_history(r.run.id, "val/nmse")] == [8, 16, 20]
        assert r.summary["val/l0"] == pytest.approx(4)
    assert rows[0].summary["val/nmse"] <= rows[1].summary["val/nmse"]
    # the evaluation and the identity: val settings are not part of what a run learns
    again = parse_sweep(GRID.format(val="tiny-val", root=tmp_path / "runs").replace("eval_every: 8", "eval_every: 4"))
    assert submit_sweep(reg, again, url).new_runs == ()


def test_held_out_sample_is_fixed(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    reg, url = env
    spec = parse_sweep(GRID.format(val="tiny-val", root=tmp_path / "runs"))
    reg.get_or_create_sweep("held", spec.text)
    configs = bind_configs(spec, 32)
    ids = [r.id for r, _ in reg.add_runs("tiny", [c.stored() for c in configs], sweep="held",
                                         identities=[c.identity() for c in configs])]
    job = job_for_runs(reg, tuple(ids), url, runs_root=str(tmp_path / "runs"))
    assert job.val_dataset_path == reg.get_dataset("tiny-val").path
    a, b = Trainer(job, None).val_x, Trainer(job, None).val_x
    assert a is not None and b is not None and a.shape == (100, 32) and torch.equal(a, b)


@pytest.mark.parametrize("change, message", [
    ({"val": "tiny"}, "is the training dataset"),
    ({"val": "nope"}, "val_dataset 'nope': .*no dataset named 'nope'"),
    ({"model_ckpt": "other"}, "model: clip:ViT-B-16/openai vs clip:other"),
    ({"layers": (3,)}, r"layers: the runs read \[7\], 'odd' has \[3\]"),
])
def test_held_out_dataset_must_match(tmp_path: pathlib.Path, env, change: dict, message: str) -> None:  # noqa: ANN001
    reg, url = env
    val = change.pop("val", "odd")
    if val == "odd":
        layers = change.pop("layers", (3, 7))
        _register(reg, "odd", write_dataset(tmp_path / "odd", n_examples=30, layers=layers, n_patches=16, d_model=32),
                  **change)
    spec = parse_sweep(GRID.format(val=val, root=tmp_path / "runs"))
    with pytest.raises(errors.ConfigError, match=message):
        submit_sweep(reg, spec, url)
    assert reg.list_runs(RunQuery()) == []  # nothing was written


def test_val_dataset_given_twice_must_agree() -> None:
    with pytest.raises(errors.ConfigError, match="val_dataset 'a' and train.val_dataset 'b' differ"):
        parse_sweep("name: s\ndataset: d\nval_dataset: a\ntrain: {val_dataset: b}\n")


def test_too_few_rows_give_no_unfired_share() -> None:
    """`val/dead_frac` counted latents that never fired in 1,024 held-out tokens of 16 images (alarming for a healthy
    SAE); below four rows a latent the sample cannot tell a rare latent from a dead one."""
    from saev_ops.sae.evaluate import MIN_ROWS_PER_LATENT

    sae = build_sae(SAEConfig.of(arch="topk", d_model=10, d_sae=40, k=3), seed=2)
    assert reconstruction_metrics(sae, torch.randn(MIN_ROWS_PER_LATENT * 40 - 1, 10))["unfired_frac"] is None
    assert reconstruction_metrics(sae, torch.randn(MIN_ROWS_PER_LATENT * 40, 10))["unfired_frac"] is not None
    from saev_ops.directions import MEANING

    assert {"dead_frac", "unfired_frac"} <= set(MEANING) and "dead_tokens" in MEANING["dead_frac"]


def test_a_val_dataset_added_later_says_how_to_score_the_existing_runs(tmp_path: pathlib.Path, env) -> None:  # noqa: ANN001
    """A sweep resubmitted with a val_dataset trained nothing new and said only `0 new`."""
    reg, url = env
    plain = GRID.format(val="tiny-val", root=tmp_path / "runs").replace("val_dataset: tiny-val\n", "")
    assert "val_dataset:" not in plain
    submit_sweep(reg, parse_sweep(plain), url)
    later = parse_sweep(GRID.format(val="tiny-val", root=tmp_path / "runs").replace("name: held", "name: held2"))
    for dry_run in (True, False):
        res = submit_sweep(reg, later, url, dry_run=dry_run)
        assert res.new_runs == ()
        (warning,) = [w for w in res.warnings if "val_dataset" in w]
        assert "2 run(s) exist already in sweep held, trained without val_dataset 'tiny-val'" in warning
        assert "`saev-ops infer held --dataset tiny-val` gives them held-out metrics" in warning
