"""SAE configurations: a tagged union by architecture (``arch``), one frozen schema per family holding only the
fields that family reads, validated when built, every problem with its field.

:class:`SAEConfig` is the common base (the type every SAE's ``cfg`` has); :meth:`SAEConfig.of` builds the family's
config from flat keys (grid.yaml's, a stored config's, an imported file's), where a field only other families read is
checked for its type and left out (a ReLU entry that picks up a zipped ``k``). What of a config is a run's identity
is derived from the same declarations: a family's fields, less those marked :class:`Added` at the value that
reproduces what came before them and its :attr:`SAEConfig.REPORTING` fields."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Tag, TypeAdapter, ValidationError, model_validator
from pydantic.fields import FieldInfo

from saev_ops import errors
from saev_ops.schema import (
    FieldProblems,
    Flag,
    Integer,
    NonNegative,
    Number,
    PositiveInteger,
    Schema,
    Sizes,
    choice,
    field_problems,
)


class Added:
    """Field metadata: the field was added after runs were registered; ``before`` reproduces what came before it.
    Left out of a run's identity at that value, so runs registered before it keep their identities."""

    def __init__(self, before: Any) -> None:
        self.before = before


PURSUITS = ("mp", "omp")  # encoders that are greedy pursuits over the decoder: no encoder weights
ARCHETYPAL_ENCODERS = ("topk", "jumprelu")
BATCHTOPK_RANKS = ("value", "row-share", "row-relative")
"""How a BatchTopK SAE ranks the batch's activations (``batchtopk_rank``)."""


class SAEConfig(Schema):
    """What every family has. Build one with :meth:`of` (flat keys) or a family's class."""

    ARCH: ClassVar[str] = ""
    REPORTING: ClassVar[frozenset[str]] = frozenset({"dead_tokens"})
    """Fields that change what is reported of the family (the dead window of ``dead_frac``), not what it learns: out
    of its runs' identity."""
    arch: str = "topk"
    """relu (L1), topk (+AuxK), batchtopk, jumprelu, matryoshka (nested TopK prefixes), signed-topk, mp (matching
    pursuit: k greedy steps over the decoder's atoms, no encoder weights), omp (orthogonal matching pursuit: each step
    refits the coefficients of every chosen atom by non-negative least squares), archetypal (RA-SAE: atoms are convex
    combinations of k-means centroids of the data plus a bounded relaxation; a TopK or JumpReLU encoder). Each has
    the fields below that name it."""
    d_model: PositiveInteger
    """Input width (set from the dataset)."""
    d_sae: PositiveInteger = 16384
    """Number of latents."""
    apply_b_dec_to_input: Annotated[Flag, Added(True)] = True
    """Subtract the decoder bias from the input before encoding (saev-ops' and SAELens' default); False for SAEs
    imported from saev, whose encoder reads the input as it is."""
    dead_tokens: PositiveInteger = 10_000_000
    """A latent that has not fired on any of the last this-many training tokens counts as dead (``dead_frac``, and
    the latents AuxK revives). In tokens, not steps, so the window means the same at any batch size; `sweep submit`
    warns when it is longer than the run."""
    encoder_hidden: Annotated[Integer, Added(0)] = 0
    """The encoder: 0, one linear map (every family's default); a width h > 0, an MLP with one hidden ReLU layer of h
    units, ``pre = relu((x - b_dec) W_1 + b_1) W_enc + b_enc`` (as Overcomplete's MLP encoder; not for the pursuits,
    which have no encoder; not exportable to saev or SAELens, whose encoders are one linear map)."""

    @model_validator(mode="after")
    def _checks(self) -> SAEConfig:
        problems = self.problems()
        if problems:
            raise FieldProblems(problems)
        return self

    def problems(self) -> list[tuple[str, str]]:
        """(field, what is wrong) for what the types alone cannot say (a family adds its own)."""
        out = []
        if self.encoder_hidden < 0 or (self.encoder_hidden and self.arch in PURSUITS):
            out.append(("encoder_hidden", f"must be 0 (a linear encoder) or a width > 0 for a family with an encoder "
                        f"(not {', '.join(PURSUITS)}), got {self.encoder_hidden}"))
        return out

    @property
    def encoder_arch(self) -> str:
        """The family whose encoder and losses it trains with: its own (an archetypal SAE: its encoder's)."""
        return self.arch

    @classmethod
    def of(cls, **fields: Any) -> SAEConfig:
        """The config of ``fields["arch"]`` (default ``topk``) from flat keys: fields only other families read are
        checked for their type and left out; ConfigError listing every problem, each with its field."""
        out, problems = _parse(fields)
        if out is None:
            raise errors.ConfigError("SAE config: " + "; ".join(f"{k} {m}" for k, m in problems))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        """A stored config (a registry row's, an SAE file's): keys of stored configs that no longer exist
        (:data:`LEGACY_KEYS`) are ignored, keys no family has refused."""
        d = {k: v for k, v in d.items() if k not in LEGACY_KEYS}
        unknown = sorted(set(d) - set(FIELDS))
        if unknown:
            raise errors.ConfigError(f"SAE config: unknown keys {unknown}; valid keys: {sorted(FIELDS)}")
        return cls.of(**d)

    @staticmethod
    def problems_of(d: dict[str, Any]) -> list[tuple[str, str]]:
        """(field, what is wrong) for every problem the config of flat keys ``d`` has, without raising (known keys
        only; defaults fill in)."""
        return _parse({k: v for k, v in d.items() if k in FIELDS})[1]

    def to_dict(self) -> dict[str, Any]:
        """As stored (JSON): its family's fields."""
        d = self.model_dump()
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


