"""Driving the inbound mail-access transports (imap, pop3) in tests: through a session or the SPI."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import postroom
from postroom.mapi.flags import LogonFlags
from postroom.mapi.message import MessageData
from postroom.profile import Profile
from postroom.session import Session
from postroom.transports.imap import IMAPProvider
from postroom.transports.pop3 import POP3Provider
from postroom.transports.spi import InboundMessage, StatusRow

from .spi import provider_context


def make_profile(directory: Path, *services: tuple[str, str, dict[str, Any]]) -> Profile:
    """A profile with `services` (kind, name, options); an existing one is loaded as it is."""
    if (directory / "profile.toml").exists():
        return Profile.load(directory)
    profile = Profile.create(directory, with_defaults=False)
    for kind, name, opts in services:
        profile.add_service(kind, name, opts)
    profile.save()
    return profile


@contextlib.contextmanager
def session_for(directory: Path, *services: tuple[str, str, dict[str, Any]]) -> Iterator[Session]:
    with postroom.logon(make_profile(directory, *services)) as session:
        yield session


def inbox(session: Session) -> list[MessageData]:
    return [session.open_message(m.id) for m in session.list_messages(session.inbox)]


def subjects(session: Session) -> list[str]:
    return [m.subject for m in session.list_messages(session.inbox)]


def status_row(session: Session, name: str) -> StatusRow:
    return next(r for r in session.status_table() if r.display_name == name)


def logon(directory: Path, kind: str, opts: dict[str, Any], flags: LogonFlags = LogonFlags.NO_DIALOG) -> Any:
    """A logon driven straight through the SPI (no session, no store)."""
    directory.mkdir(parents=True, exist_ok=True)
    cls = IMAPProvider if kind == "imap" else POP3Provider
    context = provider_context(kind, f"{kind}-direct", cls.validate_options(opts), directory)
    return cls(context).logon(flags)


def run(logon_: Any, *, stop_after: int | None = None) -> list[MessageData]:
    """One receive run as the protocol manager does it: refs 1, 2, … until a message stays unsaved."""
    got: list[MessageData] = []
    ref = 1
    while stop_after is None or len(got) < stop_after:
        msg = InboundMessage(ref)
        logon_.start_message(msg)
        if not msg.saved:
            break
        got.append(msg.data)
        ref += 1
    return got
