"""A run's config, owned here, below everything that stores or trains it: :class:`RunConfig` (the SAE's config, the
per-run keys of :class:`RunKeys` and the ``train:`` settings of :class:`TrainSettings`) is what grid expansion
produces, the registry stores (:meth:`RunConfig.stored`, with its identity and typed parameters) and the training job
reads back (:meth:`RunConfig.from_stored`). What of a config is the run's identity (:func:`run_identity`), its typed
parameters (:data:`PARAMS`, :func:`params_of`) and the settings whose defaults changed (:data:`ADDED_SETTINGS`,
:data:`NEW_SWEEP_SETTINGS`) are defined once, here. Torch-free, and imported by the registry, the sweeps and the
trainer alike (downwards)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from saev_ops import errors, tokens
from saev_ops.sae.config import FAMILIES, AnySAEConfig, SAEConfig, fields_read, identity_fields
from saev_ops.schema import Integer, Positive, Schema, choice, field_problems

Selection = Annotated[str, choice(*tokens.SELECTIONS, *tokens.OLD_NAMES, listed=tokens.SELECTIONS)]
"""A token selection's name (an old one too: read as its current name, :func:`saev_ops.tokens.canonical`)."""


class RunKeys(Schema):
    """The keys of a run that are not its SAE's config: its learning rate, seed, and which activations it trains on.
    Their defaults and descriptions (grid.yaml's per-run keys beside the SAE's fields); the sweep's validation checks
    each value with its key and line."""

    lr: Positive = 4e-4
    """Adam's learning rate (peak, after warm-up)."""
    seed: Integer = 0
    """Seed of the SAE's initialisation (the data order is ``train.seed``)."""
    layer: Integer = -1
    """Recorded layer the SAE reads (``-1``: the last recorded)."""
    tokens: Selection = "patches"
    """Tokens the SAE reads, a selection of :data:`saev_ops.tokens.SELECTIONS` (``cls+patches``, ``patches``, ``cls``,
    ``special``, ``all``; ``no-registers`` is read as ``cls+patches``)."""


RUN_KEY_DEFAULTS: dict[str, Any] = RunKeys().model_dump()


