"""`postroom serve smtp`: the SMTP submission listener, and its users."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import click

from .. import HResult, ListenerSettings, MAPIError
from .context import App, CliError, pass_app, stop_on_signals
from .logs import configure_logging, log_options
from .workers import Supervisor, WorkersFailed, watch_parent

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """`25M`, `512k`, `1048576` → bytes."""
    raw = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = raw[-1:] if raw[-1:] in _SIZE_UNITS and not raw[-1:].isdigit() else ""
    number = raw[: len(raw) - len(unit)]
    if not number.isdigit():
        raise CliError(f"--max-message-size {text!r}: give bytes, or a number with K, M or G")
    return int(number) * _SIZE_UNITS[unit]


def _limit(name: str, default: float, help_text: str) -> Any:
    """A limit the listener enforces: typed as its default (a count or seconds), the default shown."""
    return click.option(name, type=type(default), default=default, show_default=True, help=help_text)


def listener_options(fn: Any) -> Any:
    """The listener's options (one source for `serve smtp`'s help)."""
    for option in reversed(
        [
            click.option(
                "--listen",
                multiple=True,
                metavar="HOST:PORT",
                help="Where to listen (repeatable; [::1]:587 for IPv6). Default: 127.0.0.1:587.",
            ),
            click.option(
                "--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="Certificate (PEM) for STARTTLS."
            ),
            click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="Its private key (PEM)."),
            click.option(
                "--max-message-size", default="25M", show_default=True, help="Largest message taken (552 above)."
            ),
            _limit("--max-recipients", 100, "Recipients per message (452 above)."),
            _limit("--max-connections", 100, "Concurrent connections (421 above)."),
            _limit("--timeout", 60.0, "Seconds a silent client is waited for."),
            _limit(
                "--max-session-time",
                600.0,
                "Seconds a connection may stay open, however busy (a slow client is cut off).",
            ),
            click.option(
                "--max-queued",
                type=int,
                default=None,
                help="Refuse new mail (452) while this many messages are queued.",
            ),
            click.option("--hostname", default=None, help="The name in the greeting (default: this machine's)."),
        ]
    ):
        fn = option(fn)
    return fn


def listener_settings(listen: tuple[str, ...], **kw: Any) -> ListenerSettings:
    return ListenerSettings.from_options(
        listen,
        tls_cert=kw["tls_cert"],
        tls_key=kw["tls_key"],
        max_message_bytes=parse_size(kw["max_message_size"]),
        max_recipients=kw["max_recipients"],
        max_connections=kw["max_connections"],
        timeout_seconds=kw["timeout"],
        max_session_seconds=kw["max_session_time"],
        max_queued=kw["max_queued"],
        hostname=kw["hostname"],
    )


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        return str(click.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True))
    return sys.stdin.readline().rstrip("\r\n")


@click.command("smtp")
@listener_options
@click.option(
    "--add-user", metavar="NAME", help="Add a user who may AUTH (password from stdin or a prompt), then exit."
)
@click.option("--remove-user", metavar="NAME", help="Remove a user, then exit.")
@click.option("--list-users", is_flag=True, help="List the users, then exit.")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Listener processes sharing the port (SO_REUSEPORT): the kernel spreads connections over them, "
    "so parsing and answering use several CPUs; --max-connections is per process. Needs a fixed port.",
)
@click.option("--worker-of", "worker_of", type=int, default=None, hidden=True)
@log_options
@pass_app
def serve_smtp(
    app: App,
    /,
    listen: tuple[str, ...],
    add_user: str | None,
    remove_user: str | None,
    list_users: bool,
    processes: int,
    worker_of: int | None,
    log_format: str,
    log_level: str,
    **kw: Any,
) -> None:
    """Run the SMTP submission listener: programs hand mail to postroom as to a mail server.

    Each message accepted (250) is durable in the Outbox, submitted, with its exact bytes; a
    running `postroom spooler` delivers it (`postroom spooler --smtp 127.0.0.1:587` runs both in
    one process). A recipient no transport takes is refused at RCPT (550 5.1.1). AUTH PLAIN and
    LOGIN check the users added with --add-user (only their scrypt hashes are kept, in the
    profile); AUTH is offered only after STARTTLS, except on a loopback address, and required
    from clients not on loopback once there are users. SIGHUP re-reads the profile.
    """
    if add_user is not None or remove_user is not None or list_users:
        session = app.session()
        if add_user is not None:
            session.set_listener_user(add_user, _read_password(add_user))
            app.out.echo(f"Listener user {add_user} added (only its scrypt hash is kept).")
        if remove_user is not None:
            session.remove_listener_user(remove_user)
            app.out.echo(f"Listener user {remove_user} removed.")
        if list_users:
            for name in session.listener_users():
                app.out.echo(name)
        return
    settings = listener_settings(listen, **kw)
    if worker_of is None and processes > 1:
        if any(port == 0 for _, port in settings.listen):
            why = "--processes: give a fixed port (HOST:0 cannot be shared by several processes)"
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, why)
        logs = ["--log-format", log_format, "--log-level", log_level]
        _supervise(app, processes, settings, [*_worker_options(listen, kw), *logs])
        return
    if worker_of is not None:
        watch_parent(worker_of)
        settings = dataclasses.replace(settings, reuse_port=True)
    configure_logging(log_format, log_level)
    stop = asyncio.Event()
    with stop_on_signals(stop):
        served = app.session_when_usable(stop)
        if served is None:
            return

        def listening(ports: list[int]) -> None:
            if worker_of is not None:  # the parent says where once every process listens
                app.out.json_line({"ready": os.getpid()})
                return
            where = ", ".join(f"{h}:{p}" for (h, _), p in zip(settings.listen, ports, strict=False))
            click.echo(f"postroom: SMTP submission listener on {where} ({served.profile.directory})", err=True)

        served.serve_smtp(settings, stop, on_listening=listening)


def _worker_options(listen: tuple[str, ...], kw: dict[str, Any]) -> list[str]:
    """The listener's options again, for a worker process of `--processes N`."""
    out = [a for at in listen for a in ("--listen", at)]
    out += ["--max-message-size", str(kw["max_message_size"]), "--max-recipients", str(kw["max_recipients"])]
    out += ["--max-connections", str(kw["max_connections"]), "--timeout", str(kw["timeout"])]
    out += ["--max-session-time", str(kw["max_session_time"])]
    for name in ("max_queued", "hostname", "tls_cert", "tls_key"):
        if kw[name] is not None:
            out += ["--" + name.replace("_", "-"), str(kw[name])]
    return out


