"""SAEs and the multi-SAE training pass: architectures learn, metrics land, resume equals an uninterrupted run."""

from __future__ import annotations

import pathlib

import pytest
import torch

from saev_ops import errors
from saev_ops.registry import Registry, RunQuery
from saev_ops.sae import SAEConfig, build_sae
from saev_ops.sae.io import load_sae
from saev_ops.train import TrainJobSpec, run_train_job
from saev_ops.train.journal import sync_file
from saev_ops.train.trainer import Trainer
from tests.helpers import assert_same_weights, make_dataset, make_spec, train_killed_after
from tests.shard_helpers import write_dataset

ARCHS = ["relu", "topk", "batchtopk", "jumprelu", "matryoshka", "signed-topk"]


@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_reduces_its_loss(arch: str) -> None:
    torch.manual_seed(0)
    dirs = torch.randn(32, 16)
    codes = (torch.rand(2048, 32) < 0.1).float() * torch.rand(2048, 32) * 3
    x = codes @ dirs
    cfg = SAEConfig.of(arch=arch, d_model=16, d_sae=64, k=4, matryoshka_prefixes=(16,) if arch == "matryoshka" else (),
                    l1_coeff=1e-3, l0_coeff=1e-4)
    sae = build_sae(cfg, seed=1)
    sae.init_bias(x.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        _, z, terms = sae(x)
        first = float(terms["mse"].detach()) if first is None else first
        opt.zero_grad()
        terms["loss"].backward()
        sae.remove_parallel_grad()
        opt.step()
        sae.normalize_decoder()
    assert float(terms["mse"].detach()) < 0.5 * first
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    if arch in ("topk", "matryoshka", "signed-topk"):
        assert int((z != 0).sum(-1).max()) <= 4
    if arch == "batchtopk":
        assert int((z != 0).sum()) <= 4 * len(x)


def test_bad_sae_configs() -> None:
    with pytest.raises(errors.ConfigError, match="k must be in 1..d_sae"):
        SAEConfig.of(arch="topk", d_model=8, d_sae=4, k=8)
    with pytest.raises(errors.ConfigError, match="arch must be one of"):
        SAEConfig.of(arch="gelu", d_model=8)
    with pytest.raises(errors.ConfigError, match="unknown keys"):
        SAEConfig.from_dict({"d_model": 8, "widht": 3})


@pytest.fixture
def setup(tmp_path: pathlib.Path) -> tuple[Registry, str, pathlib.Path]:
    path = write_dataset(tmp_path / "data", n_examples=40, layers=(3, 7), n_patches=16, d_model=32)
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    reg = Registry(url)
    make_dataset(reg, name="tiny", path=str(path), d_model=32, layers=[3, 7], tokens_per_example=17, n_examples=40)
    return reg, url, path


def test_one_pass_trains_many_saes_and_metrics_land(setup, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    reg, url, path = setup
    spec = make_spec(reg, url, path, tmp_path / "runs")
    out = run_train_job(spec)
    rows = reg.list_runs(RunQuery(dataset="tiny", where=("nmse<10",), sort="nmse"))
    assert {r.run.id for r in rows} == set(out) and all(r.run.status == "completed" for r in rows)
    for r in rows:
        for key in ("loss", "mse", "nmse", "explained_variance", "l0", "dead_frac", "dense_frac"):
            assert key in r.summary
        assert r.run.checkpoint_path == out[r.run.id] and r.run.attempts == 1 and r.run.host
    topk = next(r for r in rows if r.run.config["sae"]["arch"] == "topk")
    assert topk.summary["l0"] == pytest.approx(4.0)
    assert len(reg.metric_history(topk.run.id, "nmse")) == 10  # 50 steps, a report every 5
    sae, meta = load_sae(pathlib.Path(out[topk.run.id]))
    assert meta["layer"] == 7 and meta["scale"] > 0 and sae.cfg.d_sae == 64


def test_resume_equals_uninterrupted(setup, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    reg, url, path = setup
    spec = make_spec(reg, url, path, tmp_path / "a", n_tokens=64 * 23, ckpt_every=5)
    ref = Trainer(spec, None)
    ref.train()  # 23 steps straight through
    interrupted = Trainer(spec := TrainJobSpec(**{**spec.__dict__, "runs_root": str(tmp_path / "b")}), None)
    train_killed_after(interrupted, 3)  # after the step-15 checkpoint the job is preempted
    resumed = Trainer(spec, None)
    assert resumed.load_checkpoint() and resumed.step == 15
    resumed.train()
    assert_same_weights(ref.saes, resumed.saes)


def test_failing_run_records_its_error(setup, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    reg, url, path = setup
    spec = make_spec(reg, url, path, tmp_path / "runs")
    bad = TrainJobSpec(**{**spec.__dict__, "dataset_path": str(tmp_path / "gone")})
    with pytest.raises(errors.DataError):
        run_train_job(bad)
    run = reg.get_run(spec.runs[0].run_id)
    assert run.status == "failed" and "dataset directory does not exist" in run.error


def test_unreachable_registry_buffers_metrics_then_sync(setup, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    reg, url, path = setup
    spec = make_spec(reg, url, path, tmp_path / "runs", n_tokens=640)
    Trainer(spec, None).train()  # registry unreachable the whole time
    files = sorted((tmp_path / "runs").glob("run-*/metrics.jsonl"))
    assert len(files) == 3
    assert reg.summary(spec.runs[0].run_id) == {}
    n = sum(sync_file(reg, f).points for f in files)
    assert n > 0 and "nmse" in reg.summary(spec.runs[0].run_id)
    history = reg.metric_history(spec.runs[0].run_id)
    assert all(f.exists() for f in files)  # never renamed: a job may still be appending
    assert sum(sync_file(reg, f).points for f in files) == 0  # nothing new after the recorded offset
    assert reg.metric_history(spec.runs[0].run_id) == history


def test_dead_window_counts_tokens_and_old_files_still_load() -> None:
    sae = build_sae(SAEConfig.of(arch="topk", d_model=8, d_sae=16, k=2, dead_tokens=100), seed=0)
    z = torch.zeros(64, 16)
    z[:, 0] = 1.0
    sae.update_fired(z)
    assert not sae.dead_mask().any()  # 64 tokens < 100
    sae.update_fired(z)
    assert sae.dead_mask().sum() == 15 and not sae.dead_mask()[0]  # 128 tokens: all but the one that fired
    legacy = {k: v for k, v in sae.state_dict().items() if k != "tokens_since_fired"}
    legacy["steps_since_fired"] = torch.full((16,), 7)
    fresh = build_sae(SAEConfig.of(arch="topk", d_model=8, d_sae=16, k=2), seed=1)
    fresh.load_state_dict(legacy)  # an SAE file written before the window was in tokens
    assert torch.equal(fresh.W_dec, sae.W_dec) and not fresh.tokens_since_fired.any()
    cfg = SAEConfig.from_dict({"arch": "topk", "d_model": 8, "d_sae": 16, "k": 2, "dead_steps": 1000})
    assert cfg.dead_tokens == 10_000_000


def test_job_log_shows_progress_lines(setup, tmp_path: pathlib.Path, caplog, monkeypatch) -> None:  # noqa: ANN001
    import logging

    from saev_ops import progress

    monkeypatch.setattr(progress, "MIN_RATE_S", 0.0)  # this job may end within the second rates wait for
    reg, url, path = setup
    spec = make_spec(reg, url, path, tmp_path / "runs", n_tokens=1280)
    with caplog.at_level(logging.INFO, logger="saev_ops"):
        run_train_job(spec)
    lines = [r.getMessage() for r in caplog.records if "steps (" in r.getMessage()]
    assert lines, caplog.text
    last = lines[-1]
    assert "20/20 steps (100%)" in last and "patches/s" in last and "ETA" in last
    assert f"run {spec.runs[0].run_id}: loss" in last and "L0" in last


def test_a_crash_between_checkpoint_renames_still_resumes(setup, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    from saev_ops import atomic
    from saev_ops.train.trainer import job_dir

    reg, url, path = setup
    spec = make_spec(reg, url, path, tmp_path / "runs", n_tokens=640)
    trainer = Trainer(spec, None)
    trainer.step = 7
    trainer.save_checkpoint()
    ckpt = job_dir(spec) / "ckpt"
    ckpt.rename(atomic.old_path(ckpt))  # only the previous copy is left
    resumed = Trainer(spec, None)
    assert resumed.load_checkpoint() and resumed.step == 7  # used to start over from step 0


def _planted(n: int, generator: torch.Generator) -> torch.Tensor:
    """Activations made of a planted sparse dictionary (128 unit atoms in 32 dims, ~5 active), at mean norm sqrt(32)
    as the trainer scales them."""
    atoms = torch.randn(128, 32, generator=torch.Generator().manual_seed(0))
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    codes = (torch.rand(n, 128, generator=generator) < 0.04).float() * torch.rand(n, 128, generator=generator) * 3
    x = codes @ atoms + 0.01 * torch.randn(n, 32, generator=generator)
    return x * (32**0.5 / x.norm(dim=1).mean())


def test_jumprelu_l0_coeff_controls_sparsity() -> None:
    """With the old defaults (threshold = bandwidth = 1e-3) JumpReLU acted like a ReLU and l0_coeff 0.01, 0.1 and 1
    gave the same L0 to within a few tenths; now each tenfold rise of l0_coeff lowers L0 clearly."""
    l0s = []
    for coeff in (0.01, 0.1, 1.0, 10.0):
        sae = build_sae(SAEConfig.of(arch="jumprelu", d_model=32, d_sae=128, l0_coeff=coeff), seed=0)
        g = torch.Generator().manual_seed(1)
        sae.init_bias(_planted(4096, g).mean(0))
        opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
        for _ in range(300):
            sae.train_step(_planted(256, g), opt)
        with torch.no_grad():
            _, z, _ = sae(_planted(4096, g))
        l0s.append(float((z != 0).float().sum(-1).mean()))
    assert all(a > 1.15 * b for a, b in zip(l0s, l0s[1:])), l0s


def test_gradient_clipping_bounds_the_step() -> None:
    x = _planted(256, torch.Generator().manual_seed(2)) * 100  # a large loss: a large gradient
    norms = {}
    for clip in (0.0, 1.0):
        sae = build_sae(SAEConfig.of(arch="topk", d_model=32, d_sae=64, k=4), seed=0)
        before = [p.detach().clone() for p in sae.parameters()]
        opt = torch.optim.SGD(sae.parameters(), lr=1.0)
        _, _, terms = sae.train_step(x, opt, grad_clip=clip)
        moved = torch.sqrt(sum((p.detach() - b).pow(2).sum() for p, b in zip(sae.parameters(), before)))
        norms[clip] = (float(moved), float(terms.get("grad_norm", float("nan"))))
    assert norms[1.0][1] > 100  # the norm before clipping is reported
    # SGD with lr 1 moves by the clipped gradient: at most 1 before the decoder rows are renormalised
    assert norms[1.0][0] < 2.0 < norms[0.0][0]


def test_data_init_blend_puts_decoder_rows_on_data(setup, tmp_path: pathlib.Path) -> None:  # noqa: ANN001
    reg, url, path = setup
    spec = make_spec(reg, url, path, tmp_path / "runs", n_tokens=640)
    plain = Trainer(spec, None)
    blended = Trainer(TrainJobSpec(**{**spec.__dict__, "settings": spec.settings.model_copy(
        update={"data_init_blend": 1.0})}), None)
    center = torch.from_numpy(blended.reader.stats()["mean"][1]).float() * blended.scale
    centred = blended._init_sample(center)
    assert len(centred) == 128  # the widest SAE's latents, drawn from the 40 x 16 selected patches
    unit = centred / centred.norm(dim=1, keepdim=True)
    for a, b in zip(plain.saes, blended.saes):
        # blend 1: every decoder row is one of the sampled centred activations (normalised); random rows are not
        best = (b.W_dec.detach() @ unit.t()).max(dim=1).values
        assert torch.all(best > 0.9999)
        assert float((a.W_dec.detach() @ unit.t()).max(dim=1).values.mean()) < 0.9
        assert torch.equal(b.W_enc, b.W_dec.t())
    again = Trainer(TrainJobSpec(**{**spec.__dict__, "settings": blended.spec.settings}), None)
    assert all(torch.equal(a.W_dec, b.W_dec) for a, b in zip(again.saes, blended.saes))  # seeded


def test_new_settings_at_their_old_behaviour_keep_run_identities() -> None:
    from saev_ops.registry.store import config_hash
    from saev_ops.runconfig import TrainSettings, run_config, run_identity

    sae = SAEConfig.of(arch="topk", d_model=8, d_sae=16, k=2).to_dict()
    now = run_config(sae, 1e-3, 0, 7, "patches", TrainSettings())
    before = {**now, "train": {k: v for k, v in now["train"].items() if k not in ("grad_clip", "data_init_blend")}}
    assert config_hash("d", run_identity(now)) == config_hash("d", run_identity(before))
    clipped = run_config(sae, 1e-3, 0, 7, "patches", TrainSettings(grad_clip=1.0))
    assert config_hash("d", run_identity(clipped)) != config_hash("d", run_identity(now))


@pytest.mark.timeout(60)
def test_preemption_handler_does_not_wait_on_a_lock_its_own_thread_holds(setup, tmp_path, caplog) -> None:  # noqa: ANN001
    """USR2 can land while the main thread is inside a registry write. The handler's own write then waits for a lock
    only the interrupted code can release: it used to wait out the busy timeout six times (about 6 minutes), past a
    cluster's grace period, so the job was killed without being requeued."""
    import sqlite3

    import submitit

    from saev_ops.train.trainer import TrainJob

    reg, url, path = setup
    spec = make_spec(reg, url, path, tmp_path / "runs")
    ids = [r.run_id for r in spec.runs]
    for rid in ids:
        reg.transition_run(rid, "running")
    holder = sqlite3.connect(tmp_path / "r.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the interrupted write transaction
    try:
        with caplog.at_level("WARNING"):
            assert isinstance(TrainJob(spec).checkpoint(), submitit.helpers.DelayedSubmission)
        assert "did not answer within" in caplog.text and "stay `running`" in caplog.text
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    delayed = TrainJob(spec).checkpoint()  # no lock held: the runs are marked queued for the next attempt
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert {reg.get_run(rid).status for rid in ids} == {"queued"}
