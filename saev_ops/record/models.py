"""Model adapters: load a vision transformer, preprocess for it, and return chosen blocks' residual stream.

``--model FAMILY:CHECKPOINT``:

| family | model | checkpoint |
|---|---|---|
| ``builtin`` | saev-ops' own small ViT, weights from a seed (no download) | ``tiny`` or ``small``, optional ``@SEED`` |
| ``vit`` | transformers ``ViTModel`` | a local directory or a name in the local HF cache |
| ``clip`` | transformers ``CLIPVisionModel`` | same |
| ``dinov2`` | transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` | same |
| ``siglip`` | transformers ``SiglipVisionModel`` | same |
| ``dinov3`` | transformers ``DINOv3ViTModel`` (CLS, registers, patches) | same |
| ``siglip2`` | transformers ``Siglip2VisionModel`` (NaFlex, fed a fixed square; ``--resolution``) | same |
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
from saev_ops.extras import require
from saev_ops.record.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, from_hf_config
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

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of patch tokens over the preprocessed image (square patches)."""
        h, w = self.preprocess.out_hw
        n = self.layout.n_patches
        side = math.isqrt(h * w // n) if n else 0
        if not side or (h // side) * (w // side) != n:
            raise errors.ConfigError(f"{self.family}:{self.ckpt}: {n} patches do not tile a {h}x{w} image")
        return h // side, w // side

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
# family -> (model class, has a CLS token, what its image processor does when preprocessor_config.json leaves a key out:
# the processor class's own defaults, with the square size taken from the model config's image_size)
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_HALF = (0.5, 0.5, 0.5)


def _square(n: int) -> dict[str, int]:
    return {"height": n, "width": n}


def _hf_defaults(family: str, n: int) -> dict[str, Any]:
    fixed = {"size": _square(n), "do_center_crop": False}
    cropped = {"size": {"shortest_edge": n}, "do_center_crop": True, "crop_size": _square(n)}
    return {
        "vit": {**fixed, "resample": 2, "image_mean": _HALF, "image_std": _HALF},  # ViTImageProcessor
        "clip": {**cropped, "resample": 3, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD},  # CLIPImageProcessor
        "dinov2": {**cropped, "resample": 3, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD},  # Bit...
        "siglip": {**fixed, "resample": 3, "image_mean": _HALF, "image_std": _HALF},  # SiglipImageProcessor
        "dinov3": {**fixed, "resample": 2, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD},  # DINOv3ViT...
        "siglip2": {**fixed, "resample": 2, "image_mean": _HALF, "image_std": _HALF},  # Siglip2ImageProcessor
    }[family]


_HF_CLASSES = {
    "vit": ("ViTModel", True),
    "clip": ("CLIPVisionModel", True),
    "dinov2": ("Dinov2Model", True),
    "siglip": ("SiglipVisionModel", False),
    "dinov3": ("DINOv3ViTModel", True),
    "siglip2": ("Siglip2VisionModel", False),
}
_INTERPOLATE = ("vit", "clip", "siglip")  # take interpolate_pos_encoding= for sizes other than config.image_size


class HFAdapter(ModelAdapter):
    """A transformers vision model. Preprocessing follows the checkpoint's ``preprocessor_config.json`` (resize rule,
    crop, mean/std, resampling), not ``config.image_size``: a DINOv2 checkpoint with the standard processor (short
    side 256, crop 224) records 1 + 256 tokens whatever size its position embeddings were trained at.
    ``resolution`` (``--resolution``) overrides the processor's size for models that take variable sizes; SigLIP 2
    (NaFlex) gets a fixed square of ``resolution`` (default: its ``num_patches`` as a square grid)."""

    def __init__(self, family: str, ckpt: str, device: torch.device, resolution: int | None = None) -> None:
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
        self.patch_size = int(vision_cfg.patch_size)
        if family == "siglip2":
            native = math.isqrt(int(vision_cfg.num_patches)) * self.patch_size
        else:
            native = int(vision_cfg.image_size)
        if resolution is not None and resolution % self.patch_size:
            raise errors.ConfigError(f"--resolution {resolution}: must be a multiple of the patch size "
                                     f"{self.patch_size} of {family}:{ckpt}")
        source = self._dir / "preprocessor_config.json" if self._dir is not None else None
        try:
            given = json.loads(source.read_text()) if source is not None and source.is_file() else {}
            if family == "siglip2" and resolution is None:
                resolution = native  # its processor picks a size per image; a recording needs one
            self.preprocess = from_hf_config({**_hf_defaults(family, native), **given}, default_size=native,
                                             mean=IMAGENET_MEAN, std=IMAGENET_STD, resolution=resolution)
        except (errors.ConfigError, ValueError, TypeError, KeyError) as exc:  # ValueError: a number that is not one
            raise errors.ConfigError(f"{source or family}: cannot use this image-processor config ({exc})") from None
        h, w = self.preprocess.out_hw
        if h % self.patch_size or w % self.patch_size:
            raise errors.ConfigError(f"{source or family}: images of {h}x{w} do not divide into "
                                     f"{self.patch_size}-pixel patches; give --resolution")
        self.grid = (h // self.patch_size, w // self.patch_size)
        n_reg = getattr(vision_cfg, "num_register_tokens", 0) or 0
        self.layout = TokenLayout(n_cls=1 if has_cls else 0, n_registers=n_reg, n_patches=self.grid[0] * self.grid[1])
        self._interpolate = family in _INTERPOLATE and (h, w) != (native, native)

    def hidden_states(self, pixels: torch.Tensor, layers: list[int]) -> torch.Tensor:
        if self.family == "siglip2":
            out = self.model(**siglip2_inputs(pixels, self.patch_size), output_hidden_states=True)
        elif self._interpolate:
            out = self.model(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)
        else:
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


def siglip2_inputs(pixels: torch.Tensor, patch: int) -> dict[str, torch.Tensor]:
    """(B, 3, H, W) images as SigLIP 2's NaFlex inputs: patches flattened row by row, each as (p, p, channels) as its
    image processor lays them out, all of them valid."""
    b, c, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    patches = pixels.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, -1)
    return {"pixel_values": patches, "pixel_attention_mask": torch.ones(b, gh * gw, dtype=torch.long,
                                                                        device=pixels.device),
            "spatial_shapes": torch.tensor([[gh, gw]] * b, dtype=torch.long, device=pixels.device)}


def state_dict_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(t.detach().float().cpu().numpy()).tobytes())
    return h.hexdigest()


def load_model(spec: str, device: str | torch.device = "cpu", resolution: int | None = None) -> ModelAdapter:
    """``FAMILY:CHECKPOINT`` -> an adapter on ``device``; ``resolution`` (transformers families) overrides the
    image processor's size."""
    family, sep, ckpt = spec.partition(":")
    if not sep or not ckpt:
        raise errors.ConfigError(
            f"--model {spec!r}: expected FAMILY:CHECKPOINT, e.g. builtin:tiny or vit:/models/vit-b16")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise errors.ConfigError("--device cuda: no CUDA device is available here")
    if resolution is not None and family not in _HF_CLASSES:
        raise errors.ConfigError(f"--resolution: only for the transformers families ({', '.join(_HF_CLASSES)})")
    if family == "builtin":
        return BuiltinAdapter(ckpt, dev)
    if family in _HF_CLASSES:
        return HFAdapter(family, ckpt, dev, resolution)
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
