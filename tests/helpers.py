"""Helpers shared by the test modules (tests import these, never each other): service flags and registry rows."""

from __future__ import annotations

import os
import pathlib
import uuid
from typing import Any

from saev_ops.registry import Registry
from saev_ops.sae.config import SAEConfig
from saev_ops.train import RunSpec, TrainJobSpec, TrainSettings

PG_URL = os.environ.get("SAEV_OPS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("SAEV_OPS_REQUIRE_SERVICES") == "1"


def make_dataset(reg, name: str = "inat21", **overrides):  # noqa: ANN001, ANN201
    fields = dict(
        name=name,
        content_hash=uuid.uuid4().hex,
        path=f"/data/{name}",
        model_family="clip",
        model_ckpt="ViT-B-16/openai",
        layers=[6, 11],
        d_model=768,
        tokens_per_example=197,
        n_examples=1000,
        dtype="float32",
        source_path="/images/" + name,
    )
    fields.update(overrides)
    return reg.create_dataset(**fields)


def make_spec(reg: Registry, url: str, path: pathlib.Path, root: pathlib.Path, *, n_tokens: int = 3200,
              ckpt_every: int = 5) -> TrainJobSpec:
    settings = TrainSettings(batch_size=64, n_tokens=n_tokens, log_every=5, ckpt_every=ckpt_every, lr_warmup_steps=3,
                             sparsity_warmup_steps=3, buffer_mb=0.2, heartbeat_s=0.0)
    saes = [SAEConfig.of(arch="topk", d_model=32, d_sae=64, k=4, dead_tokens=640),
            SAEConfig.of(arch="relu", d_model=32, d_sae=128),
            SAEConfig.of(arch="jumprelu", d_model=32, d_sae=48)]
    configs = [{"sae": s.to_dict(), "lr": 1e-3, "seed": i, "layer": 7, "tokens": "patches"} for i, s in enumerate(saes)]
    runs = reg.add_runs("tiny", configs)
    return TrainJobSpec(db_url=url, dataset="tiny", dataset_path=str(path), dataset_hash="h", layer=7,
                        tokens="patches", settings=settings, runs_root=str(root), registry_id=reg.registry_id,
                        runs=tuple(RunSpec(run_id=r.id, sae=s, lr=1e-3, seed=i, identity=r.config_hash)
                                   for i, ((r, _), s) in enumerate(zip(runs, saes))))


def tiny_hf(tmp_path: pathlib.Path, family: str, image_size: int = 32) -> str:
    """A random-init transformers model of ``family`` saved under ``tmp_path`` (``vit-cls``: a ViT with a 3-class
    head); returns its ``--model`` spec."""
    import torch
    import transformers as t

    common = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                  image_size=image_size, patch_size=8)
    torch.manual_seed(0)
    model = {
        "vit": lambda: t.ViTModel(t.ViTConfig(**common)),
        "vit-cls": lambda: t.ViTForImageClassification(t.ViTConfig(**common, num_labels=3)),
        "clip": lambda: t.CLIPVisionModel(t.CLIPVisionConfig(**common)),
        "dinov2": lambda: t.Dinov2Model(t.Dinov2Config(**common)),
        "dinov2-reg": lambda: t.Dinov2WithRegistersModel(t.Dinov2WithRegistersConfig(**common, num_register_tokens=2)),
        "siglip": lambda: t.SiglipVisionModel(t.SiglipVisionConfig(**common)),
        "dinov3": lambda: t.DINOv3ViTModel(t.DINOv3ViTConfig(**common, num_register_tokens=2)),
        "siglip2": lambda: t.Siglip2VisionModel(t.Siglip2VisionConfig(
            **{k: v for k, v in common.items() if k != "image_size"}, num_patches=16)),
    }[family]()
    path = tmp_path / family
    model.save_pretrained(path)
    return f"{family.split('-')[0]}:{path}"


