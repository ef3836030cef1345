"""A counting SMTP sink with injected faults, for the crash harness and the soak (benchmarks/soak.py).

    usage: sink.py PORT LOGFILE [--data-delay MIN:MAX] [--refuse-rcpt-until EPOCH]

Faults are chosen by the recipient's local part, so the harness knows what to expect:
  ok-*        accepted
  rcpt4xx-*   451 4.3.0 at RCPT the first time, accepted afterwards
  rcpt5xx-*   550 5.1.1 at RCPT, always (the sender must get an NDR)
  data421-*   421 4.3.2 after DATA the first time (nothing delivered), accepted afterwards
  drop-*      the connection is dropped after DATA the first time (nothing delivered), accepted afterwards
Two options make a whole server slow or failing, for the soak: `--data-delay 0.2:0.5` answers
the end of DATA after a random delay between those seconds; `--refuse-rcpt-until EPOCH` answers
every RCPT with 451 until that time (time.time()), then accepts.
Every accepted message is logged as one line "<Message-ID> <recipient>". The connections are
counted in LOGFILE.connections: one line "<open now> <most open at once> <opened in all>" per change.
"""

from __future__ import annotations

import argparse
import asyncio
import random
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
    def __init__(self, log: Path, data_delay: tuple[float, float] = (0.0, 0.0), refuse_until: float = 0.0) -> None:
        self.log = log.open("a", buffering=1)
        self.data_delay = data_delay
        self.refuse_until = refuse_until

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if time.time() < self.refuse_until:
            return f"451 4.3.2 <{address}>: System not accepting network messages, try again later"
        local = address.split("@", 1)[0]
        if local.startswith("rcpt5xx-"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local.startswith("rcpt4xx-") and address not in SEEN:
            SEEN.add(address)
            return f"451 4.3.0 <{address}>: Temporary lookup failure"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_delay[1] > 0:
            await asyncio.sleep(random.uniform(*self.data_delay))
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


def seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(":")
    return float(low), float(high or low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("log", type=Path)
    parser.add_argument("--data-delay", type=seconds_range, default=(0.0, 0.0), metavar="MIN:MAX")
    parser.add_argument("--refuse-rcpt-until", type=float, default=0.0, metavar="EPOCH")
    args = parser.parse_args()
    log: Path = args.log
    CountingSMTP.log = log.with_name(log.name + ".connections")
    handler = FaultyHandler(log, args.data_delay, args.refuse_rcpt_until)
    controller = CountingController(handler, hostname="127.0.0.1", port=args.port, ready_timeout=10)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
