"""``saev-ops db``: schema migrations of the registry."""

from __future__ import annotations

import click

from saev_ops.cli.context import CliContext, pass_ctx


def _engine(obj: CliContext):  # sqlalchemy.Engine
    from saev_ops.registry.engine import create_registry_engine

    return create_registry_engine(obj.db_url)


@click.group("db")
def group() -> None:
    """Registry schema: upgrade, current, downgrade, reader-setup (the role `sql` runs as)."""


@group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_ctx
def upgrade(obj: CliContext, revision: str) -> None:
    """Upgrade the registry schema (creates it in an empty database). Back up the database first."""
    from saev_ops.registry import migrate

    engine = _engine(obj)
    before = _current(engine)
    migrate.run_upgrade(engine, revision)
    after = _current(engine)
    click.echo(f"{before or '(empty)'} -> {after}" if before != after else f"already at {after}")


@group.command("current")
@pass_ctx
def current(obj: CliContext) -> None:
    """Print the schema revision of the registry and whether it is the one this saev-ops needs."""
    from saev_ops.registry.schema_version import HEAD_REVISION

    rev = _current(_engine(obj))
    if rev is None:
        click.echo(f"(no saev-ops schema); this saev-ops needs {HEAD_REVISION}")
    elif rev == HEAD_REVISION:
        click.echo(f"{rev} (head)")
    else:
        click.echo(f"{rev}; this saev-ops needs {HEAD_REVISION}: run `saev-ops db upgrade`")


@group.command("downgrade")
@click.argument("revision")
@pass_ctx
def downgrade(obj: CliContext, revision: str) -> None:
    """Downgrade the registry schema to REVISION ('base' removes every saev-ops table)."""
    from saev_ops.registry import migrate

    engine = _engine(obj)
    before = _current(engine)
    migrate.run_downgrade(engine, revision)
    click.echo(f"{before} -> {_current(engine) or '(base)'}")


@group.command("reader-setup")
@pass_ctx
def reader_setup(obj: CliContext) -> None:
    """PostgreSQL: create or repair the read-only role saev_ops_reader and the function `saev-ops sql` runs user SQL
    through, in this registry's schema (the schema migration does it when its role may create roles)."""
    from saev_ops.registry.reader_setup import setup_reader

    role = setup_reader(_engine(obj))
    click.echo(f"`saev-ops sql` runs as {role} in this registry")


def _current(engine) -> str | None:
    import sqlalchemy as sa

    from saev_ops import errors
    from saev_ops.registry import migrate
    from saev_ops.registry.engine import safe_url

    try:
        with engine.connect() as conn:
            return migrate.current_revision(conn)
    except sa.exc.OperationalError as exc:
        raise errors.RegistryUnavailableError(
            f"cannot open the registry database {safe_url(engine.url)}: {exc.orig}"
        ) from None