class _KConfig(SAEConfig):
    """Families with a ``k``: the TopK ones keep k latents a token (or k x batch a batch), the pursuits take k greedy
    steps over the decoder's atoms."""

    k: Integer = 32
    """Active latents per token (topk, batchtopk, matryoshka, signed-topk); pursuit steps (mp: at most k active, an
    atom chosen twice counts once; omp: k distinct atoms, some coefficients may be 0)."""

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if not 0 < self.k <= self.d_sae:
            out.append(("k", f"must be in 1..d_sae ({self.d_sae}), got {self.k}"))
        return out


class AuxKConfig(_KConfig):
    """The TopK families whose dead latents the AuxK loss revives: the dead window is part of what they learn."""

    REPORTING: ClassVar[frozenset[str]] = frozenset()
    aux_k: Integer = 256
    """Dead latents used by the AuxK loss (topk, batchtopk, matryoshka, archetypal with a TopK encoder)."""
    aux_coeff: NonNegative = 1.0 / 32
    """Weight of the AuxK loss (topk, batchtopk, matryoshka, archetypal with a TopK encoder)."""


class ReLUConfig(SAEConfig):
    """ReLU with an L1 penalty."""

    ARCH: ClassVar[str] = "relu"
    arch: Literal["relu"] = "relu"
    l1_coeff: NonNegative = 1e-3
    """L1 weight (relu), scaled by decoder norms."""


class TopKConfig(AuxKConfig):
    """TopK (+ AuxK)."""

    ARCH: ClassVar[str] = "topk"
    arch: Literal["topk"] = "topk"
    topk_relu: Annotated[Flag, Added(True)] = True
    """topk: keep the k largest pre-activations only where positive (saev-ops' and SAELens' TopK); False keeps them
    as they are, negative ones included, as saev's TopK does (SAEs imported from saev)."""


