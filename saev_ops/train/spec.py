"""Plain, picklable job specs for training: what a job trains, never ORM rows or sessions."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from saev_ops import errors
from saev_ops.sae.config import SAEConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Settings shared by every run of a job (they share one pass over the data)."""

    batch_size: int = 4096
    """Patches per step."""
    n_tokens: int = 1_000_000
    """Patches each SAE trains on (steps = n_tokens // batch_size)."""
    seed: int = 0
    """Data order seed."""
    lr_warmup_steps: int = 100
    lr_decay: str = "cosine"
    """cosine or linear decay to 0 after warm-up, or none."""
    sparsity_warmup_steps: int = 100
    log_every: int = 50
    """Steps between metric reports."""
    ckpt_every: int = 500
    """Steps between checkpoints."""
    device: str = "cpu"
    buffer_mb: float = 1024.0
    """Shuffled loader memory."""
    heartbeat_s: float = 30.0

    def __post_init__(self) -> None:
        bad = [n for n in ("batch_size", "n_tokens", "log_every", "ckpt_every") if getattr(self, n) <= 0]
        if bad:
            raise errors.ConfigError(f"train settings {bad} must be > 0")
        if self.lr_decay not in ("cosine", "linear", "none"):
            raise errors.ConfigError(f"train.lr_decay must be cosine, linear or none, got {self.lr_decay!r}")

    @property
    def n_steps(self) -> int:
        return max(1, self.n_tokens // self.batch_size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    run_id: int
    sae: SAEConfig
    lr: float
    seed: int = 0
    """SAE initialisation seed."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainJobSpec:
    """One job: runs that share a dataset, layer and token selection, trained on the same batches."""

    db_url: str
    dataset: str
    dataset_path: str
    dataset_hash: str
    layer: int
    tokens: str
    settings: TrainSettings
    runs: tuple[RunSpec, ...]
    runs_root: str

    @property
    def key(self) -> str:
        ids = ",".join(str(r.run_id) for r in self.runs)
        return hashlib.sha256(ids.encode()).hexdigest()[:12]


# Train settings that change how a run is carried out or reported, not what it learns: out of its identity.
RUN_ONLY_SETTINGS = frozenset({"device", "log_every", "ckpt_every", "heartbeat_s"})


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What determines a run's result, hashed into its identity (:func:`saev_ops.registry.config_hash`): the config
    without the settings of :data:`RUN_ONLY_SETTINGS` and without SAE fields its architecture does not read. So the
    same sweep resubmitted on ``device: cuda`` finds its runs, and a ReLU entry needs no ``k``."""
    from saev_ops.sae.config import ARCH_FIELDS

    out = dict(config)
    sae = config.get("sae")
    if isinstance(sae, dict) and sae.get("arch") in ARCH_FIELDS:
        out["sae"] = {k: v for k, v in sae.items() if k in ARCH_FIELDS[sae["arch"]]}
    train = config.get("train")
    if isinstance(train, dict):
        out["train"] = {k: v for k, v in train.items() if k not in RUN_ONLY_SETTINGS}
    return out


def run_config(sae: dict[str, Any], lr: float, seed: int, layer: int, tokens: str,
               settings: TrainSettings) -> dict[str, Any]:
    """The full config of a run as stored in the registry (and hashed into its identity)."""
    return {"sae": sae, "lr": lr, "seed": seed, "layer": layer, "tokens": tokens,
            "train": dataclasses.asdict(settings)}
