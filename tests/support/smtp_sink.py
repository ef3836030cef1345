"""A small recording SMTP server on 127.0.0.1 (aiosmtpd, in a thread of the test process).

It accepts every recipient except those whose local part starts with `reject-` (550 5.1.1 at
RCPT, so the sender gets an NDR from the transport), and records each accepted recipient of
each message, so a test can count deliveries per address and see that none arrives twice.
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
