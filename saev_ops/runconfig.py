"""A run's config below everything that stores or trains it: the ``train:`` settings (:class:`TrainSettings`), the
config as stored in the registry (:func:`run_config`), what of it is the run's identity (:func:`run_identity`), and
the settings whose defaults changed (:data:`ADDED_SETTINGS`, :data:`NEW_SWEEP_SETTINGS`). Torch-free, and imported by
the registry, the sweeps and the trainer alike (downwards)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from saev_ops import tokens
from saev_ops.sae.config import ARCH_FIELDS, identity_fields
from saev_ops.schema import Schema


class RunKeys(Schema):
    """The keys of a run that are not its SAE's config: its learning rate, seed, and which activations it trains on.
    Their defaults and descriptions (grid.yaml's per-run keys beside the SAE's fields); the sweep's validation checks
    each value with its key and line."""

    lr: float = 4e-4
    """Adam's learning rate (peak, after warm-up)."""
    seed: int = 0
    """Seed of the SAE's initialisation (the data order is ``train.seed``)."""
    layer: int = -1
    """Recorded layer the SAE reads (``-1``: the last recorded)."""
    tokens: str = "patches"
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
    if isinstance(sae, dict) and sae.get("arch") in ARCH_FIELDS:
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
