"""Optional model adapters for ``timm`` and ``open_clip`` vision transformers (extras: ``timm``, ``open-clip``).

``--model timm:CHECKPOINT`` and ``--model open_clip:CHECKPOINT``, where CHECKPOINT is one of

- a local directory saved the library's Hub way (timm: ``config.json`` + ``model.safetensors``; open_clip:
  ``open_clip_config.json`` + ``open_clip_model.safetensors``),
- ``hf-hub:ORG/REPO``, read from the local Hugging Face cache only (``local_files_only``; saev-ops never downloads),
- ``ARCH@FILE``: a library architecture name and a weights file, e.g. ``ViT-B-16@/models/openai-b16.pt``.

Both libraries import torchvision; where it does not import beside the installed torch, the adapter says so in one
line instead of failing deep inside an import. Layer ``i`` is the output of transformer block ``i`` (0-based), read by
a forward hook, and the forward pass stops after the deepest requested block.
"""

from __future__ import annotations

import functools
import importlib
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from saev_ops import errors
from saev_ops.record.models import ModelAdapter, state_dict_hash
from saev_ops.record.preprocess import Preprocess
from saev_ops.shards.format import TokenLayout


class _Enough(Exception):
    """Raised by the hook after the deepest requested block, to skip the rest of the network."""


