"""An SMTP server on 127.0.0.1 in this test process (aiosmtpd), with per-recipient replies.

    with SmtpSink(replies={"busy@x.test": "450 4.2.1 mailbox busy"}) as sink:
        ... deliver to 127.0.0.1:sink.port ...
        assert sink.delivered == [["ok@x.test"]]

`replies` maps a recipient address to the reply RCPT gets; every other recipient is accepted.
"""

from __future__ import annotations

import socket
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Handler:
    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies
        self.delivered: list[list[str]] = []
        self.messages: list[bytes] = []

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
        return "250 2.0.0 queued"


class SmtpSink:
    def __init__(self, replies: dict[str, str] | None = None) -> None:
        self.handler = _Handler({k.lower(): v for k, v in (replies or {}).items()})
        self.port = free_port()
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

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