class BatchTopKConfig(AuxKConfig):
    """BatchTopK (+ AuxK): k x batch activations a batch, a learned threshold at inference."""

    ARCH: ClassVar[str] = "batchtopk"
    arch: Literal["batchtopk"] = "batchtopk"
    batchtopk_rank: Annotated[str, choice(*BATCHTOPK_RANKS), Added("value")] = "value"
    """batchtopk: how the batch's k x batch activations are chosen, and at inference which pass the learned threshold.
    ``row-relative`` (new sweeps' default): each activation relative to its row's ceil(1.5 k)-th largest,
    ``relu(pre) / relu(pre)_(1.5k)``: every row keeps about k, more where its activations stand out, fewer where they
    do not; at or below TopK's held-out error at the same L0 on the planted benchmark (docs/performance.md).
    ``row-share``: by each activation's share of its row's activation norm, ``relu(pre) / ||relu(pre)||`` (new sweeps'
    default before ``row-relative``). ``value``: by the activations themselves, one threshold for every row (Bussmann
    et al. 2024; runs trained before ``row-share`` existed): the rows of largest norm take the batch's budget first,
    which on data of uneven norms trains worse dictionaries than TopK."""


class MatryoshkaConfig(AuxKConfig):
    """Matryoshka: TopK whose nested prefixes of latents each reconstruct the input."""

    ARCH: ClassVar[str] = "matryoshka"
    arch: Literal["matryoshka"] = "matryoshka"
    matryoshka_prefixes: Sizes = ()
    """Nested prefix sizes (ascending, the last < d_sae); the full width is always included."""

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        p = list(self.matryoshka_prefixes)
        if p != sorted(set(p)) or any(x <= 0 or x >= self.d_sae for x in p):
            out.append(("matryoshka_prefixes", f"must be ascending, unique and in 1..d_sae-1, got {p}"))
        return out


class SignedTopKConfig(_KConfig):
    """TopK by absolute value, signs kept."""

    ARCH: ClassVar[str] = "signed-topk"
    arch: Literal["signed-topk"] = "signed-topk"


class _JumpFields(SAEConfig):
    """JumpReLU's fields (a JumpReLU SAE's, an archetypal SAE's with a JumpReLU encoder)."""

    l0_coeff: NonNegative = 1.0
    """L0 weight (jumprelu): the loss is squared error + l0_coeff x active latents per token. Activations are scaled
    to mean norm sqrt(d_model), so one active latent costs as much as l0_coeff units of squared error; raising it
    lowers L0 (0.01 -> 10 spans dense to very sparse)."""
    jumprelu_init_threshold: Number = 0.1
    """Initial threshold, in units of the scaled activations (the JumpReLU paper's 1e-3 was for data of unit mean
    squared norm; at mean norm sqrt(d_model) it lets nearly every positive pre-activation through, like a ReLU)."""
    jumprelu_bandwidth: Number = 0.1
    """Width of the rectangle kernel of the straight-through estimator, in the same units: pre-activations within
    bandwidth/2 of the threshold carry the L0 gradient to the threshold and to the encoder."""

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.encoder_arch == "jumprelu":
            out += [(name, f"must be > 0, got {getattr(self, name)}")
                    for name in ("jumprelu_init_threshold", "jumprelu_bandwidth") if not getattr(self, name) > 0]
        return out


class JumpReLUConfig(_JumpFields):
    """JumpReLU with an L0 penalty (straight-through estimator)."""

    ARCH: ClassVar[str] = "jumprelu"
    arch: Literal["jumprelu"] = "jumprelu"


class MPConfig(_KConfig):
    """Matching pursuit (Costa et al. 2025)."""

    ARCH: ClassVar[str] = "mp"
    arch: Literal["mp"] = "mp"


class OMPConfig(_KConfig):
    """Orthogonal matching pursuit: each step refits the coefficients of every chosen atom by non-negative least
    squares."""

    ARCH: ClassVar[str] = "omp"
    arch: Literal["omp"] = "omp"


