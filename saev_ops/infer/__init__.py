"""Step 3: inference to sparse predictions (:func:`run_inference`) and reading them back (:class:`Output`)."""

from saev_ops.infer.read import Output as Output
from saev_ops.infer.run import InferSpec as InferSpec
from saev_ops.infer.run import check_inference as check_inference
from saev_ops.infer.run import run_inference as run_inference
