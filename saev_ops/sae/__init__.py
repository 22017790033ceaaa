"""Sparse autoencoders: :class:`SAEConfig` and :func:`build_sae` (ReLU, TopK, BatchTopK, JumpReLU, Matryoshka,
signed TopK), plus safetensors checkpoints (:mod:`saev_ops.sae.io`)."""

from saev_ops.sae.config import SAEConfig as SAEConfig
from saev_ops.sae.modules import SAE as SAE
from saev_ops.sae.modules import build_sae as build_sae
