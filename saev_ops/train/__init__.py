"""Step 2 of the loop: train many SAEs in one pass over a dataset (:func:`run_train_job`, :class:`TrainJob`).

The torch-backed names load on first use, so building job specs (what submitting and registry-only commands do) never
imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saev_ops.runconfig import TrainSettings as TrainSettings
from saev_ops.train.spec import RunSpec as RunSpec
from saev_ops.train.spec import TrainJobSpec as TrainJobSpec

if TYPE_CHECKING:
    from saev_ops.train.trainer import TrainJob as TrainJob
    from saev_ops.train.trainer import run_train_job as run_train_job


def __getattr__(name: str) -> Any:
    if name in ("TrainJob", "run_train_job"):
        from saev_ops.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'saev_ops.train' has no attribute {name!r}")
