"""A counting SMTP sink with injected faults, for the crash harness. usage: sink.py PORT LOGFILE

Faults are chosen by the recipient's local part, so the harness knows what to expect:
  ok-*        accepted
  rcpt4xx-*   451 4.3.0 at RCPT the first time, accepted afterwards
  rcpt5xx-*   550 5.1.1 at RCPT, always (the sender must get an NDR)
  data421-*   421 4.3.2 after DATA the first time (nothing delivered), accepted afterwards
  drop-*      the connection is dropped after DATA the first time (nothing delivered), accepted afterwards
Every accepted message is logged as one line "<Message-ID> <recipient>". The connections are
counted in LOGFILE.connections: one line "<open now> <most open at once> <opened in all>" per change.
"""

from __future__ import annotations

import asyncio
import sys
import time
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import ClassVar

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

SEEN: set[str] = set()


class CountingSMTP(SMTP):
    """aiosmtpd's server, counting the connections open at once."""

    counts: ClassVar[list[int]] = [0, 0, 0]  # open now, most open at once, opened in all
    log: Path | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._count(+1)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._count(-1)
        super().connection_lost(error)

    def _count(self, change: int) -> None:
        counts = CountingSMTP.counts
        counts[0] += change
        counts[1] = max(counts[1], counts[0])
        counts[2] += max(change, 0)
        if CountingSMTP.log is not None:
            with CountingSMTP.log.open("a") as out:
                out.write(" ".join(map(str, counts)) + "\n")


class CountingController(Controller):
    def factory(self) -> SMTP:
        return CountingSMTP(self.handler, **self.SMTP_kwargs)


class FaultyHandler:
    def __init__(self, log: Path) -> None:
        self.log = log.open("a", buffering=1)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local = address.split("@", 1)[0]
        if local.startswith("rcpt5xx-"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local.startswith("rcpt4xx-") and address not in SEEN:
            SEEN.add(address)
            return f"451 4.3.0 <{address}>: Temporary lookup failure"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for rcpt in envelope.rcpt_tos:
            local = rcpt.split("@", 1)[0]
            key = "data:" + rcpt
            if local.startswith("data421-") and key not in SEEN:
                SEEN.add(key)
                return "421 4.3.2 Service shutting down, try later"
            if local.startswith("drop-") and key not in SEEN:
                SEEN.add(key)
                server.transport.close()
                return "421 4.4.2 dropped"
        content = envelope.original_content or envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        message_id = BytesHeaderParser().parsebytes(raw).get("Message-ID", "<none>").strip()
        for rcpt in envelope.rcpt_tos:
            self.log.write(f"{message_id} {rcpt}\n")
        return "250 2.0.0 queued"


def main() -> None:
    port, log = int(sys.argv[1]), Path(sys.argv[2])
    CountingSMTP.log = log.with_name(log.name + ".connections")
    controller = CountingController(FaultyHandler(log), hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
