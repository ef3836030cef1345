"""`postroom-sendmail -bs`: SMTP on stdin and stdout, as sendmail speaks it to programs (inetd, mutt).

A small state machine of its own: the conversation is one client on a pipe, with no TLS, no AUTH
and no connection to manage, which is all aiosmtpd would bring. Each transaction (MAIL, RCPT…,
DATA) is submitted through the same path as a message on stdin, and `250` is answered only once
it is durable in the store; the submission's sysexits code becomes the reply (75 → 451, others → 554).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Sequence
from typing import BinaryIO

from . import sysexits as X

#: Submit one message: (raw bytes, recipients, envelope sender) → (sysexits code, text).
Submit = Callable[[bytes, Sequence[str], "str | None"], tuple[int, str]]


def _path(argument: str, verb: str) -> str | None:
    """The address in `FROM:<a@b> SIZE=…` / `TO:<a@b>`; None when it is not there."""
    head, colon, rest = argument.partition(":")
    if not colon or head.strip().upper() != verb:
        return None
    rest = rest.strip()
    if rest.startswith("<"):
        end = rest.find(">")
        return rest[1:end] if end >= 0 else None
    return rest.split(" ")[0] or None


def serve_stdio(submit: Submit, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """Speak SMTP until QUIT or the end of input; exit 0."""
    rfile = stdin or sys.stdin.buffer
    wfile = stdout or sys.stdout.buffer
    host = socket.gethostname()

    def reply(line: str) -> None:
        wfile.write(line.encode("utf-8") + b"\r\n")
        wfile.flush()

    sender: str | None = None
    recipients: list[str] = []
    reply(f"220 {host} postroom-sendmail ESMTP")
    while True:
        raw = rfile.readline()
        if not raw:
            return X.EX_OK
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        verb, _, argument = line.partition(" ")
        verb = verb.upper()
        if verb in ("HELO", "EHLO"):
            sender, recipients = None, []
            if verb == "EHLO":
                reply(f"250-{host}")
                reply("250-8BITMIME")
                reply("250 SMTPUTF8")
            else:
                reply(f"250 {host}")
        elif verb == "MAIL":
            path = _path(argument, "FROM")
            if path is None:
                reply("501 5.5.4 Syntax: MAIL FROM:<address>")
            elif sender is not None:
                reply("503 5.5.1 Nested MAIL command")
            else:
                sender, recipients = path, []
                reply("250 2.1.0 Ok")
        elif verb == "RCPT":
            path = _path(argument, "TO")
            if sender is None:
                reply("503 5.5.1 Need MAIL before RCPT")
            elif not path or "@" not in path:
                reply("501 5.1.3 Syntax: RCPT TO:<user@domain>")
            else:
                recipients.append(path)
                reply("250 2.1.5 Ok")
        elif verb == "DATA":
            if not recipients:
                reply("503 5.5.1 Need RCPT before DATA")
                continue
            reply("354 End data with <CR><LF>.<CR><LF>")
            message = _read_data(rfile)
            if message is None:
                return X.EX_OK
            code, text = submit(message, recipients, sender)
            sender, recipients = None, []
            if code == X.EX_OK:
                reply(f"250 2.0.0 Ok: {' '.join(text.split())}")
            elif code == X.EX_TEMPFAIL:
                reply(f"451 4.3.0 {' '.join(text.split())}")
            else:
                reply(f"554 5.6.0 {' '.join(text.split())}")
        elif verb == "RSET":
            sender, recipients = None, []
            reply("250 2.0.0 Ok")
        elif verb == "NOOP":
            reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            reply("221 2.0.0 Bye")
            return X.EX_OK
        else:
            reply("502 5.5.2 Command not recognized")


def _read_data(rfile: BinaryIO) -> bytes | None:
    """The message after DATA up to the line with one dot, dots unstuffed; None at end of input."""
    lines: list[bytes] = []
    while True:
        raw = rfile.readline()
        if not raw:
            return None
        if raw.rstrip(b"\r\n") == b".":
            return b"".join(lines)
        lines.append(raw[1:] if raw.startswith(b".") else raw)
