"""Splice SAE reconstructions back into the vision transformer they were cut from.

A forward hook on block ``layer`` replaces the block's output at the SAE's token positions by each *variant* of those
rows -- the clean rows, the layer's dataset mean (the ablation), each SAE's reconstruction -- and the rest of the model
runs on all of them. With ``shared=True`` the variants are stacked on the batch axis inside the hook, so the blocks up
to ``layer`` run once for every variant (the clean forward is shared); blocks after it treat samples independently,
which holds for the families that allow it (:data:`SHARED_FAMILIES`). Otherwise each variant runs the whole model.

The final representation is the last layer's CLS token after the model's final norm where the model has a CLS token,
else its pooled output (SigLIP's attention-pooling head); with a classification head the logits come too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from saev_ops import errors
from saev_ops.shards.format import TokenLayout

Edit = Callable[[torch.Tensor], torch.Tensor]
"""(N, d_model) rows at the SAE's positions, in the model's units -> their replacements."""
# Families whose blocks after the hooked one see nothing per-sample but the hidden states (no attention mask).
SHARED_FAMILIES = frozenset({"builtin", "vit", "clip", "dinov2", "siglip", "dinov3"})


@dataclasses.dataclass(frozen=True)
class Outputs:
    embed: torch.Tensor
    """(variants, batch, d) final representations."""
    logits: torch.Tensor | None
    """(variants, batch, classes) where the model has a classification head."""


def model_positions(stored: TokenLayout, model: TokenLayout, tokens: str) -> list[int]:
    """The model's token positions behind ``tokens`` of a recording stored with layout ``stored``: every ``--tokens``
    choice keeps each kind of token (CLS, registers, patches) whole or drops it, so stored position ``i`` is the
    model's position of the same kind and rank (a recording that dropped the CLS or the registers is not aligned
    with the model's axis)."""
    kinds = ((stored.n_cls, model.n_cls), (stored.n_registers, model.n_registers), (stored.n_patches, model.n_patches))
    if any(n not in (0, m) for n, m in kinds) or stored.n_tokens == 0:
        raise errors.ConfigError(f"the recording's token layout {stored} does not come from this model's {model}")
    out = []
    for i in stored.indices(tokens):
        if i < stored.n_cls:
            out.append(i)
        elif i < stored.n_cls + stored.n_registers:
            out.append(model.n_cls + (i - stored.n_cls))
        else:
            out.append(model.n_cls + model.n_registers + (i - stored.n_cls - stored.n_registers))
    return out


def _blocks(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The model's list of transformer blocks: the ModuleList of ``n_layers`` modules named ``layer``/``layers``/
    ``blocks``."""
    found = [m for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers
             and name.rsplit(".", 1)[-1] in ("layer", "layers", "blocks")]
    if len(found) != 1:
        raise errors.ConfigError(f"cannot find the {n_layers} transformer blocks of {type(model).__name__}")
    return found[0]


class SpliceModel:
    """The model of a recording, ready to run with edited activations. Built-in and transformers families."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self.family: str = adapter.family
        self.has_head = False
        if self.family == "builtin":
            self.model: nn.Module = adapter.model
        elif hasattr(adapter, "patch_size") and hasattr(adapter, "model"):
            self.model = self._hf_model(adapter)
        else:
            raise errors.ConfigError(f"eval splices into the built-in and transformers families, not {self.family}")
        self.blocks = _blocks(self.model, adapter.n_layers)

    def _hf_model(self, adapter: Any) -> nn.Module:
        """The checkpoint with its classification head where it has one (its base model holds the same weights as
        the recording's), else the recording's own model."""
        config = adapter.model.config
        if any(str(a).endswith("ForImageClassification") for a in (getattr(config, "architectures", None) or [])):
            import transformers

            head = transformers.AutoModelForImageClassification.from_pretrained(adapter.ckpt, local_files_only=True)
            self.has_head = True
            return head.to(next(adapter.model.parameters()).device).eval()
        return adapter.model

    def _forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.family == "builtin":
            hidden = self.model(pixels, [self.adapter.n_layers - 1])
            return hidden[:, 0, 0], None
        from saev_ops.record.models import siglip2_inputs

        captured: dict[str, Any] = {}
        base: nn.Module = getattr(self.model, "base_model")  # noqa: B009 - a transformers attribute torch's stubs do not know
        handle = base.register_forward_hook(lambda _m, _a, out: captured.__setitem__("base", out))
        try:
            if self.family == "siglip2":
                out = self.model(**siglip2_inputs(pixels, self.adapter.patch_size))
            elif getattr(self.adapter, "_interpolate", False):
                out = self.model(pixel_values=pixels, interpolate_pos_encoding=True)
            else:
                out = self.model(pixel_values=pixels)
        finally:
            handle.remove()
        b = captured["base"]
        if self.adapter.layout.n_cls:
            embed = b.last_hidden_state[:, 0]
        else:
            pooled = getattr(b, "pooler_output", None)
            embed = pooled if pooled is not None else b.last_hidden_state.mean(1)
        return embed, (out.logits if self.has_head else None)

    @torch.no_grad()
    def run(self, pixels: torch.Tensor, layer: int, positions: Sequence[int], edits: Sequence[Edit], *,
            shared: bool | None = None) -> Outputs:
        """The final representation (and logits) of ``pixels`` once per edit of the rows at ``positions`` of block
        ``layer``'s output (an edit of ``lambda x: x`` is the clean run)."""
        shared = self.family in SHARED_FAMILIES if shared is None else shared
        pos = torch.as_tensor(list(positions), device=pixels.device)
        todo: list[Sequence[Edit]] = [edits] if shared else [[e] for e in edits]
        embeds, logits = [], []
        for group in todo:
            handle = self.blocks[layer].register_forward_hook(_splicer(pos, group))
            try:
                embed, logit = self._forward(pixels)
            finally:
                handle.remove()
            embeds.append(embed.float().reshape(len(group), pixels.shape[0], -1))
            if logit is not None:
                logits.append(logit.float().reshape(len(group), pixels.shape[0], -1))
        return Outputs(torch.cat(embeds), torch.cat(logits) if logits else None)


def _splicer(pos: torch.Tensor, edits: Sequence[Edit]) -> Callable[..., Any]:
    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output
        rows = h[:, pos]
        flat = rows.reshape(-1, rows.shape[-1])
        variants = []
        for edit in edits:
            v = h.clone()
            v[:, pos] = edit(flat).reshape(rows.shape).to(h.dtype)
            variants.append(v)
        new = torch.cat(variants) if len(variants) > 1 else variants[0]
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook
