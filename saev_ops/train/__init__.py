"""Step 2 of the loop: train many SAEs in one pass over a dataset (:func:`run_train_job`, :class:`TrainJob`)."""

from saev_ops.train.spec import RunSpec as RunSpec
from saev_ops.train.spec import TrainJobSpec as TrainJobSpec
from saev_ops.train.spec import TrainSettings as TrainSettings
from saev_ops.train.trainer import TrainJob as TrainJob
from saev_ops.train.trainer import run_train_job as run_train_job
