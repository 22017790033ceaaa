"""Logging set-up: one ``saev_ops`` logger tree (a logger per module), configured once per process.

The CLI configures it from ``--verbose/--quiet`` (INFO by default); jobs (submitit, or a job command in a batch script)
log at INFO, so a Slurm log shows progress lines and every failure that was survived on purpose.
"""

from __future__ import annotations

import logging
import sys

ROOT = "saev_ops"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: int = logging.INFO) -> None:
    """Send ``saev_ops`` records at ``level`` and above to stderr (once: calling again only changes the level)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    if not any(getattr(h, "_saev_ops", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        handler._saev_ops = True  # type: ignore[attr-defined]  # marks our handler, so a second call adds none
        logger.addHandler(handler)
