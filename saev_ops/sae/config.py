"""SAE configurations: one frozen dataclass, the architecture as a tagged field, validated when built."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from saev_ops import errors

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka", "signed-topk", "mp", "omp", "archetypal")
PURSUITS = ("mp", "omp")  # encoders that are greedy pursuits over the decoder: no encoder weights
# The SAE fields each architecture reads; the others cannot change its weights and stay out of a run's identity.
_COMMON = ("arch", "d_model", "d_sae")
_AUXK = ("aux_k", "aux_coeff", "dead_tokens")  # the AuxK loss revives dead latents
ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "relu": (*_COMMON, "l1_coeff"),
    "topk": (*_COMMON, "k", *_AUXK),
    "batchtopk": (*_COMMON, "k", *_AUXK),
    "matryoshka": (*_COMMON, "k", "matryoshka_prefixes", *_AUXK),
    "signed-topk": (*_COMMON, "k"),
    "jumprelu": (*_COMMON, "l0_coeff", "jumprelu_init_threshold", "jumprelu_bandwidth"),
    "mp": (*_COMMON, "k"),  # k pursuit steps; no encoder weights
    "omp": (*_COMMON, "k"),  # k orthogonal pursuit steps, each a non-negative least-squares refit
    "archetypal": (*_COMMON, "archetypal_encoder", "archetypal_candidates", "archetypal_delta", "k", *_AUXK,
                   "l0_coeff", "jumprelu_init_threshold", "jumprelu_bandwidth"),  # read as its encoder does
}
ARCHETYPAL_ENCODERS = ("topk", "jumprelu")


# Fields added after runs were registered: the value that reproduces what came before, and the encoder families that
# read the field (None: every family). In a run's identity only where set otherwise for a family that reads it, so
# runs registered before the field existed keep their identities.
ADDED_FIELDS: dict[str, tuple[Any, tuple[str, ...] | None]] = {
    "apply_b_dec_to_input": (True, None), "encoder_hidden": (0, None), "topk_relu": (True, ("topk",)),
    "batchtopk_rank": ("value", ("batchtopk",))}


def encoder_arch(sae: dict[str, Any]) -> Any:
    """The family whose encoder and losses a config trains with: its own, or an archetypal SAE's encoder."""
    return sae.get("archetypal_encoder", "topk") if sae.get("arch") == "archetypal" else sae.get("arch")


def fields_read(sae: dict[str, Any]) -> tuple[str, ...]:
    """The SAE fields a config's architecture reads (an archetypal SAE: those of its encoder); the others cannot
    change its weights and stay out of a run's identity and typed parameters."""
    arch = sae.get("arch")
    if arch == "archetypal":
        own = ("archetypal_encoder", "archetypal_candidates", "archetypal_delta")
        return (*_COMMON, *own, *(f for f in ARCH_FIELDS.get(encoder_arch(sae), ()) if f not in _COMMON))
    return ARCH_FIELDS.get(arch, ()) if isinstance(arch, str) else ()


def identity_fields(sae: dict[str, Any]) -> dict[str, Any]:
    """The SAE part of a run's identity: the fields its architecture reads, and the :data:`ADDED_FIELDS` set to
    something other than what came before them, for a family that reads them."""
    read, family = fields_read(sae), encoder_arch(sae)

    def changed(key: str, value: Any) -> bool:
        before, readers = ADDED_FIELDS[key]
        return value != before and (readers is None or family in readers)

    return {k: v for k, v in sae.items() if k in read or (k in ADDED_FIELDS and changed(k, v))}


def sparsity_field(arch: str) -> str:
    """The field that sets an architecture's sparsity: the penalty for ReLU (l1_coeff) and JumpReLU (l0_coeff), k for
    the TopK families."""
    return {"relu": "l1_coeff", "jumprelu": "l0_coeff"}.get(arch, "k")


BATCHTOPK_RANKS = ("value", "row-share")
# Fields whose default for new sweeps differs from what earlier runs did: (for new sweeps, what runs before it did).
# The dataclass default is the earlier behaviour, so every stored config without the field reads as it was trained;
# `sweep submit` gives a new sweep the new value where its grid leaves the field unset (and a sweep that already has
# runs the old one: a resubmission finds its runs).
NEW_SWEEP_DEFAULTS: dict[str, tuple[Any, Any]] = {"batchtopk_rank": ("row-share", "value")}

