"""Helpers shared by the test modules (tests import these, never each other): service flags and registry rows."""

from __future__ import annotations

import os
import pathlib
import uuid

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
    saes = [SAEConfig(arch="topk", d_model=32, d_sae=64, k=4, dead_tokens=640),
            SAEConfig(arch="relu", d_model=32, d_sae=128),
            SAEConfig(arch="jumprelu", d_model=32, d_sae=48)]
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

    sae = build_sae(SAEConfig(arch="relu", d_model=d, d_sae=2 * d))
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

    sae = build_sae(SAEConfig(arch="relu", d_model=d, d_sae=4))
    with torch.no_grad():
        sae.b_enc.fill_(-1e9)
        sae.b_dec.copy_(row)
    return sae
