"""Exception hierarchy. Every error saev-ops raises on purpose derives from :class:`SaevOpsError`.

Messages say what was looked for, what was found, and (where one exists) which command fixes it.
The CLI prints ``str(err)`` as one line and exits non-zero; tracebacks only with ``--debug``.
"""

from __future__ import annotations


class SaevOpsError(Exception):
    """Base class of every deliberate saev-ops error."""


class ConfigError(SaevOpsError):
    """A configuration value (file, option, environment variable) is missing or invalid."""


class RegistryError(SaevOpsError):
    """The registry database failed in a way the caller cannot fix by changing its input."""


class RegistryUnavailableError(RegistryError):
    """The registry database cannot be reached or opened."""


class NotASaevOpsDatabaseError(RegistryError):
    """The database holds tables, but not a saev-ops schema."""


class SchemaOutdatedError(RegistryError):
    """The database's schema is older (or newer) than this saev-ops; it must be migrated first."""


class NotFoundError(SaevOpsError):
    """A named dataset, sweep, run or output does not exist in the registry."""


class DuplicateError(SaevOpsError):
    """An object with the same unique name or hash already exists."""


class HasDependentsError(SaevOpsError):
    """An object cannot be removed while others depend on it (runs on a dataset, outputs of a run)."""


class InvalidTransitionError(SaevOpsError):
    """A run or dataset status change that the state machine does not allow."""


class QueryError(SaevOpsError):
    """A user query (``--where``, ``--sort``, ``saev-ops sql``) is malformed or not allowed."""


class DataError(SaevOpsError):
    """Activation data on disk is missing, incomplete or corrupt."""


class TrainingError(SaevOpsError):
    """A run's training went wrong on its own (non-finite loss or weights); its run is marked failed."""


class JobFailedError(SaevOpsError):
    """A job run in this process (debug executor, or a job command) failed."""


class ClusterError(SaevOpsError):
    """A Slurm command (sbatch, sacct, scancel) failed."""
