"""``saev-ops serve``: the explorer in a browser (:mod:`saev_ops.serve`)."""

from __future__ import annotations

import ipaddress

import click

from saev_ops.cli.context import CliContext, pass_ctx


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but a loopback address is reachable from other machines: a warning is "
                   "printed, and --token is advised.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--token", envvar="SAEV_OPS_SERVE_TOKEN", default=None,
              help="Require this token (given once as ?token=, then kept in a cookie). Default: $SAEV_OPS_SERVE_TOKEN, "
                   "else none.")
@pass_ctx
def serve(ctx: CliContext, host: str, port: int, token: str | None) -> None:
    """Browse sweeps, runs, inference outputs, latents and images in a web browser. Read-only: it never writes to the
    registry or the data (it keeps each output's latent index beside the output, built on first use)."""
    from saev_ops.extras import require
    from saev_ops.registry.engine import safe_url
    from saev_ops.serve.app import create_app

    uvicorn = require("uvicorn", "serve", "saev-ops serve")
    app = create_app(ctx.db_url, token=token)
    if token is not None and len(token) < 16:
        raise click.BadParameter("use a token of at least 16 characters", param_hint="--token")
    if not is_loopback(host):
        click.echo(f"Warning: binding {host}: other machines can reach this server"
                   + ("" if token else "; without --token anyone who can reach it reads the registry"), err=True)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"saev-ops serve: {safe_url(ctx.db_url)} at http://{shown}:{port}/" + ("?token=..." if token else ""))
    uvicorn.run(app, host=host, port=port, log_level="warning")
