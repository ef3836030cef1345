"""How the spooler calls a transport's methods: coroutines awaited, plain functions in a worker
thread, and plain functions marked `@nonblocking` on the event loop (no thread hop, issue 17)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from postroom.mapi.flags import EndMessageFlags
from postroom.spooler.transports import call_transport
from postroom.transports.maildir import MaildirLogon
from postroom.transports.smtp import SMTPLogon
from postroom.transports.spi import Registration, TransportLogon, is_nonblocking, nonblocking


def _thread_of(fn: Callable[[], str]) -> str:
    async def main() -> tuple[str, str]:
        seen = await call_transport(fn)
        return seen, threading.current_thread().name

    seen, loop_thread = asyncio.run(main())
    return "loop" if seen == loop_thread else "worker"


def test_a_plain_transport_method_runs_in_a_worker_thread_so_that_it_may_block() -> None:
    def blocking() -> str:
        return threading.current_thread().name

    assert _thread_of(blocking) == "worker"


def test_a_plain_method_marked_nonblocking_runs_on_the_event_loop() -> None:
    @nonblocking
    def cheap() -> str:
        return threading.current_thread().name

    assert _thread_of(cheap) == "loop"


def test_the_mark_holds_for_bound_methods_and_is_not_inherited_by_an_override() -> None:
    class Quiet(TransportLogon):
        def address_types(self) -> Registration:
            raise NotImplementedError

        def end_message(self, ref: int) -> EndMessageFlags:  # overridden, unmarked: it may block
            return EndMessageFlags.NONE

    assert is_nonblocking(TransportLogon.end_message)
    assert not is_nonblocking(Quiet.end_message)


def test_the_end_message_of_smtp_and_maildir_needs_no_worker_thread() -> None:
    assert is_nonblocking(SMTPLogon.end_message)
    assert is_nonblocking(MaildirLogon.end_message)
    assert not is_nonblocking(MaildirLogon.submit_message)  # it writes files: a worker thread
