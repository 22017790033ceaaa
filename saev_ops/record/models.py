"""Model adapters: load a vision transformer, preprocess for it, and return chosen blocks' residual stream.

``--model FAMILY:CHECKPOINT``:

| family | model | checkpoint |
|---|---|---|
| ``builtin`` | saev-ops' own small ViT, weights from a seed (no download) | ``tiny`` or ``small``, optional ``@SEED`` |
| ``vit`` | transformers ``ViTModel`` | a local directory or a name in the local HF cache |
| ``clip`` | transformers ``CLIPVisionModel`` | same |
| ``dinov2`` | transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` | same |
| ``siglip`` | transformers ``SiglipVisionModel`` | same |
| ``timm`` | a timm ViT (extra ``timm``, in ``models_extra``) | a directory, ``hf-hub:REPO``, ``ARCH@FILE`` |
| ``open_clip`` | an open_clip image tower (extra ``open-clip``) | same |

Hugging Face checkpoints (and ``hf-hub:REPO``, from the cache) load with ``local_files_only=True``: saev-ops never
downloads weights. Layer ``i`` is the output of transformer block ``i`` (0-based; ``-1`` is the last), i.e.
``hidden_states[i + 1]``.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import pathlib
from typing import Any

import numpy as np
import torch
from torch import nn

from saev_ops import errors
from saev_ops.record.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from saev_ops.shards.format import TokenLayout


class ModelAdapter(abc.ABC):
    family: str
    ckpt: str
    d_model: int
    n_layers: int
    layout: TokenLayout
    preprocess: Preprocess

    @abc.abstractmethod
    def hidden_states(self, pixels: torch.Tensor, layers: list[int]) -> torch.Tensor:
        """(B, 3, H, W) -> (B, len(layers), tokens, d_model) float32 residual stream after each chosen block."""

    @abc.abstractmethod
    def weights_hash(self) -> str:
        """A hash that changes whenever the weights do."""

    def resolved(self) -> str:
        """``FAMILY:CHECKPOINT`` with a checkpoint that names a local path made absolute (also the file of timm's
        ``ARCH@FILE``), so the same model given by a relative and an absolute path is one model."""
        ckpt = self.ckpt
        head, sep, tail = ckpt.rpartition("@")
        if pathlib.Path(ckpt).exists():
            ckpt = str(pathlib.Path(ckpt).resolve())
        elif sep and head and pathlib.Path(tail).exists():
            ckpt = f"{head}@{pathlib.Path(tail).resolve()}"
        return f"{self.family}:{ckpt}"

    def resolve_layers(self, layers: list[int]) -> list[int]:
        out = []
        for layer in layers:
            idx = layer + self.n_layers if layer < 0 else layer
            if not 0 <= idx < self.n_layers:
                raise errors.ConfigError(f"--layers {layer}: {self.family}:{self.ckpt} has {self.n_layers} blocks "
                                         f"(0..{self.n_layers - 1}, or -1 for the last)")
            out.append(idx)
        if len(set(out)) != len(out):
            raise errors.ConfigError(f"--layers {layers}: a layer is named twice")
        return sorted(out)


# -- the built-in ViT --------------------------------------------------------------------------------------------------
BUILTIN_PRESETS = {
    "tiny": dict(image_size=32, patch_size=8, d_model=64, depth=4, heads=4, n_registers=0),
    "small": dict(image_size=64, patch_size=8, d_model=128, depth=6, heads=4, n_registers=2),
    "base": dict(image_size=224, patch_size=16, d_model=768, depth=12, heads=12, n_registers=0),
}


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class BuiltinViT(nn.Module):
    """A plain pre-LN ViT (CLS, optional registers, patches) with weights drawn from a seed: real activations, no
    download. For the quickstart, tests and benchmarks."""

    def __init__(self, *, image_size: int, patch_size: int, d_model: int, depth: int, heads: int, n_registers: int,
                 seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.patch = nn.Conv2d(3, d_model, patch_size, patch_size)
        n_patches = (image_size // patch_size) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.registers = nn.Parameter(torch.zeros(1, n_registers, d_model))
        self.pos = nn.Parameter(torch.zeros(1, 1 + n_patches, d_model))
        self.blocks = nn.ModuleList(_Block(d_model, heads) for _ in range(depth))
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
                elif "weight" in name:
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        self.n_registers = n_registers

    def forward(self, pixels: torch.Tensor, layers: list[int]) -> torch.Tensor:
        x = self.patch(pixels).flatten(2).transpose(1, 2)
        b = x.shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1), x], dim=1) + self.pos
        x = torch.cat([x[:, :1], self.registers.expand(b, -1, -1), x[:, 1:]], dim=1)
        want = set(layers)
        outs = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in want:
                outs[i] = x
            if i >= max(layers):
                break
        return torch.stack([outs[i] for i in layers], dim=1)


class BuiltinAdapter(ModelAdapter):
    family = "builtin"

    def __init__(self, ckpt: str, device: torch.device) -> None:
        name, _, seed = ckpt.partition("@")
        if name not in BUILTIN_PRESETS:
            raise errors.ConfigError(f"--model builtin:{ckpt}: unknown preset {name!r}; choose one of "
                                     f"{', '.join(BUILTIN_PRESETS)} (optionally @SEED)")
        cfg = BUILTIN_PRESETS[name]
        self.ckpt = ckpt
        self.seed = int(seed) if seed else 0
        self.model = BuiltinViT(**cfg, seed=self.seed).to(device).eval()
        self.d_model, self.n_layers = cfg["d_model"], cfg["depth"]
        n_patches = (cfg["image_size"] // cfg["patch_size"]) ** 2
        self.layout = TokenLayout(n_cls=1, n_registers=cfg["n_registers"], n_patches=n_patches)
        self.preprocess = Preprocess(resize=cfg["image_size"], crop=cfg["image_size"])

    def hidden_states(self, pixels: torch.Tensor, layers: list[int]) -> torch.Tensor:
        return self.model(pixels, layers)

    def weights_hash(self) -> str:
        return state_dict_hash(self.model)


# -- Hugging Face transformers -----------------------------------------------------------------------------------------
_HF_CLASSES = {
    "vit": ("ViTModel", True),
    "clip": ("CLIPVisionModel", True),
    "dinov2": ("Dinov2Model", True),
    "siglip": ("SiglipVisionModel", False),
}


class HFAdapter(ModelAdapter):
    def __init__(self, family: str, ckpt: str, device: torch.device) -> None:
        from saev_ops.extras import require

        transformers = require("transformers", "hf", f"--model {family}:")

        self.family, self.ckpt = family, ckpt
        cls_name, has_cls = _HF_CLASSES[family]
        try:
            config = transformers.AutoConfig.from_pretrained(ckpt, local_files_only=True)
        except OSError as exc:
            raise errors.ConfigError(f"--model {family}:{ckpt}: no local checkpoint (saev-ops never downloads; give a "
                                     f"directory with config.json and weights): {str(exc).splitlines()[0]}") from None
        if family == "dinov2" and (getattr(config, "num_register_tokens", None) or 0) > 0:
            cls_name = "Dinov2WithRegistersModel"
        vision_cfg = getattr(config, "vision_config", None) or config
        model_cls = getattr(transformers, cls_name)
        self.model = model_cls.from_pretrained(ckpt, local_files_only=True).to(device).eval()
        self._dir = pathlib.Path(ckpt) if pathlib.Path(ckpt).is_dir() else None
        self.d_model = vision_cfg.hidden_size
        self.n_layers = vision_cfg.num_hidden_layers
        image_size = vision_cfg.image_size
        n_patches = (image_size // vision_cfg.patch_size) ** 2
        n_reg = getattr(vision_cfg, "num_register_tokens", 0) or 0
        self.layout = TokenLayout(n_cls=1 if has_cls else 0, n_registers=n_reg, n_patches=n_patches)
        mean, std = _hf_norm(ckpt, family)
        self.preprocess = Preprocess(resize=image_size, crop=image_size, mean=mean, std=std)

    def hidden_states(self, pixels: torch.Tensor, layers: list[int]) -> torch.Tensor:
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        return torch.stack([out.hidden_states[i + 1] for i in layers], dim=1)

    def weights_hash(self) -> str:
        if self._dir is not None:
            h = hashlib.sha256()
            files = sorted(p for p in self._dir.iterdir() if p.suffix in (".safetensors", ".bin"))
            for p in files:
                h.update(p.name.encode())
                with open(p, "rb") as fh:
                    while chunk := fh.read(1 << 24):
                        h.update(chunk)
            if files:
                return h.hexdigest()
        return state_dict_hash(self.model)


Triple = tuple[float, float, float]


def _hf_norm(ckpt: str, family: str) -> tuple[Triple, Triple]:
    p = pathlib.Path(ckpt) / "preprocessor_config.json"
    if p.is_file():
        cfg = json.loads(p.read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            mean, std = (float(v) for v in cfg["image_mean"]), (float(v) for v in cfg["image_std"])
            return (next(mean), next(mean), next(mean)), (next(std), next(std), next(std))
    if family == "clip":
        return (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    if family == "siglip":
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return IMAGENET_MEAN, IMAGENET_STD


def state_dict_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(t.detach().float().cpu().numpy()).tobytes())
    return h.hexdigest()


def load_model(spec: str, device: str | torch.device = "cpu") -> ModelAdapter:
    """``FAMILY:CHECKPOINT`` -> an adapter on ``device``."""
    family, sep, ckpt = spec.partition(":")
    if not sep or not ckpt:
        raise errors.ConfigError(
            f"--model {spec!r}: expected FAMILY:CHECKPOINT, e.g. builtin:tiny or vit:/models/vit-b16")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise errors.ConfigError("--device cuda: no CUDA device is available here")
    if family == "builtin":
        return BuiltinAdapter(ckpt, dev)
    if family in _HF_CLASSES:
        return HFAdapter(family, ckpt, dev)
    if family in ("timm", "open_clip"):
        from saev_ops.record.models_extra import OpenClipAdapter, TimmAdapter

        return (TimmAdapter if family == "timm" else OpenClipAdapter)(ckpt, dev)
    raise errors.ConfigError(f"--model {spec!r}: unknown family {family!r}; choose builtin, "
                             f"{', '.join(_HF_CLASSES)}, timm or open_clip")


def describe(adapter: ModelAdapter) -> dict[str, Any]:
    return {"family": adapter.family, "ckpt": adapter.ckpt, "resolved": adapter.resolved(), "d_model": adapter.d_model,
            "n_layers": adapter.n_layers,
            "weights_sha256": adapter.weights_hash(), "token_layout": vars(adapter.layout),
            "preprocess": adapter.preprocess.describe()}
