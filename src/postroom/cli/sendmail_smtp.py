"""`postroom-sendmail -bs`: SMTP on stdin and stdout, as sendmail speaks it to programs (inetd, mutt).

A small state machine of its own: the conversation is one client on a pipe, with no TLS, no AUTH
and no connection to manage, which is all aiosmtpd would bring. Each transaction (MAIL, RCPT…,
DATA) is submitted through the same path as a message on stdin, and `250` is answered only once
it is durable in the store; the submission's sysexits code becomes the reply (75 → 451, others → 554).

EHLO offers DSN (RFC 3461) as the SMTP listener does: MAIL takes `RET=FULL|HDRS` and `ENVID=xtext`,
RCPT takes `NOTIFY=…` and `ORCPT=type;xtext`, each recipient its own (mapi/dsn.py reads them; a
bad value is `501 5.5.4`, one on the wrong verb `555 5.5.4`); they override -R, -V and -N for
the transaction. MAIL also takes SIZE, BODY and SMTPUTF8, which need nothing done on a pipe; any
other parameter, or any at all after HELO, is `555 5.5.4` (RFC 5321 §4.1.1.11).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from ..mapi.dsn import (
    DsnParameterError,
    MessageDsn,
    RecipientDsn,
    parse_envid,
    read_mail_parameters,
    read_rcpt_parameters,
    split_dsn_parameters,
)
from . import sysexits as X


@dataclass
class Transaction:
    """What one MAIL … RCPT … said, reset by the next MAIL, RSET, HELO or EHLO (as aiosmtpd's
    envelope)."""

    sender: str
    dsn: MessageDsn = field(default_factory=MessageDsn)
    recipients: list[str] = field(default_factory=list)
    rcpt_dsn: dict[str, RecipientDsn] = field(default_factory=dict)  # by forward path, as RCPT gave it


#: Submit one message: (raw bytes, its transaction) → (sysexits code, text).
Submit = Callable[[bytes, Transaction], tuple[int, str]]

#: MAIL parameters taken besides the DSN ones: nothing on a pipe depends on them.
_MAIL_KEYS = frozenset({"SIZE", "BODY", "SMTPUTF8"})


def _path(argument: str, verb: str) -> tuple[str, str] | None:
    """The address and the parameters of `FROM:<a@b> SIZE=…` / `TO:<a@b>`; None when it is not there."""
    head, colon, rest = argument.partition(":")
    if not colon or head.strip().upper() != verb:
        return None
    rest = rest.strip()
    if rest.startswith("<"):
        end = rest.find(">")
        return (rest[1:end], rest[end + 1 :].strip()) if end >= 0 else None
    address, _, params = rest.partition(" ")
    return (address, params.strip()) if address else None


def _refused_parameter(params: str, extended: bool, known: frozenset[str]) -> str | None:
    """The `555` reply for a parameter that is neither DSN nor in `known`, or for any parameter
    after HELO (a client that did not say EHLO has been offered none); None when all are taken."""
    if params and not extended:
        return "555 5.5.4 Parameters need EHLO"
    for word in split_dsn_parameters(params)[1].split():
        name = word.partition("=")[0].upper()
        if name not in known:
            return f"555 5.5.4 {name} is not a parameter this server knows"
    return None


def _mail_parameters(params: str, extended: bool) -> MessageDsn | str:
    """MAIL's DSN request, or the reply refusing the MAIL."""
    refused = _refused_parameter(params, extended, _MAIL_KEYS)
    if refused is not None:
        return refused
    try:
        dsn = read_mail_parameters(split_dsn_parameters(params)[0])
        if dsn.envid is not None:
            parse_envid(dsn.envid)  # what the submission takes, as from -V: printable ASCII, no space
    except DsnParameterError as exc:
        return exc.smtp_reply
    return dsn


def _rcpt_parameters(params: str, extended: bool) -> RecipientDsn | str:
    """RCPT's DSN request, or the reply refusing the RCPT."""
    refused = _refused_parameter(params, extended, frozenset())
    if refused is not None:
        return refused
    try:
        return read_rcpt_parameters(split_dsn_parameters(params)[0])
    except DsnParameterError as exc:
        return exc.smtp_reply


def serve_stdio(submit: Submit, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """Speak SMTP until QUIT or the end of input; exit 0."""
    rfile = stdin or sys.stdin.buffer
    wfile = stdout or sys.stdout.buffer
    host = socket.gethostname()

    def reply(line: str) -> None:
        wfile.write(line.encode("utf-8") + b"\r\n")
        wfile.flush()

    extended = False
    transaction: Transaction | None = None
    reply(f"220 {host} postroom-sendmail ESMTP")
    while True:
        raw = rfile.readline()
        if not raw:
            return X.EX_OK
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        verb, _, argument = line.partition(" ")
        verb = verb.upper()
        if verb in ("HELO", "EHLO"):
            transaction, extended = None, verb == "EHLO"
            if extended:
                reply(f"250-{host}")
                reply("250-8BITMIME")
                reply("250-SMTPUTF8")
                reply("250 DSN")
            else:
                reply(f"250 {host}")
        elif verb == "MAIL":
            path = _path(argument, "FROM")
            if path is None:
                reply("501 5.5.4 Syntax: MAIL FROM:<address>")
            elif transaction is not None:
                reply("503 5.5.1 Nested MAIL command")
            else:
                dsn = _mail_parameters(path[1], extended)
                if isinstance(dsn, str):
                    reply(dsn)
                    continue
                transaction = Transaction(path[0], dsn)
                reply("250 2.1.0 Ok")
        elif verb == "RCPT":
            path = _path(argument, "TO")
            if transaction is None:
                reply("503 5.5.1 Need MAIL before RCPT")
            elif path is None or "@" not in path[0]:
                reply("501 5.1.3 Syntax: RCPT TO:<user@domain>")
            else:
                rcpt_dsn = _rcpt_parameters(path[1], extended)
                if isinstance(rcpt_dsn, str):
                    reply(rcpt_dsn)
                    continue
                address = path[0]
                if address not in transaction.rcpt_dsn:  # a path given twice is one recipient: its first RCPT says
                    transaction.recipients.append(address)
                    transaction.rcpt_dsn[address] = rcpt_dsn
                reply("250 2.1.5 Ok")
        elif verb == "DATA":
            if transaction is None or not transaction.recipients:
                reply("503 5.5.1 Need RCPT before DATA")
                continue
            reply("354 End data with <CR><LF>.<CR><LF>")
            message = _read_data(rfile)
            if message is None:
                return X.EX_OK
            code, text = submit(message, transaction)
            transaction = None
            if code == X.EX_OK:
                reply(f"250 2.0.0 Ok: {' '.join(text.split())}")
            elif code == X.EX_TEMPFAIL:
                reply(f"451 4.3.0 {' '.join(text.split())}")
            else:
                reply(f"554 5.6.0 {' '.join(text.split())}")
        elif verb == "RSET":
            transaction = None
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
