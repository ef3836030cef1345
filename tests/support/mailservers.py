"""Fault-injecting IMAP and POP3 servers on loopback, for the inbound transports' tests.

Dovecot (tests/integration/peers.py) is the peer for the normal path. These small asyncio servers
answer the way a broken or hostile server does, on demand and message by message: a temporary
refusal (``NO [UNAVAILABLE]``, ``-ERR [SYS/TEMP]``), ``BODY[] NIL``, a reply trickled one byte at a
time, a literal or a message far bigger than announced, duplicate UIDLs. Each server runs its own
event loop in a thread, so the transports under test (blocking clients) can talk to it from the
test's thread. They speak just enough of each protocol for imapclient and poplib, and record what
the client did (commands, fetches, deletions, replies it hung up on).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

#: The literal size a hostile IMAP server announces: reading it at once would reserve 8 GB.
HOSTILE_LITERAL = 8_000_000_000


class Fault(StrEnum):
    """What the server does instead of returning a message; each fetch of it uses up one."""

    REFUSE = "refuse"  # IMAP: NO [UNAVAILABLE]; POP3: -ERR [SYS/TEMP]
    NIL = "nil"  # IMAP: BODY[] NIL
    TRICKLE = "trickle"  # the whole reply, one byte every `trickle_seconds`
    HUGE = "huge"  # IMAP: a literal of HOSTILE_LITERAL octets; POP3: `flood_bytes` of text


@dataclass
class Mail:
    """One message in the fake mailbox or maildrop."""

    data: bytes
    faults: list[Fault] = field(default_factory=list)
    claimed_size: int | None = None  # what RFC822.SIZE / LIST say; None: the real size
    uidl: str = ""  # POP3; "" gets "uidl-<n>"
    uid: int = 0  # IMAP; assigned when added
    flags: set[str] = field(default_factory=set)
    deleted: bool = False  # expunged, moved away or deleted at QUIT
    moved_to: str = ""
    fetched: int = 0  # whole-message fetches served (BODY[] / RETR), faults included

    @property
    def size(self) -> int:
        return len(self.data) if self.claimed_size is None else self.claimed_size


class _Server:
    """An asyncio server in a thread of its own; subclasses hold the conversation."""

    greeting = b""

    def __init__(self, *, trickle_seconds: float = 0.25, trickle_greeting: bool = False) -> None:
        self.mails: list[Mail] = []
        self.trickle_seconds = trickle_seconds
        self.trickle_greeting = trickle_greeting
        self.commands: list[str] = []
        self.connections = 0
        self.cut_short = 0  # replies the client hung up on before they were complete
        self.sent_in_cut_short = 0  # octets of those replies the server managed to send
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=type(self).__name__, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def add(self, mail: Mail) -> Mail:
        self.mails.append(mail)
        return mail

    def live(self) -> list[Mail]:
        return [m for m in self.mails if not m.deleted]

    # --- plumbing -------------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            if self.trickle_greeting:
                await self.trickle(reader, writer, self.greeting)
            else:
                writer.write(self.greeting)
            await self.converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def command(self, reader: asyncio.StreamReader) -> str | None:
        line = await reader.readline()
        if not line:
            return None
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        self.commands.append(text)
        return text

    async def trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bool:
        """Send `data` one byte every `trickle_seconds`; False when the client hung up first.

        The client sends nothing while it waits for this reply, so the end of its stream (or an
        error) means it hung up, noticed at once rather than at the next write."""
        hangup = asyncio.ensure_future(reader.read(1))
        try:
            for n in range(len(data)):
                if hangup.done() and (hangup.exception() is not None or not hangup.result()):
                    self._cut_short(n)
                    return False
                try:
                    writer.write(data[n : n + 1])
                    await writer.drain()
                except ConnectionError:
                    self._cut_short(n)
                    return False
                await asyncio.wait({hangup}, timeout=self.trickle_seconds)
            return True
        finally:
            hangup.cancel()

    async def wait_for_hangup(self, reader: asyncio.StreamReader, sent: int) -> None:
        """Send nothing more; count the reply as cut short once the client goes away."""
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        self._cut_short(sent)

    def replies_cut_short(self, expected: int, timeout: float = 10.0) -> int:
        """`cut_short` once it reaches `expected` (the server notices a hang-up a moment after the
        client made it), or as it is after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.cut_short < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.cut_short

    def _cut_short(self, sent: int) -> None:
        self.cut_short += 1
        self.sent_in_cut_short += sent


# --- IMAP ------------------------------------------------------------------------------------------------

_SET_ITEM = re.compile(r"(\d+|\*)(?::(\d+|\*))?")


def _uid_set(text: str, highest: int) -> set[int]:
    """An IMAP sequence set of UIDs ("1,4:6,9:*") as the UIDs it names."""
    out: set[int] = set()
    for item in text.split(","):
        match = _SET_ITEM.fullmatch(item.strip())
        if match is None:
            continue
        first = highest if match.group(1) == "*" else int(match.group(1))
        last_text = match.group(2) or match.group(1)
        last = highest if last_text == "*" else int(last_text)
        low, high = sorted((first, last))
        out.update(range(low, high + 1))
    return out


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


