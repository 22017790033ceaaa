"""Sparse autoencoders: :class:`SAEConfig` and :func:`build_sae` (ReLU, TopK, BatchTopK, JumpReLU, Matryoshka,
signed TopK), plus safetensors checkpoints (:mod:`saev_ops.sae.io`).

The torch-backed names load on first use, so reading a config (what registry-only commands do) never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saev_ops.sae.config import SAEConfig as SAEConfig

if TYPE_CHECKING:
    from saev_ops.sae.modules import SAE as SAE
    from saev_ops.sae.modules import build_sae as build_sae


def __getattr__(name: str) -> Any:
    if name in ("SAE", "build_sae"):
        from saev_ops.sae import modules

        return getattr(modules, name)
    raise AttributeError(f"module 'saev_ops.sae' has no attribute {name!r}")
