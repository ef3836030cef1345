"""A minimal discarding SMTP server (asyncio, no dependencies): the stand-in when `smtp-sink` is missing.

usage: pysink.py PORT [--soft-reject rcpt|mail|data]

Answers EHLO/HELO/MAIL/RCPT/DATA/RSET/NOOP/QUIT, supports PIPELINING and 8BITMIME, and throws
the message away. With --soft-reject a command is answered with a 4xx (like `smtp-sink -r`).
Much slower than Postfix's C `smtp-sink`; the benchmarks say so when they fall back to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, soft: set[str]) -> None:
    def reply(text: str) -> None:
        writer.write(text.encode() + b"\r\n")

    reply("220 pysink ESMTP")
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].decode("ascii", "replace").upper().strip()
            if verb in ("EHLO",):
                writer.write(b"250-pysink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n")
            elif verb == "HELO":
                reply("250 pysink")
            elif verb == "MAIL":
                reply("451 4.3.0 soft reject" if "mail" in soft else "250 2.1.0 Ok")
            elif verb == "RCPT":
                reply("451 4.3.0 soft reject" if "rcpt" in soft else "250 2.1.5 Ok")
            elif verb == "DATA":
                if "data" in soft:
                    reply("451 4.3.0 soft reject")
                    continue
                reply("354 End data with <CR><LF>.<CR><LF>")
                await writer.drain()
                while True:
                    chunk = await reader.readline()
                    if not chunk or chunk == b".\r\n":
                        break
                reply("250 2.0.0 Ok: queued")
            elif verb == "RSET" or verb == "NOOP":
                reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                reply("221 2.0.0 Bye")
                await writer.drain()
                break
            else:
                reply("502 5.5.2 Error: command not recognized")
            if reader._buffer:  # type: ignore[attr-defined]  # pipelined commands waiting: answer together
                continue
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--soft-reject", default="")
    args = ap.parse_args()
    soft = {c.strip().lower() for c in args.soft_reject.split(",") if c.strip()}
    server = await asyncio.start_server(lambda r, w: session(r, w, soft), "127.0.0.1", args.port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
