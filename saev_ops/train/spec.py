"""Plain, picklable job specs for training: what a job trains, never ORM rows or sessions. The run config they are
built from (train settings, identity) is :mod:`saev_ops.runconfig`."""

from __future__ import annotations

import dataclasses
import hashlib

from saev_ops.runconfig import TrainSettings
from saev_ops.sae.config import SAEConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    run_id: int
    sae: SAEConfig
    lr: float
    seed: int = 0
    """SAE initialisation seed."""
    identity: str = ""
    """The run's identity in its registry (its config hash): named on each line of its journal."""


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
    val_dataset_path: str | None = None
    """Where ``settings.val_dataset`` lies (resolved from the registry when the job was planned)."""
    registry_id: str = ""
    """The id of the registry the runs belong to (:attr:`Registry.registry_id`): journals name it, and a job whose
    ``db_url`` reaches another registry refuses to start."""

    @property
    def key(self) -> str:
        ids = ",".join(str(r.run_id) for r in self.runs)
        return hashlib.sha256(ids.encode()).hexdigest()[:12]
