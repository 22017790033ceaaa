"""The saev-ops SQL registry: datasets, sweeps, runs, metrics, inference outputs and their lineage.

Public names: :class:`Registry`, :class:`RunQuery` and the frozen records. Importing this package never imports torch.
"""

from saev_ops.registry.query import RunQuery as RunQuery
from saev_ops.registry.records import DatasetRecord as DatasetRecord
from saev_ops.registry.records import EvaluationRecord as EvaluationRecord
from saev_ops.registry.records import MetricPoint as MetricPoint
from saev_ops.registry.records import OutputRecord as OutputRecord
from saev_ops.registry.records import RunDetail as RunDetail
from saev_ops.registry.records import RunRecord as RunRecord
from saev_ops.registry.records import RunRow as RunRow
from saev_ops.registry.records import SweepRecord as SweepRecord
from saev_ops.registry.store import Registry as Registry
from saev_ops.registry.store import config_hash as config_hash