class TrainSettings(Schema):
    """Settings shared by every run of a job (they share one pass over the data): the ``train:`` section of grid.yaml
    and the ``train`` part of a stored run config."""

    batch_size: int = Field(4096, gt=0)
    """Patches per step."""
    n_tokens: int = Field(1_000_000, gt=0)
    """Patches each SAE trains on (steps = n_tokens // batch_size)."""
    seed: int = 0
    """Data order seed."""
    lr_warmup_steps: int = Field(100, ge=0)
    """Steps of linear learning-rate warm-up."""
    lr_decay: Literal["cosine", "linear", "none"] = "cosine"
    """cosine or linear decay to 0 after warm-up, or none."""
    sparsity_warmup_steps: int = Field(100, ge=0)
    """Steps over which the sparsity penalty ramps up."""
    grad_clip: float = Field(0.0, ge=0)
    """Largest gradient norm over each SAE's parameters, clipped before every step (0: no clipping; saev uses 1)."""
    data_init_blend: float = Field(0.0, ge=0, le=1)
    """Initialise each SAE's decoder rows (and the encoder as their transpose) as this blend of centred activations
    drawn from the dataset and random directions, then normalised (saev's ``reinit_blend``, 0.8 there; 0: random
    unit rows)."""
    log_every: int = Field(50, gt=0)
    """Steps between metric reports."""
    val_dataset: str | None = None
    """Registry name of a held-out dataset (other images, same model, layers, preprocessing and token layout; set by
    grid.yaml's top-level ``val_dataset:``). Every SAE is evaluated on a fixed sample of it every ``eval_every`` steps
    and at the end; the results are the ``val/...`` metric keys (:mod:`saev_ops.sae.evaluate`)."""
    eval_every: int = Field(1000, gt=0)
    """Steps between held-out evaluations (with a ``val_dataset``)."""
    val_tokens: int = Field(16384, gt=0)
    """Rows of the held-out sample: the same rows at every evaluation, drawn with a fixed seed."""
    ckpt_every: int = Field(500, gt=0)
    """Steps between checkpoints."""
    device: str = "cpu"
    """Where the SAEs train (cpu, cuda, cuda:1)."""
    buffer_mb: float = Field(6144.0, gt=0)
    """Shuffled loader groups, in MiB of page cache (only as much as the dataset needs; the loader's own memory is
    the batches in flight); sets how well batches mix: the default gives more distinct examples per batch than
    saev's reservoir (docs/performance.md). Part of a run's
    identity: it sets the data order (it was 1,024 before; a resubmitted sweep keeps what it was first given). The
    loader library's own default, ``ShuffledConfig.buffer_mb``, is the same (a test keeps them equal)."""
    scale_by: Literal["norm", "centred-norm"] = "norm"
    """What the activations are scaled by before the SAEs see them (the scale is saved with each SAE, so inference
    and export use it): ``centred-norm`` (new sweeps' default) makes the mean norm of the activations minus their mean
    sqrt(d_model), measured on a fixed sample of the training rows; ``norm`` makes the mean norm of the activations
    themselves sqrt(d_model) (runs trained before ``centred-norm`` existed). A ViT's activations are mostly their
    mean, which the decoder bias takes; what the latents reconstruct is the rest, so with ``norm`` the penalties and
    thresholds of ReLU and JumpReLU (``l1_coeff``, ``l0_coeff``, ``jumprelu_init_threshold``, bandwidth) meant
    something else on every dataset."""
    heartbeat_s: float = Field(30.0, ge=0)
    """Seconds between heartbeats to the registry (0: every step)."""

    @property
    def n_steps(self) -> int:
        return max(1, self.n_tokens // self.batch_size)


# Train settings that change how a run is carried out or reported, not what it learns: out of its identity.
RUN_ONLY_SETTINGS = frozenset({"device", "log_every", "ckpt_every", "heartbeat_s", "val_dataset", "eval_every",
                               "val_tokens"})
# Settings added after runs were registered, with the value that reproduces what came before: left out of the identity
# at that value, so a resubmitted sweep finds its earlier runs.
ADDED_SETTINGS: dict[str, Any] = {"grad_clip": 0.0, "data_init_blend": 0.0, "scale_by": "norm"}
# Settings whose default for new sweeps differs from what earlier runs did (their field default, kept for stored
# configs): `sweep submit` gives a new sweep this value where its grid leaves the setting unset.
NEW_SWEEP_SETTINGS: dict[str, Any] = {"scale_by": "centred-norm"}


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What determines a run's result, hashed into its identity (:func:`saev_ops.registry.config_hash`): the config
    without the settings of :data:`RUN_ONLY_SETTINGS` and without SAE fields its architecture does not read
    (:func:`saev_ops.sae.config.identity_fields`). So the same sweep resubmitted on ``device: cuda`` finds its runs,
    and a ReLU entry needs no ``k``."""

    out = dict(config)
    sae = config.get("sae")
    if isinstance(sae, dict) and sae.get("arch") in FAMILIES:
        out["sae"] = identity_fields(sae)
    if isinstance(config.get("tokens"), str) and config["tokens"] in {*tokens.SELECTIONS, *tokens.OLD_NAMES}:
        out["tokens"] = tokens.identity_name(config["tokens"])  # one identity whichever name the grid used
    train = config.get("train")
    if isinstance(train, dict):
        out["train"] = {k: v for k, v in train.items() if k not in RUN_ONLY_SETTINGS
                        and not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])}
    return out


def run_config(sae: dict[str, Any], lr: float, seed: int, layer: int, tokens: str,
               settings: TrainSettings) -> dict[str, Any]:
    """The full config of a run as stored in the registry (and hashed into its identity)."""
    return {"sae": sae, "lr": lr, "seed": seed, "layer": layer, "tokens": tokens,
            "train": settings.model_dump()}


class RunConfig(RunKeys):
    """One run's config, typed: its SAE's config, the per-run keys of :class:`RunKeys` and the train settings its
    job shares. What grid expansion produces (:meth:`from_entry`), the registry stores (:meth:`stored`, hashed by
    :meth:`identity`, its typed columns :meth:`params`) and the training job reads (in the job spec as it is, or from
    a registered run's row by :meth:`from_stored`). A new per-run key is a field of :class:`RunKeys`, a new SAE
    hyperparameter a field of the family that reads it (:mod:`saev_ops.sae.config`; every family's, a field of
    :class:`~saev_ops.sae.config.SAEConfig`), a new setting shared by a job's runs a field of :class:`TrainSettings`;
    a typed column of the registry's ``run_params`` also an entry of :data:`PARAMS` and a migration."""

    sae: AnySAEConfig
    train: TrainSettings

    @classmethod
    def from_entry(cls, entry: dict[str, Any], d_model: int, train: TrainSettings) -> RunConfig:
        """An expanded grid entry (the SAE's fields beside lr, seed, layer and tokens; checked with its lines by
        :func:`entry_problems` when the grid was read) bound to a dataset of width ``d_model``; ConfigError naming
        every problem of one that was not."""
        problems = run_key_problems(entry)
        if problems:
            raise errors.ConfigError("; ".join(f"{k}: {m}" for k, m in problems))
        sae = {k: v for k, v in entry.items() if k not in RUN_KEY_DEFAULTS}
        return cls(sae=SAEConfig.from_dict({**sae, "d_model": d_model}), lr=float(entry["lr"]),
                   seed=int(entry["seed"]), layer=int(entry["layer"]), tokens=tokens.canonical(entry["tokens"]),
                   train=train)

    @classmethod
    def from_stored(cls, config: dict[str, Any]) -> RunConfig:
        """The config a registered (trained) run stored; ConfigError for one that is not (an imported SAE's)."""
        missing = [k for k in ("sae", *RUN_KEY_DEFAULTS, "train") if k not in config]
        if missing:
            raise errors.ConfigError(f"a stored run config without {', '.join(missing)} (an imported SAE's?) cannot "
                                     "be trained")
        return cls(sae=SAEConfig.from_dict(config["sae"]), lr=float(config["lr"]), seed=int(config["seed"]),
                   layer=int(config["layer"]), tokens=tokens.canonical(config["tokens"]),
                   train=TrainSettings.model_validate(config["train"]))

    def stored(self) -> dict[str, Any]:
        """As the registry stores it (JSON)."""
        return run_config(self.sae.to_dict(), self.lr, self.seed, self.layer, self.tokens, self.train)

    def identity(self) -> dict[str, Any]:
        """What determines its result (:func:`run_identity`), hashed into the run's identity."""
        return run_identity(self.stored())

    def params(self) -> dict[str, Any]:
        """Its typed parameters (:func:`params_of`), the registry's ``run_params`` row."""
        return params_of(self.stored())


def entry_problems(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, what is wrong) for one expanded grid entry, all of them: the per-run keys and the SAE's fields."""
    sae = {k: v for k, v in entry.items() if k not in RUN_KEY_DEFAULTS}
    return run_key_problems(entry) + [(k, m) for k, m in SAEConfig.problems_of({**sae, "d_model": 1}) if k != "d_model"]


def run_key_problems(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, what is wrong) for the per-run keys of :class:`RunKeys` in an expanded grid entry."""
    try:
        RunKeys.model_validate({k: entry[k] for k in RunKeys.model_fields if k in entry})
    except ValidationError as exc:
        return field_problems(exc)
    return []


PARAMS: dict[str, type] = {
    "arch": str, "d_model": int, "d_sae": int, "k": int, "l1_coeff": float, "l0_coeff": float, "aux_k": int,
    "aux_coeff": float, "dead_tokens": int, "lr": float, "seed": int, "layer": int, "tokens": str,
    "batch_size": int, "n_tokens": int, "grad_clip": float, "data_init_blend": float,
}
"""A run's typed parameters: the ``run_params`` table's columns (``migrations/versions/0005_judgement.py`` freezes the
same list as schema; a test keeps the two equal)."""
_TRAIN_PARAMS = ("batch_size", "n_tokens", "grad_clip", "data_init_blend")


def params_of(config: dict[str, Any]) -> dict[str, Any]:
    """The typed parameters of a stored run config (None where absent, not read by the architecture, or mistyped)."""
    sae_value, train_value = config.get("sae"), config.get("train")
    sae: dict[str, Any] = sae_value if isinstance(sae_value, dict) else {}
    train: dict[str, Any] | None = train_value if isinstance(train_value, dict) else None
    arch = sae.get("arch")
    reads = set(fields_read(sae)) if arch in FAMILIES else set(sae)
    raw: dict[str, Any] = {k: sae.get(k) for k in PARAMS if k in reads}
    raw.update({k: config.get(k) for k in RUN_KEY_DEFAULTS})
    raw["tokens"] = tokens.OLD_NAMES.get(raw["tokens"], raw["tokens"])  # one name per selection (migration 0008)
    if train is not None:  # imported SAEs have no training settings
        raw.update({k: train.get(k, ADDED_SETTINGS.get(k)) for k in _TRAIN_PARAMS})
    return {k: _coerce(raw.get(k), PARAMS[k]) for k in PARAMS}


def _coerce(value: Any, kind: type) -> Any:
    if value is None or isinstance(value, (dict, list)):
        return None
    if kind is str:
        return str(value)
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None
