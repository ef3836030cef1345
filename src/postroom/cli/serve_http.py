"""`postroom serve http`: the status page and /metrics (postroom.web)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ..web.auth import TOKEN_FILE, new_token, stored_hash
from ..web.server import DEFAULT_HOST, DEFAULT_PORT, Listen, check_listen, parse_listen, serve
from .context import App, pass_app

#: One source for the options `serve http` and `spooler --http` share.
TLS_HELP = "PEM certificate (with --tls-key): serve over HTTPS, as any address beyond loopback needs."


@click.command()
@click.option(
    "--listen",
    "listen_at",
    default=f"{DEFAULT_HOST}:{DEFAULT_PORT}",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen; beyond loopback only with TLS and an operator token.",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Listen on this Unix socket instead (mode 0600): whoever may open it is the operator.",
)
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None, help=TLS_HELP)
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None, help="PEM key.")
@click.option(
    "--new-token",
    "new_token_",
    is_flag=True,
    help="Make a new operator token (replacing the old one), print it once, and exit; the profile keeps only its hash.",
)
@pass_app
def http(
    app: App, listen_at: str, socket_path: Path | None, tls_cert: Path | None, tls_key: Path | None, new_token_: bool
) -> None:
    """Serve the status page: overview, queue, message, routing, live updates, /metrics, /healthz.

    Read-only for everyone who can reach it; hold, release, retry, cancel, Send/Receive and
    online/offline need the operator token (`--new-token`) or the Unix socket.
    """
    profile = app.profile()
    if new_token_:
        token = new_token(profile.directory)
        if app.json:
            app.out.document({"token": token, "file": str(profile.directory / TOKEN_FILE)})
        else:
            app.out.echo(token)
            click.echo(
                f"postroom: the token's hash is in {profile.directory / TOKEN_FILE}; keep the token secret", err=True
            )
        return
    host, port = parse_listen(listen_at)
    listen = Listen(host, port, socket_path, tls_cert, tls_key)
    check_listen(listen, stored_hash(profile.directory))  # before saying where it listens
    banner = f"Status page on {listen.url} for {profile.directory}; Ctrl-C or SIGTERM stops it."
    asyncio.run(serve(profile, listen, ready=lambda: app.out.echo(banner)))