_INTS = ("d_model", "d_sae", "k", "aux_k", "dead_tokens", "archetypal_candidates", "encoder_hidden")
_FLOATS = ("l1_coeff", "l0_coeff", "jumprelu_init_threshold", "jumprelu_bandwidth", "aux_coeff", "archetypal_delta")
# Keys of stored configs that no longer exist; read (registry rows, SAE files) and ignored. grid.yaml refuses them.
LEGACY_KEYS = {"dead_steps": "dead_steps was replaced by dead_tokens (the dead window in training tokens)"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAEConfig:
    arch: str = "topk"
    """relu (L1), topk (+AuxK), batchtopk, jumprelu, matryoshka (nested TopK prefixes), signed-topk, mp (matching
    pursuit: k greedy steps over the decoder's atoms, no encoder weights), omp (orthogonal matching pursuit: each step
    refits the coefficients of every chosen atom by non-negative least squares), archetypal (RA-SAE: atoms are convex
    combinations of k-means centroids of the data plus a bounded relaxation; a TopK or JumpReLU encoder)."""
    d_model: int
    """Input width (set from the dataset)."""
    d_sae: int = 16384
    """Number of latents."""
    k: int = 32
    """Active latents per token (topk, batchtopk, matryoshka, signed-topk); pursuit steps (mp: at most k active, an
    atom chosen twice counts once; omp: k distinct atoms, some coefficients may be 0)."""
    l1_coeff: float = 1e-3
    """L1 weight (relu), scaled by decoder norms."""
    l0_coeff: float = 1.0
    """L0 weight (jumprelu): the loss is squared error + l0_coeff x active latents per token. Activations are scaled
    to mean norm sqrt(d_model), so one active latent costs as much as l0_coeff units of squared error; raising it
    lowers L0 (0.01 -> 10 spans dense to very sparse)."""
    jumprelu_init_threshold: float = 0.1
    """Initial threshold, in units of the scaled activations (the JumpReLU paper's 1e-3 was for data of unit mean
    squared norm; at mean norm sqrt(d_model) it lets nearly every positive pre-activation through, like a ReLU)."""
    jumprelu_bandwidth: float = 0.1
    """Width of the rectangle kernel of the straight-through estimator, in the same units: pre-activations within
    bandwidth/2 of the threshold carry the L0 gradient to the threshold and to the encoder."""
    encoder_hidden: int = 0
    """The encoder: 0, one linear map (every family's default); a width h > 0, an MLP with one hidden ReLU layer of h
    units, ``pre = relu((x - b_dec) W_1 + b_1) W_enc + b_enc`` (as Overcomplete's MLP encoder; not for the pursuits,
    which have no encoder; not exportable to saev or SAELens, whose encoders are one linear map)."""
    archetypal_encoder: str = "topk"
    """archetypal: the encoder, ``topk`` (with ``k``, AuxK) or ``jumprelu`` (with ``l0_coeff``, threshold and
    bandwidth)."""
    archetypal_candidates: int = 0
    """archetypal: how many candidate points (k-means centroids of the layer's centred activations, computed once per
    layer and stored with the sweep) the atoms are convex combinations of; 0: as many as ``d_sae``."""
    archetypal_delta: float = 1.0
    """archetypal: the largest norm of an atom's relaxation away from the candidates' convex hull, in units of the
    scaled activations (whose centred mean norm is sqrt(d_model) with ``scale_by: centred-norm``); 0: atoms stay in
    the hull."""
    aux_k: int = 256
    """Dead latents used by the AuxK loss (topk, batchtopk, matryoshka)."""
    aux_coeff: float = 1.0 / 32
    """Weight of the AuxK loss (topk, batchtopk, matryoshka)."""
    dead_tokens: int = 10_000_000
    """A latent that has not fired on any of the last this-many training tokens counts as dead (``dead_frac``, AuxK).
    In tokens, not steps, so the window means the same at any batch size; `sweep submit` warns when it is longer than
    the run."""
    matryoshka_prefixes: tuple[int, ...] = ()
    """Nested prefix sizes (ascending, the last < d_sae); the full width is always included."""
    apply_b_dec_to_input: bool = True
    """Subtract the decoder bias from the input before encoding (saev-ops' and SAELens' default); False for SAEs
    imported from saev, whose encoder reads the input as it is."""
    batchtopk_rank: str = "value"
    """batchtopk: how the batch's k x batch activations are chosen. ``row-share`` (new sweeps' default): by each
    activation's share of its row's activation norm, ``relu(pre) / ||relu(pre)||``, and at inference a latent fires
    where that share passes the learned threshold; rows of large norm no longer take the batch's budget first, which
    on data of uneven norms trained worse dictionaries than TopK (docs/performance.md). ``value``: by the activations
    themselves, one threshold for every row (Bussmann et al. 2024; runs trained before ``row-share`` existed)."""
    topk_relu: bool = True
    """topk: keep the k largest pre-activations only where positive (saev-ops' and SAELens' TopK); False keeps them
    as they are, negative ones included, as saev's TopK does (SAEs imported from saev)."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise errors.ConfigError("SAE config: " + "; ".join(f"{k} {msg}" for k, msg in problems))

    def problems(self) -> list[tuple[str, str]]:
        """(field, what is wrong) for every invalid value; empty when the config is sound."""
        out = []
        if self.arch not in ARCHS:
            out.append(("arch", f"must be one of {', '.join(ARCHS)}, got {self.arch!r}"))
        for name in _INTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                out.append((name, f"must be an integer, got {value!r}"))
        for name in _FLOATS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                out.append((name, f"must be a finite number, got {value!r}"))
        for name in ("apply_b_dec_to_input", "topk_relu"):
            if not isinstance(getattr(self, name), bool):
                out.append((name, f"must be true or false, got {getattr(self, name)!r}"))
        if self.batchtopk_rank not in BATCHTOPK_RANKS:
            out.append(("batchtopk_rank", f"must be one of {', '.join(BATCHTOPK_RANKS)}, got {self.batchtopk_rank!r}"))
        if out:
            return out  # the comparisons below need numbers
        for name in ("d_model", "d_sae", "dead_tokens"):
            if getattr(self, name) <= 0:
                out.append((name, f"must be > 0, got {getattr(self, name)}"))
        if sparsity_field(self.encoder_arch) == "k" and not 0 < self.k <= self.d_sae:
            out.append(("k", f"must be in 1..d_sae ({self.d_sae}), got {self.k}"))
        if self.arch == "matryoshka":
            p = list(self.matryoshka_prefixes)
            if p != sorted(set(p)) or any(x <= 0 or x >= self.d_sae for x in p):
                out.append(("matryoshka_prefixes", f"must be ascending, unique and in 1..d_sae-1, got {p}"))
        out += self._encoder_problems()
        for name in ("l1_coeff", "l0_coeff", "aux_coeff", "archetypal_delta"):
            if getattr(self, name) < 0:
                out.append((name, f"must be >= 0, got {getattr(self, name)}"))
        for name in ("jumprelu_init_threshold", "jumprelu_bandwidth"):
            if self.encoder_arch == "jumprelu" and not getattr(self, name) > 0:
                out.append((name, f"must be > 0, got {getattr(self, name)}"))
        return out

    def _encoder_problems(self) -> list[tuple[str, str]]:
        """The encoder's own fields: an MLP's width, an archetypal SAE's encoder and candidates."""
        out = []
        if self.encoder_hidden < 0 or (self.encoder_hidden and self.arch in PURSUITS):
            out.append(("encoder_hidden", f"must be 0 (a linear encoder) or a width > 0 for a family with an encoder "
                        f"(not {', '.join(PURSUITS)}), got {self.encoder_hidden}"))
        if self.arch != "archetypal":
            return out
        if self.archetypal_encoder not in ARCHETYPAL_ENCODERS:
            out.append(("archetypal_encoder", f"must be one of {', '.join(ARCHETYPAL_ENCODERS)}, got "
                        f"{self.archetypal_encoder!r}"))
        if self.archetypal_candidates < 0:
            out.append(("archetypal_candidates", f"must be >= 0 (0: as many as d_sae), got "
                        f"{self.archetypal_candidates}"))
        return out

    @property
    def encoder_arch(self) -> str:
        """The architecture whose encoder and losses it trains with (:func:`encoder_arch`)."""
        return str(encoder_arch({"arch": self.arch, "archetypal_encoder": self.archetypal_encoder}))

    @property
    def n_candidates(self) -> int:
        """archetypal: the number of candidate points."""
        return self.archetypal_candidates or self.d_sae

    @classmethod
    def problems_of(cls, d: dict[str, Any]) -> list[tuple[str, str]]:
        """:meth:`problems` of the config ``d`` would make, without raising (known keys only; defaults fill in)."""
        obj = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            object.__setattr__(obj, f.name, d.get(f.name, f.default))
        if isinstance(obj.matryoshka_prefixes, list):
            object.__setattr__(obj, "matryoshka_prefixes", tuple(obj.matryoshka_prefixes))
        try:
            return obj.problems()
        except TypeError as exc:  # a value of the wrong type (a string for k, ...)
            return [("sae", f"a value has the wrong type ({exc})")]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["matryoshka_prefixes"] = list(self.matryoshka_prefixes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in LEGACY_KEYS}  # configs stored before the key was replaced
        unknown = sorted(set(d) - names)
        if unknown:
            raise errors.ConfigError(f"SAE config: unknown keys {unknown}; valid keys: {sorted(names)}")
        d = dict(d)
        if "matryoshka_prefixes" in d:
            d["matryoshka_prefixes"] = tuple(d["matryoshka_prefixes"])
        try:
            return cls(**d)
        except TypeError as exc:
            raise errors.ConfigError(f"SAE config: {exc}") from None