def identity_sae(d: int):  # noqa: ANN201 - an SAE module
    """A ReLU SAE that reconstructs exactly: latents relu(x) and relu(-x), decoder rows e_i and -e_i."""
    import torch

    from saev_ops.sae import build_sae

    sae = build_sae(SAEConfig.of(arch="relu", d_model=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def constant_sae(d: int, row):  # noqa: ANN001, ANN201 - a tensor in, an SAE module out
    """An SAE that never fires and reconstructs every row as ``row``."""
    import torch

    from saev_ops.sae import build_sae

    sae = build_sae(SAEConfig.of(arch="relu", d_model=d, d_sae=4))
    with torch.no_grad():
        sae.b_enc.fill_(-1e9)
        sae.b_dec.copy_(row)
    return sae


def mini_loop(url: str, root: pathlib.Path, *, n_classes: int = 2) -> dict:
    """The loop in miniature on a real registry: 12 generated images recorded with the built-in tiny ViT (dataset
    ``tiny``), a sweep ``rep`` of two TopK SAEs (k 4 and 8) trained in one pass, and both runs' inference outputs.
    Returns the url, the run ids, the output ids and ``root``."""
    from saev_ops.infer import InferSpec, run_inference
    from saev_ops.record import RecordSpec, record_dataset
    from saev_ops.record.images import generate_images
    from saev_ops.registry import RunQuery
    from saev_ops.sweeps import parse_sweep, submit_sweep

    reg = Registry(url)
    generate_images(root / "imgs", 12, size=32, n_classes=n_classes)
    record_dataset(reg, RecordSpec(name="tiny", images=str(root / "imgs"), model="builtin:tiny",
                                   data_root=str(root / "data")))
    grid = f"""name: rep
dataset: tiny
executor: debug
runs_root: {root / 'runs'}
train: {{batch_size: 64, n_tokens: 1280, log_every: 5, ckpt_every: 10, lr_warmup_steps: 2, buffer_mb: 0.2}}
base: {{arch: topk, d_sae: 64, dead_tokens: 640}}
grid: {{k: [4, 8]}}
"""
    submit_sweep(reg, parse_sweep(grid), url)
    ids = tuple(r.run.id for r in reg.list_runs(RunQuery(sweep="rep")))
    outs = run_inference(InferSpec(db_url=url, run_ids=ids, dataset="tiny", out_root=str(root / "o")))
    reg.close()
    return {"url": url, "runs": ids, "outputs": [o.id for o in outs], "root": root}


def planted(n: int, *, d: int = 32, n_atoms: int = 128, k: int = 4, seed: int = 0, atoms_seed: int = 5):  # noqa: ANN201
    """A planted dictionary: rows = sparse positive codes (about ``k`` atoms a row, Poisson; Zipf frequencies; atom
    scales from 0.5 to 4, log-uniform) times unit atoms, plus a mean offset of norm 12 sqrt(k), larger than the rest
    of the row (as a ViT's activations), plus noise of 0.05. The atoms depend on ``atoms_seed`` only, the rows on
    ``seed``. Returns (rows, atoms) as float32 numpy arrays."""
    import numpy as np

    g = np.random.default_rng(atoms_seed)
    atoms = g.normal(size=(n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    scales = np.exp(g.uniform(np.log(0.5), np.log(4.0), n_atoms))
    p = 1.0 / np.arange(1, n_atoms + 1)
    p /= p.sum()
    mean = g.normal(size=d)
    mean *= 12 * np.sqrt(k) / np.linalg.norm(mean)
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float64)
    for i, m in enumerate(np.clip(rng.poisson(k, n), 1, 3 * k)):
        idx = rng.choice(n_atoms, size=m, replace=False, p=p)
        x[i] = (scales[idx] * rng.exponential(1.0, m)) @ atoms[idx]
    x += mean + 0.05 * rng.normal(size=(n, d))
    return x.astype(np.float32), atoms.astype(np.float32)


def train_killed_after(trainer: Any, checkpoints: int) -> None:
    """Train until ``checkpoints`` checkpoints are written, then die as a preempted job does (KeyboardInterrupt)."""
    import pytest

    save = trainer.save_checkpoint
    written = []

    def save_then_die() -> pathlib.Path:
        written.append(save())
        if len(written) == checkpoints:
            raise KeyboardInterrupt
        return written[-1]

    trainer.save_checkpoint = save_then_die
    with pytest.raises(KeyboardInterrupt):
        trainer.train()


def assert_same_weights(a: list, b: list) -> None:
    """Every tensor of every SAE in ``a`` equals (bit for bit) its twin in ``b``: a resumed run is the uninterrupted
    one."""
    import torch

    for x, y in zip(a, b, strict=True):
        for (name, p), (_, q) in zip(x.state_dict().items(), y.state_dict().items(), strict=True):
            assert torch.equal(p, q), name
