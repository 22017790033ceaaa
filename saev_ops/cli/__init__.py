"""The ``saev-ops`` command line: a thin click layer (parse, call the library, print).

Heavy packages (torch, alembic, submitit) are imported inside the commands that need them, so ``saev-ops --help`` and
the registry queries start fast. Every :class:`~saev_ops.errors.SaevOpsError` becomes one ``Error:`` line and exit
code 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import click

from saev_ops import __version__
from saev_ops.cli.context import CliContext


class _Group(click.Group):
    """A click group that turns saev-ops errors into one clean line (or a traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        from saev_ops.errors import NotFoundError, SaevOpsError

        try:
            return super().invoke(ctx)
        except OSError as exc:  # a closed pipe (`| head`): click would exit 1 with nothing said
            if exc.errno != errno.EPIPE:
                raise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush into the pipe
            raise click.exceptions.Exit(0) from None
        except SaevOpsError as exc:
            obj = ctx.find_object(CliContext)
            if obj is not None and obj.debug:
                raise
            message = str(exc)
            if isinstance(exc, NotFoundError) and obj is not None:  # which registry was searched
                from saev_ops.registry.engine import safe_url

                message = f"{message} (registry: {safe_url(obj.db_url)})"
            raise click.ClickException(message) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--db",
    envvar="SAEV_OPS_DB_URL",
    metavar="URL",
    help="Registry database URL or SQLite path. Default: $SAEV_OPS_DB_URL, else $SAEV_OPS_HOME/registry.sqlite "
    "($SAEV_OPS_HOME defaults to ~/.saev-ops).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages too.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only (no progress lines).")
@click.version_option(__version__, prog_name="saev-ops")
@click.pass_context
def cli(ctx: click.Context, db: str | None, debug: bool, verbose: bool, quiet: bool) -> None:
    """saev-ops: record ViT activations, train many SAEs, run inference, explore -- all tracked in a SQL registry."""
    import logging

    from saev_ops.logs import configure

    configure(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    ctx.obj = CliContext(db, debug)


def _register() -> None:
    from saev_ops.cli import datasets, db, evaluate, images, infer, runs, serve, sql, sweep, train

    for module in (db, datasets, images, runs, sql, sweep, train):
        cli.add_command(module.group)
    for command in (infer.infer, evaluate.evaluate, infer.latents, infer.lineage, infer.report, serve.serve):
        cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. A closed pipe ends quietly with status 0 (click's own handling exits 1 with nothing
    on stderr, which breaks `saev-ops runs show 6 | head` under pipefail): commands' EPIPE is caught in the group's
    invoke, before click's, and what reaches here (click writing help or usage) below."""
    try:
        code = cli.main(args=argv, prog_name="saev-ops", standalone_mode=False)
        if type(code) is int and code:  # click.exceptions.Exit(n) from a command; a command returns None
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:  # pragma: no cover - interactive
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush into the pipe
        sys.exit(0)