def blocks_output(blocks: Sequence[nn.Module], layers: list[int], run: Callable[[], Any],
                  to_nld: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """Run ``run()`` with hooks on ``blocks`` and return (B, len(layers), tokens, d) from the chosen blocks' outputs."""
    wanted, last = set(layers), max(layers)
    outs: dict[int, torch.Tensor] = {}

    def hook(i: int) -> Callable[..., None]:
        def capture(_module: nn.Module, _inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if i in wanted:
                outs[i] = to_nld(out).float()
            if i == last:
                raise _Enough

        return capture

    handles = [blocks[i].register_forward_hook(hook(i)) for i in range(last + 1)]
    try:
        run()
    except _Enough:
        pass
    finally:
        for h in handles:
            h.remove()
    return torch.stack([outs[i] for i in layers], dim=1)


def import_optional(family: str, module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as exc:  # torchvision mismatches raise RuntimeError, not ImportError
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise errors.ConfigError(
            f"--model {family}:...: {module} does not import here ({type(exc).__name__}: {first}); "
            f"install saev-ops[{extra}] with a torchvision that matches your torch") from None


def local_source(family: str, ckpt: str) -> str:
    """``hf-hub:REPO`` -> the cached snapshot directory; a directory -> itself (absolute). Never downloads."""
    if ckpt.startswith("hf-hub:"):
        from huggingface_hub import snapshot_download

        repo = ckpt[len("hf-hub:"):]
        try:
            return snapshot_download(repo, local_files_only=True)
        except Exception as exc:  # LocalEntryNotFoundError and friends
            raise errors.ConfigError(f"--model {family}:{ckpt}: not in the local Hugging Face cache (saev-ops never "
                                     f"downloads; fetch it once with huggingface-cli download {repo}): "
                                     f"{type(exc).__name__}") from None
    path = pathlib.Path(ckpt).expanduser()
    if not path.is_dir():
        raise errors.ConfigError(f"--model {family}:{ckpt}: expected a local directory, hf-hub:ORG/REPO in the local "
                                 "cache, or ARCH@WEIGHTS_FILE")
    return str(path.resolve())


def _split_arch(family: str, ckpt: str) -> tuple[str, str] | None:
    arch, sep, weights = ckpt.partition("@")
    if not sep or ckpt.startswith("hf-hub:") or "/" in arch:
        return None
    if not pathlib.Path(weights).expanduser().is_file():
        raise errors.ConfigError(f"--model {family}:{ckpt}: weights file {weights!r} does not exist")
    return arch, str(pathlib.Path(weights).expanduser())


def build_model(family: str, ckpt: str, from_weights: Callable[[str, str], Any],
                from_dir: Callable[[str], Any]) -> Any:
    """``ARCH@WEIGHTS`` -> ``from_weights(arch, file)``; a directory or cached ``hf-hub:`` repo -> ``from_dir(path)``.
    Our own checks fail first; whatever the library raises becomes one line naming the checkpoint."""
    arch = _split_arch(family, ckpt)
    if arch is not None:
        build = functools.partial(from_weights, *arch)
    else:
        build = functools.partial(from_dir, local_source(family, ckpt))  # its own errors come first, unwrapped
    try:
        return build()
    except Exception as exc:  # the libraries raise RuntimeError/ValueError/FileNotFoundError/...
        raise errors.ConfigError(f"--model {family}:{ckpt}: {family} could not build it: {exc}") from None


def _resample(name: Any) -> str:
    return "bilinear" if str(name).lower() == "bilinear" else "bicubic"


class TimmAdapter(ModelAdapter):
    """timm ``VisionTransformer``-style models (a ``blocks`` list, CLS/register prefix tokens, ``patch_embed``)."""

    family = "timm"

    def __init__(self, ckpt: str, device: torch.device) -> None:
        timm = import_optional("timm", "timm", "timm")
        self.ckpt = ckpt
        model = build_model(
            "timm", ckpt,
            lambda arch, weights: timm.create_model(arch, pretrained=False, num_classes=0, checkpoint_path=weights),
            lambda path: timm.create_model("local-dir:" + path, pretrained=True, num_classes=0))
        if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
            raise errors.ConfigError(
                f"--model timm:{ckpt}: {type(model).__name__} is not a ViT (no blocks/patch_embed)")
        self.model = model.to(device).eval()
        self.n_layers = len(model.blocks)
        self.d_model = int(model.embed_dim)
        n_cls = 1 if getattr(model, "has_class_token", getattr(model, "cls_token", None) is not None) else 0
        n_prefix = int(getattr(model, "num_prefix_tokens", n_cls))
        grid = tuple(model.patch_embed.grid_size)
        self.layout = TokenLayout(n_cls=n_cls, n_registers=n_prefix - n_cls, n_patches=int(grid[0] * grid[1]))
        cfg = model.pretrained_cfg
        size = int(cfg.get("input_size", (3, 224, 224))[-1])
        crop_pct = float(cfg.get("crop_pct") or 1.0)
        self.preprocess = Preprocess(resize=int(size / crop_pct), crop=size, mean=tuple(cfg.get("mean")),
                                     std=tuple(cfg.get("std")), resample=_resample(cfg.get("interpolation")))

    def hidden_states(self, pixels: torch.Tensor, layers: list[int]) -> torch.Tensor:
        return blocks_output(self.model.blocks, layers, lambda: self.model.forward_features(pixels))

    def weights_hash(self) -> str:
        return state_dict_hash(self.model)


class OpenClipAdapter(ModelAdapter):
    """The image tower of an open_clip CLIP model with open_clip's own ``VisionTransformer`` (not a timm tower)."""

    family = "open_clip"

    def __init__(self, ckpt: str, device: torch.device) -> None:
        open_clip = import_optional("open_clip", "open_clip", "open-clip")
        self.ckpt = ckpt
        model = build_model("open_clip", ckpt, lambda arch, weights: open_clip.create_model(arch, pretrained=weights),
                            lambda path: open_clip.create_model("local-dir:" + path))
        visual = model.visual
        tower = getattr(visual, "transformer", None)
        if tower is None or not hasattr(tower, "resblocks") or not hasattr(visual, "conv1"):
            raise errors.ConfigError(f"--model open_clip:{ckpt}: its image tower {type(visual).__name__} is not "
                                     "open_clip's VisionTransformer (timm towers: use --model timm:)")
        self.visual = visual.to(device).eval()
        self._nld = (lambda t: t) if getattr(tower, "batch_first", True) else (lambda t: t.transpose(0, 1))
        self.n_layers = len(tower.resblocks)
        self.d_model = int(visual.conv1.out_channels)
        grid = tuple(visual.grid_size)
        self.layout = TokenLayout(n_cls=1, n_registers=0, n_patches=int(grid[0] * grid[1]))
        pp = open_clip.get_model_preprocess_cfg(model)
        size = pp.get("size", visual.image_size)
        size = int(size if isinstance(size, int) else size[-1])
        self.preprocess = Preprocess(resize=size, crop=size, mean=tuple(pp["mean"]), std=tuple(pp["std"]),
                                     resample=_resample(pp.get("interpolation")))

    def hidden_states(self, pixels: torch.Tensor, layers: list[int]) -> torch.Tensor:
        return blocks_output(self.visual.transformer.resblocks, layers, lambda: self.visual(pixels), self._nld)

    def weights_hash(self) -> str:
        return state_dict_hash(self.visual)