def _supervise(app: App, processes: int, settings: ListenerSettings, options: list[str]) -> None:
    """The parent of `--processes N`: N listener processes on one port (SO_REUSEPORT), started,
    restarted when one dies and stopped together, by the supervisor `spooler --workers` uses
    (cli/workers.py). Why processes: a listener is CPU-bound on one core (parsing, aiosmtpd), and
    each message is durable in the store before its 250, so the processes share nothing else."""
    base = [sys.executable, "-m", "postroom"]
    if app.profile_dir is not None:
        base += ["--profile", str(app.profile_dir)]

    def command(index: int) -> list[str]:
        return [*base, "--json", "serve", "smtp", *options, "--worker-of", str(os.getpid())]

    def on_line(index: int, data: dict[str, Any]) -> None:
        if "ready" in data:
            supervisor.ready(index)

    def on_event(text: str) -> None:
        click.echo(f"postroom: {text}", err=True)

    def on_all_ready() -> None:
        where = ", ".join(f"{h}:{p}" for h, p in settings.listen)
        click.echo(f"postroom: SMTP submission listener on {where} ({processes} processes)", err=True)

    stop = asyncio.Event()
    supervisor = Supervisor(
        command,
        processes,
        on_line=on_line,
        on_event=on_event,
        on_stop=stop.set,
        on_all_ready=on_all_ready,
        kind="listener process",
    )
    with supervisor.signals_handled():
        session = app.session_when_usable(stop)  # a store that cannot be opened: an error at once
        if session is None:
            return
        app.close()  # the processes open their own sessions
        try:
            supervisor.run()
        except WorkersFailed as exc:
            what = f"listener process {exc.slot} ended (exit status {exc.status}, {exc.failures} time(s) in a row)"
            what += "; stopped the others (their errors are above)"
            raise MAPIError(HResult.MAPI_E_CALL_FAILED, what) from None
