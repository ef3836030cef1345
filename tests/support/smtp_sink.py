"""SMTP servers on 127.0.0.1 in this test process (aiosmtpd, in a thread), for transport tests.

* `running_sink()`: accepts every recipient except those whose local part starts with `reject-`
  (550 5.1.1 at RCPT, so the sender gets an NDR from the transport), and records each accepted
  recipient of each message, so a test can count deliveries per address and see none twice.
* `SmtpSink(replies={"busy@x.test": "450 4.2.1 mailbox busy"})`: answers RCPT as `replies` says
  per address (everything else accepted) and keeps each message's envelope recipients, bytes and
  envelope sender. `SmtpSink(dsn=True)` offers DSN (RFC 3461), lets its parameters through and
  keeps each MAIL and RCPT line as the client wrote it (`lines`), so a test sees what was passed on.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class RecordingHandler:
    """Keeps (recipient, subject) for every accepted message; thread-safe reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accepted: list[tuple[str, str]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address.split("@", 1)[0].lower().startswith("reject-"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        headers = BytesHeaderParser().parsebytes(bytes(envelope.original_content or envelope.content))
        subject = str(headers.get("Subject", ""))
        with self._lock:
            self._accepted.extend((rcpt.lower(), subject) for rcpt in envelope.rcpt_tos)
        return "250 2.0.0 Ok: queued"

    @property
    def accepted(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._accepted)

    def counts(self) -> Counter[str]:
        """How many times each recipient address was accepted (lower case)."""
        return Counter(rcpt for rcpt, _ in self.accepted)

    def clear(self) -> None:
        with self._lock:
            self._accepted.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_sink() -> Iterator[tuple[RecordingHandler, int]]:
    """A recording SMTP server on a free loopback port, for the duration of the block."""
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="sink.test", ready_timeout=10)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


class DsnSMTP(SMTP):
    """aiosmtpd refuses unknown MAIL/RCPT parameters (and upper-cases values); this one lets the
    DSN ones through and records the verbs' arguments as written, in its handler's `lines`."""

    def _getparams(self, params: Any) -> Any:
        result = super()._getparams(params)
        if result is not None:
            for name in ("RET", "ENVID", "NOTIFY", "ORCPT"):
                result.pop(name, None)
        return result

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.event_handler.lines.append(f"MAIL {arg}")
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.event_handler.lines.append(f"RCPT {arg}")
        await super().smtp_RCPT(arg)


class DsnController(Controller):
    def factory(self) -> SMTP:
        return DsnSMTP(self.handler, **self.SMTP_kwargs)


class _Handler:
    def __init__(self, replies: dict[str, str], dsn: bool = False) -> None:
        self.replies = replies
        self.dsn = dsn
        self.lines: list[str] = []  # MAIL and RCPT arguments as written (dsn=True only)
        self.delivered: list[list[str]] = []
        self.messages: list[bytes] = []
        self.senders: list[str] = []  # each message's MAIL FROM

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-DSN", responses[-1]] if self.dsn else responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.replies.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.delivered.append(list(envelope.rcpt_tos))
        self.messages.append(bytes(envelope.original_content or b""))
        self.senders.append(str(envelope.mail_from))
        return "250 2.0.0 queued"


class SmtpSink:
    def __init__(self, replies: dict[str, str] | None = None, *, dsn: bool = False) -> None:
        self.handler = _Handler({k.lower(): v for k, v in (replies or {}).items()}, dsn)
        self.port = free_port()
        controller = DsnController if dsn else Controller
        self._controller = controller(self.handler, hostname="127.0.0.1", port=self.port)

    @property
    def lines(self) -> list[str]:
        return self.handler.lines

    @property
    def delivered(self) -> list[list[str]]:
        return self.handler.delivered

    def options(self, **extra: Any) -> list[str]:
        """`--set` arguments for an smtp service that sends here."""
        opts = {"host": "127.0.0.1", "port": self.port, "security": "none", **extra}
        out: list[str] = []
        for key, value in opts.items():
            out += ["--set", f"{key}={value}"]
        return out

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()
