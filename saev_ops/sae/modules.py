"""SAE modules: shared encode/decode, one small class per activation/objective.

All share: ``pre = (x - b_dec) @ W_enc + b_enc``, ``x_hat = z @ W_dec + b_dec``, decoder rows kept at unit norm
(:meth:`SAE.normalize_decoder`, after every optimiser step, with the parallel gradient component removed before it).
``forward`` returns the reconstruction, the latents and a dict of loss terms whose ``loss`` entry is optimised.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from saev_ops.sae.config import (
    ArchetypalConfig,
    AuxKConfig,
    BatchTopKConfig,
    JumpReLUConfig,
    MatryoshkaConfig,
    MPConfig,
    OMPConfig,
    ReLUConfig,
    SAEConfig,
    SignedTopKConfig,
    TopKConfig,
)


class SAE(nn.Module):
    tokens_since_fired: torch.Tensor  # buffer: training tokens since each latent last fired

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d, w = cfg.d_model, cfg.d_sae
        w_dec = torch.randn(w, d, generator=generator)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(w))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("tokens_since_fired", torch.zeros(w, dtype=torch.long))
        if cfg.encoder_hidden:  # an MLP encoder: x -> relu(x W_1 + b_1) W_enc + b_enc
            h = cfg.encoder_hidden
            bound = (6.0 / d) ** 0.5  # Kaiming-uniform for the ReLU layer
            self.W_1 = nn.Parameter((torch.rand(d, h, generator=generator) * 2 - 1) * bound)
            self.b_1 = nn.Parameter(torch.zeros(h))
            self.W_enc = nn.Parameter(torch.randn(h, w, generator=generator) / h**0.5)

    # -- shared parts -------------------------------------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        if self.cfg.encoder_hidden:
            x = torch.relu(x @ self.W_1 + self.b_1)
        return x @ self.W_enc + self.b_enc

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def activate(self, pre: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_acts(x))

    def init_bias(self, center: torch.Tensor) -> None:
        """Set the decoder bias to the data's centre (mean or geometric median), before training."""
        with torch.no_grad():
            self.b_dec.copy_(center)

    @torch.no_grad()
    def init_from_data(self, centred: torch.Tensor, blend: float, generator: torch.Generator | None = None) -> None:
        """saev's data-point initialisation: decoder row i = ``blend`` x a centred activation + (1 - ``blend``) x a
        Kaiming-uniform random row, normalised; the encoder is its transpose. ``centred`` holds up to d_sae rows
        (activations minus their mean, in the training scale); rows beyond them keep the random part only."""
        w, d = self.W_dec.shape
        rows = torch.zeros(w, d)
        n = min(w, centred.shape[0])
        rows[:n] = centred[:n].float().cpu()
        bound = (6.0 / d) ** 0.5  # kaiming_uniform_ on a (w, d) matrix: fan_in = d
        random = (torch.rand(w, d, generator=generator) * 2 - 1) * bound
        mixed = blend * rows + (1 - blend) * random
        mixed = mixed / mixed.norm(dim=1, keepdim=True).clamp_min(1e-8)
        self.W_dec.copy_(mixed.to(self.W_dec.device))
        if "W_enc" in self._parameters and not self.cfg.encoder_hidden:  # pursuits have none; an MLP's is its own
            self.W_enc.copy_(self.W_dec.t())

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the gradient component along each decoder row (it would only change the row's norm)."""
        if self.W_dec.grad is not None:
            g = self.W_dec.grad
            g.sub_((g * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec)

    @torch.no_grad()
    def update_fired(self, z: torch.Tensor) -> None:
        fired = (z != 0).any(dim=0)
        self.tokens_since_fired += z.shape[0]
        self.tokens_since_fired[fired] = 0

    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.cfg.dead_tokens

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # SAE files and checkpoints written before the window was in tokens carry a step counter: start afresh
        legacy = state_dict.pop(prefix + "steps_since_fired", None)
        if legacy is not None and prefix + "tokens_since_fired" not in state_dict:
            state_dict[prefix + "tokens_since_fired"] = torch.zeros_like(legacy)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train_step(self, x: torch.Tensor, opt: torch.optim.Optimizer, sparsity_scale: float = 1.0,
                   grad_clip: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One optimiser step: loss, backward, drop the norm-changing gradient, clip the gradient norm to
        ``grad_clip`` (0: no clipping), step, renormalise, track firing."""
        x_hat, z, terms = self(x, sparsity_scale)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.remove_parallel_grad()
        if grad_clip > 0:
            terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.parameters(), grad_clip).detach()
        opt.step()
        self.normalize_decoder()
        self.update_fired(z)
        return x_hat, z, terms

    def recon_losses(self, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        mse = (x_hat - x).pow(2).sum(dim=-1).mean()
        return {"mse": mse}

    def forward(self, x: torch.Tensor,
                sparsity_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        pre = self.pre_acts(x)
        z = self.activate(pre)
        x_hat = self.decode(z)
        terms = self.recon_losses(x, x_hat)
        terms.update(self.extra_losses(x, x_hat, pre, z, sparsity_scale))
        terms["loss"] = self.total(terms)
        return x_hat, z, terms

    def extra_losses(self, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, z: torch.Tensor,
                     sparsity_scale: float) -> dict[str, torch.Tensor]:
        return {}

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(terms.values())  # type: ignore[return-value]  # sum starts at 0; with tensors it is a Tensor

    def auxk_loss(self, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """AuxK (Gao et al. 2024): reconstruct the residual with the top-aux_k dead latents."""
        cfg = self.cfg
        if not isinstance(cfg, AuxKConfig):
            raise TypeError(f"AuxK needs a TopK family's config, not {cfg.arch}'s")
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if n_dead == 0 or cfg.aux_coeff == 0:
            return x.new_zeros(())
        k_aux = min(cfg.aux_k, n_dead)
        masked = torch.where(dead, torch.relu(pre), torch.zeros_like(pre))
        vals, idx = masked.topk(k_aux, dim=-1)
        z_aux = torch.zeros_like(pre).scatter(-1, idx, vals)
        resid = (x - x_hat).detach()
        resid_hat = z_aux @ self.W_dec
        err = (resid_hat - resid).pow(2).sum(-1).mean()
        scale = resid.pow(2).sum(-1).mean().clamp_min(1e-8)
        return cfg.aux_coeff * err / scale


class ReLUSAE(SAE):
    cfg: ReLUConfig

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def extra_losses(self, x, x_hat, pre, z, sparsity_scale):
        l1 = (z.abs() * self.W_dec.norm(dim=1)).sum(-1).mean()
        return {"l1": self.cfg.l1_coeff * sparsity_scale * l1}


def _topk(pre: torch.Tensor, k: int, relu: bool = True) -> torch.Tensor:
    """The ``k`` largest pre-activations of each row, the others 0; negative ones set to 0 too unless not ``relu``."""
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals) if relu else vals)


class TopKSAE(SAE):
    cfg: TopKConfig | ArchetypalConfig  # an archetypal SAE's TopK encoder

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return _topk(pre, self.cfg.k, self.cfg.topk_relu)

    def extra_losses(self, x, x_hat, pre, z, sparsity_scale):
        return {"auxk": self.auxk_loss(x, x_hat, pre)}


class SignedTopKSAE(SAE):
    """Keeps the k largest-magnitude pre-activations of either sign: opposite features as opposite directions."""

    cfg: SignedTopKConfig

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        _, idx = pre.abs().topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx))


class BatchTopKSAE(SAE):
    """TopK over the whole batch (k x batch activations); at inference a learned threshold replaces the batch. What is
    ranked (``batchtopk_rank``): the activations (``value``), their share of their row's activation norm
    (``row-share``) or their size relative to their row's ceil(1.5 k)-th largest (``row-relative``), so that the
    threshold is relative to each row's own scale."""

    cfg: BatchTopKConfig

    threshold: torch.Tensor  # buffer: the running threshold used at inference (-1 until trained)

    def __init__(self, cfg: BatchTopKConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator)
        self.register_buffer("threshold", torch.tensor(-1.0))

    def rank_keys(self, acts: torch.Tensor) -> torch.Tensor:
        """What the batch's top k x batch and the threshold are taken over (``batchtopk_rank``)."""
        if self.cfg.batchtopk_rank == "row-share":
            return acts / acts.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if self.cfg.batchtopk_rank == "row-relative":  # a row with fewer positive ones than that keeps them all
            m = min(math.ceil(1.5 * self.cfg.k), acts.shape[-1])
            return acts / acts.topk(m, dim=-1).values[..., -1:].clamp_min(1e-12)
        return acts

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        acts = torch.relu(pre)
        keys = self.rank_keys(acts)
        if not self.training:
            if float(self.threshold) < 0:
                return _topk(pre, self.cfg.k)
            return torch.where(keys > self.threshold, acts, torch.zeros_like(acts))
        n_keep = min(self.cfg.k * pre.shape[0], keys.numel())
        vals, idx = keys.flatten().topk(n_keep)
        z = torch.zeros_like(acts).flatten().scatter(0, idx, acts.flatten()[idx]).view_as(acts)
        with torch.no_grad():
            positive = vals[vals > 0]
            if positive.numel():
                low = positive.min()
                self.threshold.copy_(low if float(self.threshold) < 0 else 0.99 * self.threshold + 0.01 * low)
        return z

    def extra_losses(self, x, x_hat, pre, z, sparsity_scale):
        return {"auxk": self.auxk_loss(x, x_hat, pre)}


class _StepSTE(torch.autograd.Function):
    """Heaviside(pre - threshold) with rectangle-kernel pseudo-gradients (Rajamanoharan et al. 2024) for the threshold
    and, with the opposite sign, for the pre-activations: the L0 penalty reaches the encoder too (as in Anthropic's
    2025 JumpReLU recipe), so sparsity follows ``l0_coeff`` within a few hundred steps instead of only as fast as
    Adam can move the thresholds."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        kernel = ((pre - threshold).abs() < bw / 2).to(pre.dtype) / bw
        return grad * kernel, (-grad * kernel).sum(0), None


class _JumpSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        kernel = ((pre - threshold).abs() < bw / 2).to(pre.dtype) / bw
        return grad * (pre > threshold).to(pre.dtype), (-threshold * kernel * grad).sum(0), None


class JumpReLUSAE(SAE):
    cfg: JumpReLUConfig | ArchetypalConfig  # an archetypal SAE's JumpReLU encoder

    def __init__(self, cfg: JumpReLUConfig | ArchetypalConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator)
        log_init = float(torch.log(torch.tensor(cfg.jumprelu_init_threshold)))
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), log_init))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return _JumpSTE.apply(torch.relu(pre), self.log_threshold.exp(), self.cfg.jumprelu_bandwidth)

    def extra_losses(self, x, x_hat, pre, z, sparsity_scale):
        l0 = _StepSTE.apply(torch.relu(pre), self.log_threshold.exp(), self.cfg.jumprelu_bandwidth).sum(-1).mean()
        return {"l0_penalty": self.cfg.l0_coeff * sparsity_scale * l0}


class MatryoshkaSAE(SAE):
    """TopK latents; the reconstruction loss is summed over nested prefixes of the latents, so early latents learn
    general features on their own."""

    cfg: MatryoshkaConfig

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return _topk(pre, self.cfg.k)

    def recon_losses(self, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mse": (x_hat - x).pow(2).sum(-1).mean()}

    def extra_losses(self, x, x_hat, pre, z, sparsity_scale):
        terms = {}
        for m in self.cfg.matryoshka_prefixes:
            part = z[:, :m] @ self.W_dec[:m] + self.b_dec
            terms[f"mse_prefix_{m}"] = (part - x).pow(2).sum(-1).mean()
        terms["auxk"] = self.auxk_loss(x, x_hat, pre)
        return terms


class MatchingPursuitSAE(SAE):
    """Matching pursuit (Costa et al. 2025, "From Flat to Hierarchical"): the code is built in ``k`` greedy steps over
    the decoder's unit atoms, each taking the atom most correlated with what is left of the input and its correlation
    as the coefficient (an atom may be taken again), then subtracting it: ``r0 = x - b_dec``; ``j = argmax_i <r, d_i>``,
    ``c = <r, d_j>``, ``z_j += c``, ``r -= c d_j``. The encoder is the dictionary itself: no W_enc, no b_enc.

    The argmax is taken without a graph (``k`` products of B x d_sae are not kept for backward); the coefficients
    are recomputed from the chosen atoms with gradients, so backward holds ``k`` B x d_model residuals."""

    cfg: MPConfig | OMPConfig

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator)
        del self.W_enc, self.b_enc

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.b_dec  # the first residual

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        residual = pre
        z = torch.zeros(pre.shape[0], self.cfg.d_sae, dtype=pre.dtype, device=pre.device)
        for _ in range(self.cfg.k):
            with torch.no_grad():
                idx = (residual @ self.W_dec.t()).argmax(dim=-1)
            atoms = self.W_dec[idx]
            coeff = (residual * atoms).sum(-1)
            z = z.index_put((torch.arange(len(idx), device=idx.device), idx), coeff, accumulate=True)
            residual = residual - coeff.unsqueeze(-1) * atoms
        return z


OMP_NNLS_STEPS = 10
"""Projected-gradient steps of each pursuit step's non-negative least squares (warm-started from the last step's)."""


def nnls(gram: torch.Tensor, rhs: torch.Tensor, z: torch.Tensor, steps: int) -> torch.Tensor:
    """Batched non-negative least squares ``min_{z >= 0} ||x - z A||^2`` from its normal equations, ``gram = A A^T``
    (B x s x s) and ``rhs = A x`` (B x s): ``steps`` projected-gradient steps ``z <- max(0, z - (z G - b) / L)`` from
    ``z``, with L an upper bound of G's largest eigenvalue (the least of its trace and its largest absolute row sum),
    so every step descends."""
    bound = torch.minimum(gram.diagonal(dim1=1, dim2=2).sum(1), gram.abs().sum(2).amax(1)).clamp_min(1e-12)
    for _ in range(steps):
        grad = torch.einsum("bj,bji->bi", z, gram) - rhs
        z = torch.clamp(z - grad / bound.unsqueeze(1), min=0.0)
    return z


class OrthogonalMatchingPursuitSAE(MatchingPursuitSAE):
    """Orthogonal matching pursuit with non-negative coefficients (as Overcomplete's OMP-SAE): ``k`` steps, each adding
    the atom most correlated with what is left of the input (``r = x - b_dec - z D``; an atom already chosen is not
    chosen again), then refitting the coefficients of every chosen atom by non-negative least squares
    (:func:`nnls`, warm-started). The code is computed without a graph; the dictionary learns through the
    reconstruction ``z D + b_dec``. No encoder weights, as matching pursuit: only the pursuit differs."""

    @torch.no_grad()
    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        d = self.W_dec.detach()
        rows = torch.arange(pre.shape[0], device=pre.device)
        chosen = torch.empty(pre.shape[0], 0, dtype=torch.long, device=pre.device)
        coeff = torch.empty(pre.shape[0], 0, dtype=pre.dtype, device=pre.device)
        residual = pre
        for _ in range(self.cfg.k):  # k <= d_sae (validated): every step finds an atom not yet chosen
            corr = residual @ d.t()
            corr[rows.unsqueeze(1), chosen] = -torch.inf
            chosen = torch.cat([chosen, corr.argmax(dim=1, keepdim=True)], dim=1)
            atoms = d[chosen]  # B x s x d
            coeff = nnls(atoms @ atoms.transpose(1, 2), torch.einsum("bsd,bd->bs", atoms, pre),
                         torch.cat([coeff, coeff.new_zeros(pre.shape[0], 1)], dim=1), OMP_NNLS_STEPS)
            residual = pre - torch.einsum("bs,bsd->bd", coeff, atoms)
        return torch.zeros(pre.shape[0], self.cfg.d_sae, dtype=pre.dtype, device=pre.device).scatter(1, chosen, coeff)


class _Archetypal:
    """Relaxed archetypal dictionary (Fel et al. 2025, "Archetypal SAE", eq. 4): atom i is a convex combination of
    candidate points C (n_candidates x d_model, k-means centroids of the layer's centred activations) plus a bounded
    relaxation, times a learned scale: ``D = (W @ C + Lambda) * exp(s)``, W row-stochastic (non-negative, rows summing
    to 1), ``||Lambda_i|| <= archetypal_delta``. After each optimiser step W is projected back (negative weights to 0,
    rows renormalised; a row left empty goes back to its initial candidate) and Lambda's rows clipped, in place of the
    unit-norm renormalisation of the other families. The encoder is its encoder family's (TopK or JumpReLU).

    The candidates are a buffer set by :meth:`set_candidates` (one tensor, shared by every archetypal SAE of a job, not
    saved in its state: the job loads them from the sweep's candidates file). :meth:`fused` is the same SAE as a plain
    one of the encoder's family with ``W_dec = D``: what its SAE file holds, so inference, export and `runs compare`
    read it as they read any other."""

    cfg: ArchetypalConfig
    candidates: torch.Tensor
    first_candidate: torch.Tensor  # buffer: the candidate each atom starts as (and returns to if its row empties)

    def __init__(self, cfg: ArchetypalConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator)  # type: ignore[call-arg]  # the SAE class it is mixed into
        module: Any = self
        del module.W_dec
        n, w, d = cfg.n_candidates, cfg.d_sae, cfg.d_model
        first = torch.randperm(max(n, w), generator=generator)[:w] % n
        module.register_buffer("first_candidate", first)
        module.arch_weights = nn.Parameter(torch.nn.functional.one_hot(first, n).float())
        module.relax = nn.Parameter(torch.zeros(w, d))
        module.log_scale = nn.Parameter(torch.zeros(()))
        module.register_buffer("candidates", torch.zeros(n, d), persistent=False)

    @property
    def W_dec(self) -> torch.Tensor:
        module: Any = self
        return (module.arch_weights @ self.candidates + module.relax) * module.log_scale.exp()

    @torch.no_grad()
    def set_candidates(self, candidates: torch.Tensor, init_encoder: bool = True) -> None:
        """Use ``candidates`` (kept as they are, not copied: SAEs given one tensor share it); ``init_encoder`` (before
        training; a resumed job's checkpoint replaces these): the scale so the initial atoms have mean norm 1, as the
        other families' unit rows (candidates have the data's norm: a code over them would start far too large), and
        the encoder the transpose of the atoms, each normalised."""
        if candidates.shape != self.candidates.shape:
            raise ValueError(f"candidates of shape {tuple(candidates.shape)}, expected {tuple(self.candidates.shape)}")
        module: Any = self
        module._buffers["candidates"] = candidates
        if init_encoder:
            module.log_scale.zero_()
            module.log_scale.fill_(-float(self.W_dec.norm(dim=1).mean().clamp_min(1e-8).log()))
            atoms = self.W_dec
            if not self.cfg.encoder_hidden:  # an MLP encoder keeps its own initialisation
                module.W_enc.copy_((atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-8)).t())

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        module: Any = self
        w = module.arch_weights.clamp_(min=0)
        sums = w.sum(dim=1, keepdim=True)
        empty = sums.squeeze(1) <= 0
        w.div_(sums.clamp_min(1e-12))
        if bool(empty.any()):
            w[empty] = torch.nn.functional.one_hot(self.first_candidate[empty], w.shape[1]).to(w.dtype)
        norms = module.relax.norm(dim=1, keepdim=True)
        module.relax.mul_((self.cfg.archetypal_delta / norms.clamp_min(1e-12)).clamp(max=1.0))

    def remove_parallel_grad(self) -> None:
        """Nothing to remove: the atoms' norms are free (the scale and the simplex set them)."""

    def init_from_data(self, centred: torch.Tensor, blend: float, generator: torch.Generator | None = None) -> None:
        """Nothing to do: its atoms start as data (the candidates) already."""

    @torch.no_grad()
    def fused(self) -> SAE:
        """The same SAE as a plain one of its encoder's family, the dictionary fused into ``W_dec``."""
        module: Any = self
        cfg = SAEConfig.of(**{**self.cfg.to_dict(), "arch": self.cfg.archetypal_encoder})  # its own fields left out
        plain = _CLASSES[cfg.arch](cfg)
        state = {k: v for k, v in module.state_dict().items()
                 if k not in ("arch_weights", "relax", "log_scale", "first_candidate")}
        plain.load_state_dict({**state, "W_dec": self.W_dec.detach().clone()})
        return plain.to(self.candidates.device).train(module.training)


# W_dec is a parameter in the other SAEs and computed here: every reader of it (decode, AuxK, the L1 weighting) is
# the same for both
class ArchetypalTopKSAE(_Archetypal, TopKSAE):  # type: ignore[misc]
    pass


class ArchetypalJumpReLUSAE(_Archetypal, JumpReLUSAE):  # type: ignore[misc]
    pass


_CLASSES: dict[str, type[SAE]] = {
    "relu": ReLUSAE, "topk": TopKSAE, "batchtopk": BatchTopKSAE, "jumprelu": JumpReLUSAE, "matryoshka": MatryoshkaSAE,
    "signed-topk": SignedTopKSAE, "mp": MatchingPursuitSAE, "omp": OrthogonalMatchingPursuitSAE}
_ARCHETYPAL: dict[str, type[SAE]] = {"topk": ArchetypalTopKSAE, "jumprelu": ArchetypalJumpReLUSAE}


def build_sae(cfg: SAEConfig, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    if isinstance(cfg, ArchetypalConfig):
        return _ARCHETYPAL[cfg.archetypal_encoder](cfg, g)
    return _CLASSES[cfg.arch](cfg, g)
