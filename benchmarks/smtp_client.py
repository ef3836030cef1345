"""SMTP clients side by side on one connection (issue 17, point 3): msg/s and client CPU per message.

usage: python benchmarks/smtp_client.py [-n N] [--runs R] [--quick] [--sink smtp-sink|pysink] [--json FILE]

N messages of ~1 KiB, one recipient each, over one reused connection to a discarding sink
(Postfix's `smtp-sink`, or `pysink.py` when it is missing), by:

* `smtplib`: the standard library, `sendmail` per message (lock-step: it cannot pipeline);
* `aiosmtplib`: the calls the smtp transport made before it had its own client (MAIL and RCPT
  with `execute_command`, then `data`), lock-step;
* `postroom lock-step`: postroom's client (src/postroom/transports/smtp_client.py) as it talks to a
  server that does not offer PIPELINING;
* `postroom pipelined`: the same client with PIPELINING (MAIL, RCPT and DATA in one write), on
  plain asyncio and on uvloop (when installed: `pip install postroom[fast]`);
* `transport`: the whole smtp transport's `submit_message` per message (MIME rendering from the
  MAPI properties, the envelope checks, the pool, pipelined), on asyncio and uvloop.

The runs are interleaved (every client once, then every client again, R times) so that load
drift on a shared machine hits them all; each figure is the median of the R runs. CPU is this
process's (user + system) over the run divided by N: the client's cost, not the sink's.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import smtplib
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import common as C

from postroom.mapi import tags as T
from postroom.mapi.entryid import MAPIUID
from postroom.mapi.flags import LogonFlags
from postroom.mapi.message import MessageData, Recipient
from postroom.store.slots import LocalSlots
from postroom.transports.smtp import SMTPLogon, SMTPProvider
from postroom.transports.spi import OutboundMessage, OutboundRecipient, ProviderContext

try:
    import uvloop
except ImportError:
    uvloop = None


Runner = Callable[[int, list[bytes]], None]


def run_smtplib(port: int, msgs: list[bytes]) -> None:
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.ehlo()
        for m in msgs:
            s.sendmail(C.SENDER, [C.RECIPIENT], m)


def on_loop(coro: Awaitable[None], loop: str) -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" and uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)  # type: ignore[arg-type]


def run_aiosmtplib(port: int, msgs: list[bytes]) -> None:
    import aiosmtplib

    async def go() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="bench.test", start_tls=False)
        await smtp.connect()
        await smtp.ehlo()
        mail, rcpt = b"FROM:<" + C.SENDER.encode() + b">", b"TO:<" + C.RECIPIENT.encode() + b">"
        size = smtp.supports_extension("size")
        for m in msgs:
            options = [f"SIZE={len(m)}".encode()] if size else []
            await smtp.execute_command(b"MAIL", mail, *options)
            await smtp.execute_command(b"RCPT", rcpt)
            await smtp.data(m)
        await smtp.quit()

    on_loop(go(), "asyncio")


def run_postroom(pipelined: bool, loop: str) -> Runner:
    def run(port: int, msgs: list[bytes]) -> None:
        # Imported here: with --clients transport, the script also measures an older checkout
        # (PYTHONPATH=…/src), whose transport has no client of its own.
        from postroom.transports.smtp_client import SMTPClient, wire_content

        async def go() -> None:
            client = await SMTPClient.open("127.0.0.1", port, timeout=30, helo_name="bench.test")
            use_pipelining = pipelined and client.supports("pipelining")
            rcpt, data = b"RCPT TO:<" + C.RECIPIENT.encode() + b">\r\n", b"DATA\r\n"
            for m in msgs:
                content = wire_content(m)  # once per message, as the transport does
                mail = b"MAIL FROM:<%s> SIZE=%d\r\n" % (C.SENDER.encode(), len(m))
                if use_pipelining:
                    await client.pipeline([mail, rcpt, data])
                    replies = [await client.read_reply() for _ in range(3)]
                else:
                    replies = [await client.command(mail), await client.command(rcpt), await client.command(data)]
                assert replies[-1].code == 354, replies
                reply = await client.send_content(content, 300)
                assert reply.code == 250, reply
            await client.quit(5)

        on_loop(go(), loop)

    return run


class _Support:
    """The little a transport asks of the spooler, for a transport driven without one."""

    def __init__(self) -> None:
        self.slots = LocalSlots()

    def acquire_connection_slot(self, limit: int) -> int | None:
        return self.slots.try_acquire("transport", limit)

    def release_connection_slot(self, slot: int) -> None:
        self.slots.release("transport", slot)

    def wait_for_connection_slot(self, waiting: bool) -> None:
        pass

    def should_give_back_connection_slot(self, limit: int) -> bool:
        return False


_refs = itertools.count(1)


def run_transport(loop: str) -> Runner:
    def run(port: int, msgs: list[bytes]) -> None:
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "helo_name": "bench.test",
            "connections": 1,
            "max_messages_per_connection": len(msgs) + 1,
        }
        context = ProviderContext(
            service_name="bench",
            kind="smtp",
            provider_uid=MAPIUID(bytes(16)),
            options=options,
            profile_dir=Path("."),
            support=_Support(),  # type: ignore[arg-type]
        )
        logon = SMTPProvider(context).logon(LogonFlags.NONE)
        assert isinstance(logon, SMTPLogon)
        body = C.BODY

        async def go() -> None:
            for i in range(len(msgs)):
                row = Recipient(
                    props={T.PR_DISPLAY_NAME: "B", T.PR_ADDRTYPE: "SMTP", T.PR_EMAIL_ADDRESS: C.RECIPIENT},
                    row_id=0,
                )
                data = MessageData(
                    props={
                        T.PR_MESSAGE_CLASS: "IPM.Note",
                        T.PR_SUBJECT: f"bench {i}",
                        T.PR_BODY: body,
                        T.PR_SENDER_ADDRTYPE: "SMTP",
                        T.PR_SENDER_EMAIL_ADDRESS: C.SENDER,
                    },
                    recipients=[row],
                )
                message = OutboundMessage(data, [OutboundRecipient(row, False)], ref=next(_refs), deferred=False)
                result = await logon.submit_message(message, 0)
                assert message.recipients[0].mark is not None and message.recipients[0].mark.delivered, result
            await logon.logoff()

        on_loop(go(), loop)

    return run


def measure(run: Runner, port: int, msgs: list[bytes]) -> tuple[float, float]:
    """(msg/s, CPU µs per message) of one run."""
    gc.collect()
    cpu0, t0 = time.process_time(), time.perf_counter()
    run(port, msgs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return len(msgs) / wall, cpu / len(msgs) * 1e6


def main() -> None:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000, help="messages per run (default 5000)")
    ap.add_argument("--sink", choices=("smtp-sink", "pysink"), default="smtp-sink")
    ap.add_argument("--clients", default="", help="only these clients, comma-separated (e.g. 'transport (asyncio)')")
    args = ap.parse_args()
    n = 200 if args.quick else args.n
    runs = args.runs or (1 if args.quick else 3)
    clients: dict[str, Runner] = {
        "smtplib": run_smtplib,
        "aiosmtplib": run_aiosmtplib,
        "postroom lock-step": run_postroom(False, "asyncio"),
        "postroom pipelined": run_postroom(True, "asyncio"),
        "transport (asyncio)": run_transport("asyncio"),
    }
    if uvloop is not None:
        clients["postroom pipelined, uvloop"] = run_postroom(True, "uvloop")
        clients["transport (uvloop)"] = run_transport("uvloop")
    if args.clients:
        wanted = [name.strip() for name in args.clients.split(",")]
        clients = {name: clients[name] for name in wanted}
    msgs = C.serialised(n)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    with C.Sink.start(prefer=args.sink) as sink:
        for r in range(runs):
            for name, run in clients.items():
                results[name].append(measure(run, sink.port, msgs))
                C.log(f"run {r + 1}/{runs} {name}: {results[name][-1][0]:,.0f} msg/s")
        kind = sink.kind
    table = {
        name: {
            "msg_per_s": statistics.median(rate for rate, _ in got),
            "cpu_us_per_msg": statistics.median(cpu for _, cpu in got),
            "runs": got,
        }
        for name, got in results.items()
    }
    base = table.get("aiosmtplib", next(iter(table.values())))
    lines = [f"{'client':<28} {'msg/s':>8} {'CPU µs/msg':>11} {'vs aiosmtplib':>14}"]
    for name, row in table.items():
        lines.append(
            f"{name:<28} {row['msg_per_s']:>8,.0f} {row['cpu_us_per_msg']:>11,.0f} "
            f"{row['msg_per_s'] / base['msg_per_s']:>13.2f}×"
        )
    notes = [
        f"N = {n} messages of ~1 KiB, one recipient, one connection, sink: {kind}; "
        f"median of {runs} interleaved run(s); load average {' '.join(f'{x:.2f}' for x in C.os.getloadavg())}",
    ]
    if uvloop is None:
        notes.append("uvloop is not installed (pip install 'postroom[fast]'): its rows are left out")
    C.emit({"figure": "SMTP clients on one connection", "lines": lines, "notes": notes, "table": table}, args.json)


if __name__ == "__main__":
    main()
