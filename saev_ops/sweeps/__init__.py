"""Sweeps: ``grid.yaml`` -> validated, expanded runs -> jobs on an executor; status reconciliation."""

from saev_ops.sweeps.spec import SweepSpec as SweepSpec
from saev_ops.sweeps.spec import load_sweep as load_sweep
from saev_ops.sweeps.spec import parse_sweep as parse_sweep
from saev_ops.sweeps.submit import submit_sweep as submit_sweep
