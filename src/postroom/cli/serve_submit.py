"""`postroom serve submit`: the system profile's submit socket (cli/submit_socket.py says why a socket).

Run as the `postroom` user on the system profile (README, "A system profile for every user"): it
alone opens the store; every local user reaches it through the socket, and the kernel tells it
who they are. One connection is served at a time, each with a time limit, so a silent client
delays the others by at most that long.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from . import sysexits as X
from .context import App, pass_app
from .sendmail import deliver_after_submit, queue_lines
from .submit_socket import CLIENT_TIMEOUT, ProtocolProblem, peer_uid, read_request, send_answer

if TYPE_CHECKING:
    from .. import Session


def _who(uid: int) -> tuple[str, str]:
    """The login name and full name (the GECOS field's first part) of `uid`."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return f"uid{uid}", ""
    return entry.pw_name, entry.pw_gecos.split(",")[0]


def handle(session: Session, uid: int, request: dict[str, Any], raw: bytes) -> tuple[dict[str, Any], int | None]:
    """The answer to one request from `uid`, and the message ID to deliver afterwards (if any)."""
    if request["op"] == "queue":
        return {"exit": X.EX_OK, "lines": queue_lines(session, uid)}, None
    login, gecos = _who(uid)
    full_name, sender = request.get("full_name"), request.get("sender")
    try:
        mid = session.submit_mime(
            raw,
            recipients=request.get("recipients", []),
            extract_recipients=bool(request.get("extract")),
            envelope_sender=sender,
            default_from=sender if sender and "@" in sender else f"{login}@{session.identity().domain}",
            full_name=full_name if full_name is not None else gecos,
            submitter_uid=uid,
            dsn_notify=_text(request.get("dsn_notify")),
            dsn_return=_text(request.get("dsn_ret")),
            envelope_id=_text(request.get("dsn_envid")),
            recipient_dsn=request.get("dsn_recipients"),  # checked by read_request and submit_mime
        )
    except Exception as exc:
        return {"exit": X.exit_code(exc), "text": f"not submitted: {exc}", "message_id": None}, None
    return {"exit": X.EX_OK, "text": f"message {mid} submitted", "message_id": mid}, mid


def _text(value: object) -> str | None:
    """A request's optional text field; anything else is treated as not given."""
    return value if isinstance(value, str) else None


def _bind(path: Path, mode: int) -> socket.socket:
    if path.is_socket():
        path.unlink()  # left by a server that stopped; a running one would hold the pid file
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, mode)
    server.listen(64)
    server.settimeout(0.5)  # how often the loop looks whether it was asked to stop
    return server


@click.command("submit")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="/run/postroom/submit.sock",
    show_default=True,
    help="Where to listen; postroom-sendmail looks there (or at $POSTROOM_SOCKET).",
)
@click.option("--mode", "mode_text", default="0666", show_default=True, help="The socket's permissions (octal).")
@pass_app
def serve_submit(app: App, socket_path: Path, mode_text: str) -> None:
    """Accept messages from postroom-sendmail of every local user into this (system) profile.

    Each user can submit and list their own queued messages (`mailq`); nobody reads, changes or
    cancels another user's mail, and the profile's credentials stay in files only this server's
    user reads. The submitting uid, from the kernel (SO_PEERCRED), is kept on the message. Without
    a spooler daemon on the profile each message is delivered right after it was accepted.
    """
    try:
        mode = int(mode_text, 8)
    except ValueError:
        raise click.BadParameter(f"{mode_text!r} is not an octal mode such as 0666", param_hint="--mode") from None
    session = app.session()
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    server = _bind(socket_path, mode)
    app.out.echo(f"Accepting submissions on {socket_path} into {session.profile.directory} (pid {os.getpid()}).")
    try:
        while not stopping:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            _serve_one(session, conn)
    finally:
        server.close()
        socket_path.unlink(missing_ok=True)
        for s, h in previous.items():
            signal.signal(s, h)
    app.out.echo("Stopped accepting submissions.")


def _serve_one(session: Session, conn: socket.socket) -> None:
    deliver: int | None = None
    with conn:
        conn.settimeout(CLIENT_TIMEOUT)
        try:
            uid = peer_uid(conn)
            request, raw = read_request(conn)
            answer, deliver = handle(session, uid, request, raw)
            send_answer(conn, answer)
        except ProtocolProblem as exc:
            _try_answer(conn, {"exit": X.EX_USAGE, "text": str(exc)})
        except OSError:
            pass  # the client went away or was too slow; whatever it submitted is durable
    if deliver is not None:
        deliver_after_submit(session, deliver)


def _try_answer(conn: socket.socket, answer: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        send_answer(conn, answer)
