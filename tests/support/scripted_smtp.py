"""An SMTP server on 127.0.0.1 that says exactly what a test scripts, for the client's edge cases.

aiosmtpd is a well-behaved server; the SMTP client must also meet servers that hang after RCPT,
trickle a reply a byte at a time, drop the connection in the middle of a pipelined group, answer a
pipelined group only once all of it has arrived, or say 354 to DATA with no recipient accepted.
`ScriptedServer(script)` runs `script(peer)` for each connection on its own event loop in a thread;
`Peer` reads command lines and the message content and writes raw replies, and records every
command line it read so the test can look at the dialogue afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .smtp_sink import free_port

EHLO_PIPELINING = b"250-scripted.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"
EHLO_LOCK_STEP = b"250-scripted.test\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"


@dataclass
class Peer:
    """One client connection as the script sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    commands: list[str] = field(default_factory=list)  # every command line read, without CRLF
    contents: list[bytes] = field(default_factory=list)  # every message content read (up to the dot)

    async def command(self) -> str:
        """The next command line ('' when the client closed the connection)."""
        line = await self.reader.readline()
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if line:
            self.commands.append(text)
        return text

    async def commands_until(self, verb: str) -> list[str]:
        """Command lines up to and including the first that starts with `verb`, without replying."""
        lines = []
        while True:
            line = await self.command()
            if not line:
                return lines
            lines.append(line)
            if line.upper().startswith(verb):
                return lines

    async def group(self, *replies: bytes) -> list[str]:
        """A pipelined group: the command lines up to DATA, then `replies` in one write."""
        lines = await self.commands_until("DATA")
        await self.reply(*replies)
        return lines

    async def content(self) -> bytes:
        """The message content after a 354, up to the line with the dot alone (not included)."""
        chunks = []
        while True:
            line = await self.reader.readline()
            if not line or line == b".\r\n":
                break
            chunks.append(line)
        data = b"".join(chunks)
        self.contents.append(data)
        return data

    async def reply(self, *lines: bytes) -> None:
        self.writer.write(b"".join(lines))
        await self.writer.drain()

    async def greet(self, ehlo: bytes = EHLO_PIPELINING) -> None:
        """The greeting and the answer to EHLO."""
        await self.reply(b"220 scripted.test ESMTP\r\n")
        await self.command()
        await self.reply(ehlo)

    async def rset_and_quit(self) -> None:
        """Answer RSET with 250 and any other command with 221, until the client closes."""
        while line := await self.command():
            await self.reply(b"250 2.0.0 Ok\r\n" if line == "RSET" else b"221 2.0.0 Bye\r\n")

    async def until_closed(self) -> None:
        """Say nothing more; return when the client closes the connection."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(4096):
                pass


Script = Callable[[Peer], Awaitable[None]]


class ScriptedServer:
    """Runs `script` for each connection; `peers` are the connections seen so far."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = free_port()
        self.peers: list[Peer] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        self.peers.append(peer)
        try:
            await self.script(peer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    def __enter__(self) -> ScriptedServer:
        self._thread.start()

        async def start() -> asyncio.Server:
            return await asyncio.start_server(self._session, "127.0.0.1", self.port)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def commands(self) -> list[str]:
        return [line for peer in self.peers for line in peer.commands]

    @property
    def contents(self) -> list[bytes]:
        return [data for peer in self.peers for data in peer.contents]