class ArchetypalConfig(AuxKConfig, _JumpFields):
    """RA-SAE (Fel et al. 2025): atoms are convex combinations of k-means centroids of the data plus a bounded
    relaxation; a TopK or JumpReLU encoder, whose fields it reads."""

    ARCH: ClassVar[str] = "archetypal"
    arch: Literal["archetypal"] = "archetypal"
    archetypal_encoder: Annotated[str, choice(*ARCHETYPAL_ENCODERS)] = "topk"
    """archetypal: the encoder, ``topk`` (with ``k``, AuxK) or ``jumprelu`` (with ``l0_coeff``, threshold and
    bandwidth)."""
    archetypal_candidates: Integer = 0
    """archetypal: how many candidate points (k-means centroids of the layer's centred activations, computed once per
    layer and stored with the sweep) the atoms are convex combinations of; 0: as many as ``d_sae``."""
    archetypal_delta: NonNegative = 1.0
    """archetypal: the largest norm of an atom's relaxation away from the candidates' convex hull, in units of the
    scaled activations (whose centred mean norm is sqrt(d_model) with ``scale_by: centred-norm``); 0: atoms stay in
    the hull."""
    topk_relu: Annotated[Flag, Added(True)] = True
    """topk: keep the k largest pre-activations only where positive (saev-ops' and SAELens' TopK); False keeps them
    as they are, negative ones included, as saev's TopK does (SAEs imported from saev)."""

    @property
    def encoder_arch(self) -> str:
        return self.archetypal_encoder

    @property
    def n_candidates(self) -> int:
        """The number of candidate points."""
        return self.archetypal_candidates or self.d_sae

    def problems(self) -> list[tuple[str, str]]:
        out = super().problems()
        if self.encoder_arch != "topk":  # k and AuxK are its TopK encoder's
            out = [p for p in out if p[0] != "k"]
        if self.archetypal_candidates < 0:
            out.append(("archetypal_candidates", f"must be >= 0 (0: as many as d_sae), got "
                        f"{self.archetypal_candidates}"))
        return out


FAMILIES: dict[str, type[SAEConfig]] = {c.ARCH: c for c in (
    ReLUConfig, TopKConfig, BatchTopKConfig, JumpReLUConfig, MatryoshkaConfig, SignedTopKConfig, MPConfig, OMPConfig,
    ArchetypalConfig)}
ARCHS = tuple(FAMILIES)
# Keys of stored configs that no longer exist; read (registry rows, SAE files) and ignored. grid.yaml refuses them.
LEGACY_KEYS = {"dead_steps": "dead_steps was replaced by dead_tokens (the dead window in training tokens)"}
# Fields whose default for new sweeps differs from what earlier runs did: (for new sweeps, what runs before it did).
# The field's default is the earlier behaviour, so every stored config without the field reads as it was trained;
# `sweep submit` gives a new sweep the new value where its grid leaves the field unset (and a sweep that already has
# runs the old one: a resubmission finds its runs).
NEW_SWEEP_DEFAULTS: dict[str, tuple[Any, Any]] = {"batchtopk_rank": ("row-relative", "value")}

def _declared() -> tuple[dict[str, FieldInfo], dict[str, TypeAdapter[Any]]]:
    """Every field some family has, as :class:`SAEConfig` or else the first family declares it, and its type with its
    validators (which check the field where a family that does not read it is given it)."""
    fields: dict[str, FieldInfo] = {}
    types: dict[str, TypeAdapter[Any]] = {}
    declaring: tuple[type[SAEConfig], ...] = (SAEConfig, *FAMILIES.values())
    for family in declaring:
        for name, field in family.model_fields.items():
            if name not in fields:
                fields[name] = field
                parts = (field.annotation, *field.metadata)
                of: Any = Annotated[parts] if field.metadata else field.annotation  # a type rebuilt from the field
                types[name] = TypeAdapter(of)
    return fields, types


FIELDS, _TYPES = _declared()


AnySAEConfig = Annotated[
    Annotated[ReLUConfig, Tag("relu")] | Annotated[TopKConfig, Tag("topk")]
    | Annotated[BatchTopKConfig, Tag("batchtopk")] | Annotated[JumpReLUConfig, Tag("jumprelu")]
    | Annotated[MatryoshkaConfig, Tag("matryoshka")] | Annotated[SignedTopKConfig, Tag("signed-topk")]
    | Annotated[MPConfig, Tag("mp")] | Annotated[OMPConfig, Tag("omp")]
    | Annotated[ArchetypalConfig, Tag("archetypal")],
    Discriminator(lambda v: v.get("arch", "topk") if isinstance(v, dict) else getattr(v, "arch", None)),
]
"""The union of the families, tagged by ``arch``: the type of a field that holds any SAE's config."""
_UNION: TypeAdapter[SAEConfig] = TypeAdapter(AnySAEConfig)


