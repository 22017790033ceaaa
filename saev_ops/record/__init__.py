"""Step 1 of the loop: run a vision transformer over images and record chosen layers' activations into a dataset."""

from saev_ops.record.recorder import RecordSpec as RecordSpec
from saev_ops.record.recorder import record_dataset as record_dataset
from saev_ops.record.recorder import record_part as record_part
from saev_ops.record.recorder import record_split as record_split
from saev_ops.record.recorder import submit_split as submit_split
