"""The system profile's submit socket: how any local user submits into a store only `postroom` reads.

Why a Unix socket and not a setgid helper: the kernel ignores setuid/setgid bits on scripts, so a
setgid helper would have to be a compiled wrapper around a Python that then runs with the group's
rights under an environment the caller controls (PYTHONPATH, a site directory, the locale): every
import would be an attack surface. With a socket, the store's files stay 0600 and owned by the
`postroom` user, the daemon (`postroom serve submit`) is the only process that opens them, and the
kernel tells it who is calling (SO_PEERCRED): that uid is what it records on the message
(PR_SUBMITTER_UID) and the only thing the caller cannot make up.

The protocol, one request per connection:

    client → server   one JSON line: {"op": "submit", "size": N, "recipients": […], "extract": bool,
                      "sender": str | null, "full_name": str | null, and when given "dsn_notify",
                      "dsn_ret", "dsn_envid": str (-N, -R, -V) and "dsn_recipients": {address:
                      {"notify": str, "orcpt": str}} (-bs's RCPT parameters)}, then N bytes of
                      message; or {"op": "queue"}
    server → client   one JSON line: {"exit": <sysexits code>, "text": "…", "message_id": int | null}
                      (for "queue": {"exit": 0, "lines": ["…", …]})

The server answers exit 0 only after the message is durable in the store. A user sees only the
queue entries of messages they submitted (root sees all); there is no operation to read, change
or cancel a message, so nobody can do that to another user's mail through the socket.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..mapi.dsn import RecipientDsnRequest
from . import sysexits as X

#: The longest request line, and the largest message, the server reads.
MAX_LINE = 1 << 16
MAX_MESSAGE = 64 << 20
#: How long a client may take to send its request, and the client to wait for the answer.
CLIENT_TIMEOUT = 60.0
ANSWER_TIMEOUT = 300.0


class ProtocolProblem(Exception):
    """The other end said something that is not this protocol (EX_SOFTWARE)."""


def _read_line(sock: socket.socket) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_LINE:
            raise ProtocolProblem("request line too long")
    return bytes(data)


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(1 << 16, size - len(data)))
        if not chunk:
            raise ProtocolProblem(f"the message ended after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def _answer(sock: socket.socket) -> dict[str, Any]:
    line = _read_line(sock)
    try:
        answer = json.loads(line)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("exit"), int):
        raise ProtocolProblem(f"the submit socket answered {line[:80]!r}, which is not its protocol")
    return answer


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(ANSWER_TIMEOUT)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise ConnectionError(f"cannot reach the submit socket {path}: {exc.strerror or exc}") from exc
    return sock


def submit_remote(
    path: Path,
    raw: bytes,
    *,
    recipients: Sequence[str],
    extract: bool,
    sender: str | None,
    full_name: str | None,
    dsn: dict[str, str | None] | None = None,
    recipient_dsn: Mapping[str, RecipientDsnRequest] | None = None,
) -> tuple[int, str]:
    """Submit through the socket at `path`: (sysexits code, what to say). `dsn` holds the DSN
    requests of -N, -R and -V ("notify", "ret", "envid"; None when not given), `recipient_dsn`
    those of some recipients (as `Session.submit_mime` takes them)."""
    request = {
        "op": "submit",
        "size": len(raw),
        "recipients": list(recipients),
        "extract": extract,
        "sender": sender,
        "full_name": full_name,
        **{f"dsn_{k}": v for k, v in (dsn or {}).items() if v is not None},
        **({"dsn_recipients": dict(recipient_dsn)} if recipient_dsn else {}),
    }
    try:
        sock = _connect(path)
    except ConnectionError as exc:
        return X.EX_TEMPFAIL, str(exc)
    with sock:
        try:
            sock.sendall(json.dumps(request).encode() + b"\n" + raw)
            answer = _answer(sock)
        except ProtocolProblem as exc:
            return X.EX_SOFTWARE, str(exc)
        except OSError as exc:
            return X.EX_TEMPFAIL, f"the submit socket {path} went away: {exc.strerror or exc}"
    return int(answer["exit"]), str(answer.get("text", ""))


def queue_remote(path: Path) -> tuple[int, list[str]]:
    """The caller's own queue entries, as the server lists them."""
    try:
        sock = _connect(path)
    except ConnectionError as exc:
        return X.EX_TEMPFAIL, [str(exc)]
    with sock:
        try:
            sock.sendall(b'{"op": "queue"}\n')
            answer = _answer(sock)
        except ProtocolProblem as exc:
            return X.EX_SOFTWARE, [str(exc)]
    return int(answer["exit"]), [str(x) for x in answer.get("lines", [])]


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end, as the kernel knows it (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def read_request(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """One request from a client: the JSON line and, for "submit", the message bytes."""
    line = _read_line(sock)
    try:
        request = json.loads(line)
    except ValueError:
        raise ProtocolProblem("the request is not a JSON line") from None
    if not isinstance(request, dict) or request.get("op") not in ("submit", "queue"):
        raise ProtocolProblem("the request names no known op (submit, queue)")
    if request["op"] == "queue":
        return request, b""
    size = request.get("size")
    if not isinstance(size, int) or not 0 <= size <= MAX_MESSAGE:
        raise ProtocolProblem(f"the message size must be 0 to {MAX_MESSAGE} bytes")
    recipients = request.get("recipients", [])
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise ProtocolProblem("recipients must be a list of strings")
    for key in ("sender", "full_name"):
        if request.get(key) is not None and not isinstance(request[key], str):
            raise ProtocolProblem(f"{key} must be a string")
    by_recipient = request.get("dsn_recipients", {})
    if not isinstance(by_recipient, dict) or not all(
        isinstance(one, dict) and all(isinstance(v, str) for v in one.values()) for one in by_recipient.values()
    ):
        raise ProtocolProblem("dsn_recipients must map each address to an object of strings")
    return request, _read_exact(sock, size)


def send_answer(sock: socket.socket, answer: dict[str, Any]) -> None:
    sock.sendall(json.dumps(answer).encode() + b"\n")