def _parse(fields: dict[str, Any]) -> tuple[SAEConfig | None, list[tuple[str, str]]]:
    """The config of flat keys, or None and every problem (field, what is wrong)."""
    arch = fields.get("arch", "topk")
    family = FAMILIES.get(arch) if isinstance(arch, str) else None
    problems: list[tuple[str, str]] = []
    if family is None:
        problems.append(("arch", f"must be one of {', '.join(ARCHS)}, got {arch!r}"))
    own = {k: v for k, v in fields.items() if family is not None and k in family.model_fields}
    for key, value in fields.items():  # the fields only other families read: their types
        if key != "arch" and key not in own and key in FIELDS:
            try:
                _TYPES[key].validate_python(value)
            except ValidationError as exc:
                problems += [(key, m) for _, m in field_problems(exc)]
    if family is None:
        return None, problems
    try:
        out = _UNION.validate_python({**own, "arch": arch})
    except ValidationError as exc:
        return None, problems + [(k.removeprefix(f"{arch}."), m) for k, m in field_problems(exc)]
    return (None, problems) if problems else (out, [])


def fields_read(sae: dict[str, Any]) -> tuple[str, ...]:
    """The SAE fields a stored config's family reads and that decide what it learns (an archetypal SAE: its own and
    its encoder's); the others stay out of a run's identity and typed parameters."""
    arch = sae.get("arch")
    family = FAMILIES.get(arch) if isinstance(arch, str) else None
    if family is None:
        return ()
    if family is ArchetypalConfig:
        encoder = encoder_arch(sae)
        return (*_ARCHETYPAL_OWN, *(f for f in fields_read({"arch": encoder}) if f not in _ARCHETYPAL_OWN)) \
            if encoder in ARCHETYPAL_ENCODERS else _ARCHETYPAL_OWN
    return tuple(name for name, field in family.model_fields.items()
                 if name not in family.REPORTING and not any(isinstance(m, Added) for m in field.metadata))


_ARCHETYPAL_OWN = ("arch", "d_model", "d_sae", "archetypal_encoder", "archetypal_candidates", "archetypal_delta")


def encoder_arch(sae: dict[str, Any]) -> Any:
    """The family whose encoder and losses a stored config trains with: its own, or an archetypal SAE's encoder."""
    return sae.get("archetypal_encoder", "topk") if sae.get("arch") == "archetypal" else sae.get("arch")


def added_fields(arch: Any) -> dict[str, Any]:
    """The fields of family ``arch`` added after runs were registered, with the value that reproduces what came
    before them (:class:`Added`)."""
    family = FAMILIES.get(arch) if isinstance(arch, str) else None
    out = {}
    for name, field in (family.model_fields.items() if family else ()):
        for m in field.metadata:
            if isinstance(m, Added):
                out[name] = m.before
    return out


def identity_fields(sae: dict[str, Any]) -> dict[str, Any]:
    """The SAE part of a run's identity: the fields its family reads (:func:`fields_read`), and the :class:`Added`
    fields it has, set to something other than what came before them."""
    read, added = fields_read(sae), added_fields(encoder_arch(sae))  # an archetypal SAE's: its encoder's
    return {k: v for k, v in sae.items() if k in read or (k in added and v != added[k])}


def sparsity_field(arch: str) -> str:
    """The field that sets an architecture's sparsity: the penalty for ReLU (l1_coeff) and JumpReLU (l0_coeff), k for
    the TopK families."""
    return {"relu": "l1_coeff", "jumprelu": "l0_coeff"}.get(arch, "k")