class FakeIMAPServer(_Server):
    """One mailbox, INBOX (UIDVALIDITY 1), with UIDPLUS and MOVE; any login is accepted."""

    greeting = b"* OK [CAPABILITY IMAP4rev1 UIDPLUS MOVE] fake IMAP server ready\r\n"
    capabilities = "IMAP4rev1 UIDPLUS MOVE"

    def __init__(self, **kwargs: float | bool) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.folders: dict[str, list[Mail]] = {}
        self._next_uid = 1

    def add(self, mail: Mail) -> Mail:
        mail.uid = self._next_uid
        self._next_uid += 1
        return super().add(mail)

    def body_fetches(self) -> list[int]:
        """The UIDs whose content the client asked for, in order."""
        out: list[int] = []
        for text in self.commands:
            match = re.match(r"\S+ UID FETCH (\S+) .*BODY", text, re.IGNORECASE)
            if match:
                out.extend(sorted(_uid_set(match.group(1), self._next_uid - 1)))
        return out

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            text = await self.command(reader)
            if text is None:
                return
            tag, _, rest = text.partition(" ")
            verb, _, args = rest.partition(" ")
            verb = verb.upper()
            if verb == "UID":
                sub, _, args = args.partition(" ")
                verb = f"UID {sub.upper()}"
            reply = await self.answer(verb, args, tag, reader, writer)
            if reply is None:
                return
            writer.write(reply)
            await writer.drain()
            if verb == "LOGOUT":
                return

    async def answer(
        self, verb: str, args: str, tag: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        ok = f"{tag} OK {verb} completed\r\n".encode()
        live = self.live()
        highest = max((m.uid for m in self.mails), default=0)
        if verb == "CAPABILITY":
            return f"* CAPABILITY {self.capabilities}\r\n".encode() + ok
        if verb in ("LOGIN", "NOOP", "CHECK", "CREATE"):
            if verb == "CREATE":
                self.folders.setdefault(_unquote(args), [])
            return ok
        if verb in ("SELECT", "EXAMINE"):
            return (
                f"* FLAGS (\\Seen \\Deleted)\r\n* {len(live)} EXISTS\r\n* 0 RECENT\r\n"
                f"* OK [UIDVALIDITY 1] UIDs valid\r\n* OK [UIDNEXT {highest + 1}] next\r\n"
                f"{tag} OK [READ-WRITE] {verb} completed\r\n"
            ).encode()
        if verb == "LIST":
            name = _unquote(args.rpartition(" ")[2])
            found = f'* LIST () "/" "{name}"\r\n' if name in self.folders or name == "INBOX" else ""
            return found.encode() + ok
        if verb == "UID SEARCH":
            spec = args.upper().replace("UID ", "").strip()
            wanted = _uid_set(spec, highest) if spec != "ALL" else {m.uid for m in live}
            found = sorted(m.uid for m in live if m.uid in wanted)
            return f"* SEARCH {' '.join(map(str, found))}".rstrip().encode() + b"\r\n" + ok
        if verb == "UID FETCH":
            return await self._fetch(args, tag, ok, reader, writer)
        if verb == "UID STORE":
            uid_text, _, change = args.partition(" ")
            wanted = _uid_set(uid_text, highest)
            flags = set(re.findall(r"\\\w+", change))
            for mail in live:
                if mail.uid in wanted:
                    if change.lstrip().startswith("-"):
                        mail.flags -= flags
                    else:
                        mail.flags |= flags
            return ok
        if verb in ("EXPUNGE", "UID EXPUNGE"):
            wanted = _uid_set(args, highest) if verb == "UID EXPUNGE" else {m.uid for m in live}
            for mail in live:
                if mail.uid in wanted and "\\Deleted" in mail.flags:
                    mail.deleted = True
            return ok
        if verb in ("UID MOVE", "UID COPY"):
            uid_text, _, folder = args.partition(" ")
            wanted = _uid_set(uid_text, highest)
            name = _unquote(folder)
            if name not in self.folders:
                return f"{tag} NO [TRYCREATE] no such mailbox\r\n".encode()
            for mail in live:
                if mail.uid in wanted:
                    self.folders[name].append(mail)
                    if verb == "UID MOVE":
                        mail.deleted = True
                        mail.moved_to = name
            return ok
        if verb == "LOGOUT":
            return b"* BYE logging out\r\n" + ok
        return f"{tag} BAD unknown command\r\n".encode()

    async def _fetch(
        self, args: str, tag: str, ok: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        uid_text, _, items = args.partition(" ")
        items = items.upper()
        wanted = _uid_set(uid_text, max((m.uid for m in self.mails), default=0))
        body = "BODY" in items
        out = bytearray()
        for seq, mail in enumerate(self.live(), start=1):
            if mail.uid not in wanted:
                continue
            head = f"* {seq} FETCH (UID {mail.uid}"
            if "RFC822.SIZE" in items:
                head += f" RFC822.SIZE {mail.size}"
            if not body:
                out += (head + ")\r\n").encode()
                continue
            mail.fetched += 1
            fault = mail.faults.pop(0) if mail.faults else None
            if fault == Fault.REFUSE:
                return f"{tag} NO [UNAVAILABLE] message temporarily unavailable\r\n".encode()
            if fault == Fault.NIL:
                out += (head + " BODY[] NIL)\r\n").encode()
                continue
            if fault == Fault.HUGE:
                start = (head + f" BODY[] {{{HOSTILE_LITERAL}}}\r\n").encode() + mail.data[:100]
                writer.write(bytes(out) + start)
                await writer.drain()
                await self.wait_for_hangup(reader, len(start))
                return None
            out += (head + f" BODY[] {{{len(mail.data)}}}\r\n").encode() + mail.data + b")\r\n"
            if fault == Fault.TRICKLE:
                return None if not await self.trickle(reader, writer, bytes(out) + ok) else b""
        return bytes(out) + ok


# --- POP3 ------------------------------------------------------------------------------------------------


def _dot_stuffed(data: bytes) -> bytes:
    """A message as a POP3 multi-line reply carries it, terminator included."""
    lines = data.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return body + b".\r\n"


class FakePOP3Server(_Server):
    """One maildrop; any USER/PASS is accepted; DELE takes effect at QUIT, as RFC 1939 says."""

    greeting = b"+OK fake POP3 server ready\r\n"

    def __init__(self, *, flood_bytes: int = 20_000_000, **kwargs: float | bool) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.flood_bytes = flood_bytes
        self._retr_log: list[Mail] = []

    def add(self, mail: Mail) -> Mail:
        if not mail.uidl:
            mail.uidl = f"uidl-{len(self.mails) + 1}"
        return super().add(mail)

    def retrieved(self) -> list[str]:
        """The UIDLs of the messages the client sent RETR for, in order (faults included)."""
        return [m.uidl for m in self._retr_log]

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        drop: list[Mail] = []
        marked: set[int] = set()
        while True:
            text = await self.command(reader)
            if text is None:
                return  # no QUIT: nothing is deleted
            verb, _, args = text.partition(" ")
            verb = verb.upper()
            number = int(args.split()[0]) if args.split() and args.split()[0].isdigit() else 0
            mail = drop[number - 1] if 0 < number <= len(drop) and number not in marked else None
            if verb in ("USER", "NOOP"):
                reply = b"+OK\r\n"
            elif verb == "PASS":
                drop = self.live()
                reply = b"+OK logged in\r\n"
            elif verb == "CAPA":
                reply = b"+OK\r\nUSER\r\nUIDL\r\nTOP\r\n.\r\n"
            elif verb == "STAT":
                reply = f"+OK {len(drop)} {sum(m.size for m in drop)}\r\n".encode()
            elif verb in ("LIST", "UIDL"):
                rows = [
                    f"{n} {m.size if verb == 'LIST' else m.uidl}"
                    for n, m in enumerate(drop, start=1)
                    if n not in marked
                ]
                reply = ("+OK\r\n" + "".join(r + "\r\n" for r in rows) + ".\r\n").encode()
            elif verb == "TOP" and mail is not None:
                head = mail.data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                reply = b"+OK\r\n" + _dot_stuffed(head)
            elif verb == "RETR" and mail is not None:
                self._retr_log.append(mail)
                mail.fetched += 1
                fault = mail.faults.pop(0) if mail.faults else None
                if fault == Fault.REFUSE:
                    reply = b"-ERR [SYS/TEMP] message temporarily unavailable\r\n"
                elif fault == Fault.HUGE:
                    await self._flood(writer)
                    continue
                else:
                    reply = f"+OK {mail.size} octets\r\n".encode() + _dot_stuffed(mail.data)
                    if fault == Fault.TRICKLE:
                        if not await self.trickle(reader, writer, reply):
                            return
                        continue
            elif verb == "DELE" and mail is not None:
                marked.add(number)
                reply = b"+OK marked\r\n"
            elif verb == "RSET":
                marked.clear()
                reply = b"+OK\r\n"
            elif verb == "QUIT":
                for n in marked:
                    drop[n - 1].deleted = True
                writer.write(b"+OK bye\r\n")
                await writer.drain()
                return
            else:
                reply = b"-ERR no such message or command\r\n"
            writer.write(reply)
            await writer.drain()

    async def _flood(self, writer: asyncio.StreamWriter) -> None:
        """A message of `flood_bytes` octets, far more than LIST said."""
        line = b"X" * 998 + b"\r\n"
        sent = 0
        try:
            writer.write(b"+OK here it comes\r\n")
            while sent < self.flood_bytes:
                writer.write(line * 64)
                await writer.drain()
                sent += len(line) * 64
            writer.write(b".\r\n")
            await writer.drain()
        except ConnectionError:
            self._cut_short(sent)


S = TypeVar("S", bound=_Server)


@contextlib.contextmanager
def running(server: S) -> Iterator[S]:
    server.start()
    try:
        yield server
    finally:
        server.close()
