"""The object every command receives: the resolved database URL and a lazily opened registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from saev_ops.registry import Registry


class CliContext:
    def __init__(self, db: str | None, debug: bool) -> None:
        from saev_ops.settings import resolve_db_url

        self.db_url = resolve_db_url(db)
        self.debug = debug
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        """The registry, opened (and its schema checked) on first use. It must exist: a command that only reads never
        creates an empty registry at a mistyped URL."""
        return self.open_registry(create=False)

    def open_registry(self, *, create: bool) -> Registry:
        """The registry; with ``create`` (commands that register something) a missing one is created."""
        if self._registry is None:
            from saev_ops.registry import Registry

            self._registry = Registry(self.db_url, create=create)
        return self._registry


pass_ctx = click.make_pass_decorator(CliContext)

def executor_options(what: str):
    """``--executor local|slurm`` and ``--slurm KEY=VALUE`` for a job command (record, infer)."""

    def wrap(f):
        f = click.option("--slurm", "slurm_opts", multiple=True, metavar="KEY=VALUE", help=SLURM_OPTION_HELP)(f)
        return click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
                            help=f"local: {what} in this process. slurm: submit a Slurm job (resources from --slurm) "
                            "and return.")(f)

    return wrap


# The keys of saev_ops.jobs.SlurmSpec, spelled here so `--help` does not import pydantic; a test keeps them equal.
SLURM_OPTION_HELP = ("Slurm resources for --executor slurm, KEY=VALUE, repeatable: partition, account, qos, gpus, "
                     "cpus, mem_gb, time_min, max_parallel.")


def format_option(f):  # click decorator
    from saev_ops.cli.fmt import FORMATS

    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format."
    )(f)


