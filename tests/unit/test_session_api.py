"""The Python face under misuse: wrong argument types, a closed session, one session shared by threads.

Every misuse is a MAPIError with a MAPI code, never a stray AttributeError, RuntimeError or
"This event loop is already running".
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import postroom
from postroom.mapi import tags as T
from postroom.mapi.codes import ArgumentTypeError, HResult, MAPIError
from postroom.profile import Profile
from postroom.session import Draft, Session


@pytest.fixture
def profile(tmp_path: Path) -> Profile:
    return Profile.create(tmp_path / "p")  # the default maildir transport for localhost


@pytest.fixture
def session(profile: Profile) -> Iterator[Session]:
    with postroom.logon(profile) as s:
        yield s


# --- argument types ----------------------------------------------------------------------------

WRONG_TYPES: list[tuple[str, Any]] = [
    ("to(5)", lambda s, d: d.to(5)),
    ("to(None)", lambda s, d: d.to(None)),
    ("to(b'...')", lambda s, d: d.to(b"bob@localhost")),
    ("cc(['a'])", lambda s, d: d.cc(["bob@localhost"])),
    ("add_recipient(name=3)", lambda s, d: d.add_recipient("bob@localhost", name=3)),
    ("add_recipient(entry_id='x')", lambda s, d: d.add_recipient(entry_id="00")),
    ("subject = 5", lambda s, d: setattr(d, "subject", 5)),
    ("set('tag', 1)", lambda s, d: d.set("PR_SUBJECT", 1)),
    ("attach_bytes(5, b'')", lambda s, d: d.attach_bytes(5, b"")),
    ("attach_bytes('a', 'text')", lambda s, d: d.attach_bytes("a.txt", "text")),
    ("attach_file(5)", lambda s, d: d.attach_file(5)),
    ("open_message(None)", lambda s, d: s.open_message(None)),
    ("open_message(1.5)", lambda s, d: s.open_message(1.5)),
    ("open_message(True)", lambda s, d: s.open_message(True)),
    ("open_message([])", lambda s, d: s.open_message([])),
    ("abort_submit(None)", lambda s, d: s.abort_submit(None)),
    ("abort_submit(object())", lambda s, d: s.abort_submit(object())),
    ("hold(1, reason=2)", lambda s, d: s.hold(1, reason=2)),
    ("retry(2.0)", lambda s, d: s.retry(2.0)),
    ("folder(None)", lambda s, d: s.folder(None)),
    ("list_messages('Inbox', limit='5')", lambda s, d: s.list_messages("Inbox", limit="5")),
    ("create_message(5)", lambda s, d: s.create_message(5)),
    ("route('bob@localhost')", lambda s, d: s.route("bob@localhost")),
    ("route([5])", lambda s, d: s.route([5])),
    ("deliver('all')", lambda s, d: s.deliver("all")),
    ("set_mode(1)", lambda s, d: s.set_mode(1)),
    ("flush(None)", lambda s, d: s.flush(None)),
    ("add_service('maildir', 5)", lambda s, d: s.add_service("maildir", 5)),
    ("set_transport_order('local')", lambda s, d: s.set_transport_order("local")),
    ("submit_many(['x'])", lambda s, d: s.submit_many(["x"])),
    ("logon(5)", lambda s, d: postroom.logon(5)),
]


@pytest.mark.parametrize("call", [c for _, c in WRONG_TYPES], ids=[n for n, _ in WRONG_TYPES])
def test_a_wrong_argument_type_is_invalid_parameter_and_a_type_error(session: Session, call: Any) -> None:
    draft = session.create_message("x", "y")
    with pytest.raises(ArgumentTypeError) as info:
        call(session, draft)
    assert isinstance(info.value, MAPIError) and isinstance(info.value, TypeError)
    assert info.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert " must be " in info.value.message and ", not " in info.value.message
    assert draft.data.recipients == [] and draft.data.attachments == []


def test_a_bad_address_among_good_ones_adds_none_of_them(session: Session) -> None:
    draft = session.create_message("x", "y")
    with pytest.raises(ArgumentTypeError):
        draft.to("alice@localhost", 5)
    assert draft.data.recipients == []


def test_an_unknown_recipient_kind_is_refused(session: Session) -> None:
    with pytest.raises(MAPIError) as info:
        session.create_message("x").add_recipient("bob@localhost", kind=99)  # type: ignore[arg-type]
    assert info.value.code == HResult.MAPI_E_INVALID_PARAMETER and "RecipientType" in info.value.message


def test_the_right_types_still_work(session: Session) -> None:
    draft = session.create_message("Hello", "body").to("bob@localhost")
    draft.attach_bytes("a.txt", bytearray(b"abc"))
    mid = draft.submit()
    assert session.deliver(limit=None).delivered == 1
    for ref in (mid, str(mid), session.entry_id(mid)):
        assert session.open_message(ref).subject == "Hello"
    assert session.route(iter(["bob@localhost"]))[0].transport == "local"


# --- closing -------------------------------------------------------------------------------------


def test_closing_a_session_twice_does_nothing(profile: Profile) -> None:
    session = postroom.logon(profile)
    session.enum_adr_types()  # transports logged on, so close logs them off
    session.close()
    session.close()
    with session:  # and leaving a `with` block of a closed session too
        pass
    assert session.closed


CLOSED_CALLS: list[tuple[str, Any]] = [
    ("queue", lambda s, d: s.queue()),
    ("open_message", lambda s, d: s.open_message(1)),
    ("create_message", lambda s, d: s.create_message("x")),
    ("enum_adr_types", lambda s, d: s.enum_adr_types()),
    ("deliver", lambda s, d: s.deliver()),
    ("route", lambda s, d: s.route(["bob@localhost"])),
    ("set_mode", lambda s, d: s.set_mode("offline")),
    ("services", lambda s, d: s.services()),
    ("add_service", lambda s, d: s.add_service("maildir", "other", {"domains": ["other.test"]})),
    ("draft.submit", lambda s, d: d.submit()),
    ("status", lambda s, d: s.status()),
]


@pytest.mark.parametrize("call", [c for _, c in CLOSED_CALLS], ids=[n for n, _ in CLOSED_CALLS])
def test_a_closed_session_answers_end_of_session(profile: Profile, call: Any) -> None:
    session = postroom.logon(profile)
    draft: Draft = session.create_message("x", "y").to("bob@localhost")
    session.close()
    with pytest.raises(MAPIError) as info:
        call(session, draft)
    assert info.value.code == HResult.MAPI_E_END_OF_SESSION
    assert [s.name for s in Profile.load(profile.directory).services] == ["local"]  # nothing saved either


def test_an_async_session_closes_once_and_then_answers_end_of_session(profile: Profile) -> None:
    async def main() -> None:
        session = postroom.alogon(profile)
        await session.enum_adr_types()
        await session.close()
        await session.close()
        with pytest.raises(MAPIError) as info:
            await session.deliver()
        assert info.value.code == HResult.MAPI_E_END_OF_SESSION

    asyncio.run(main())


# --- threads -------------------------------------------------------------------------------------


def test_one_session_shared_by_threads_serves_every_call(session: Session) -> None:
    errors: list[BaseException] = []
    delivered: list[int] = []  # list.append is atomic; `+=` on a shared int is not
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        try:
            for i in range(5):
                session.create_message(f"{n}/{i}", "body").to("bob@localhost").submit()
                assert "SMTP" in session.enum_adr_types()
                delivered.append(session.deliver().delivered)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(delivered) == 40
    assert len(session.list_messages("Sent Items")) == 40


def test_a_session_inside_a_running_event_loop_says_to_use_alogon(session: Session) -> None:
    async def main() -> None:
        with pytest.raises(MAPIError) as info:
            session.deliver()
        assert info.value.code == HResult.MAPI_E_CALL_FAILED and "alogon" in info.value.message

    asyncio.run(main())
    assert session.deliver().processed == 0  # the session is still fine afterwards


def test_a_sender_with_a_non_ascii_domain_gets_an_ascii_message_id(tmp_path: Path) -> None:
    """An RFC 6532 sender (`send --eml` of a message with raw UTF-8 headers and no Message-ID)
    gets its domain in IDNA form in the Message-ID, which must be ASCII, instead of an NDR."""
    profile = Profile.create(tmp_path / "p")
    profile.settings["sender_address"] = "jdöe@mächine.example"
    profile.save()
    with postroom.logon(profile) as session:
        draft = session.create_message("Säying Hello", "body\n")
        draft.to("bob@localhost")
        mid = draft.submit()
        message_id = str(session.open_message(mid).get(T.PR_INTERNET_MESSAGE_ID))
    assert message_id.isascii()
    assert message_id.endswith("@xn--mchine-bua.example>")


# --- submit_mime's DSN requests, per recipient ---------------------------------------------------

NOTE = b"From: alice@localhost\nSubject: asked\n\nbody\n"


def test_submit_mime_keeps_each_recipients_own_dsn_request_over_the_one_for_all(session: Session) -> None:
    mid = session.submit_mime(
        NOTE,
        recipients=["bob@localhost", "carol@localhost", "dave@localhost"],
        dsn_notify="failure",
        recipient_dsn={
            "Bob@Localhost": {"notify": "success,delay", "orcpt": "RFC822;bob@example.org"},
            "Carol <carol@localhost>": {"orcpt": "rfc822;carol@example.org"},
        },
    )
    rows = {r.email_address: r.props for r in session.open_message(mid).recipients}
    asked = {a: (p.get(T.PR_POSTROOM_DSN_NOTIFY), p.get(T.PR_POSTROOM_DSN_ORCPT)) for a, p in rows.items()}
    assert asked == {
        "bob@localhost": ("SUCCESS,DELAY", "rfc822;bob@example.org"),
        "carol@localhost": ("FAILURE", "rfc822;carol@example.org"),
        "dave@localhost": ("FAILURE", None),
    }


@pytest.mark.parametrize(
    "recipient_dsn",
    [
        {"bob@localhost": {"notify": "sometimes"}},
        {"bob@localhost": {"orcpt": "bob@example.org"}},
        {"bob@localhost": {"orcpt": "rfc822;bob@example.org\r\nBcc: x@y"}},
        {"bob@localhost": {"ret": "full"}},
        {"bob@localhost": {"notify": 3}},
        {"carol@localhost": {"notify": "never"}},  # not a recipient of the message
        {"bob@localhost": {}, "BOB@localhost": {}},
        {"bob@@localhost": {}},
        {"bob@localhost": "never"},
        {3: {}},
        ["bob@localhost"],
    ],
)
def test_a_malformed_per_recipient_dsn_request_is_invalid_parameter_and_nothing_is_submitted(
    session: Session, recipient_dsn: Any
) -> None:
    with pytest.raises(MAPIError) as info:
        session.submit_mime(NOTE, recipients=["bob@localhost"], recipient_dsn=recipient_dsn)
    assert info.value.code == HResult.MAPI_E_INVALID_PARAMETER, info.value
    assert session.queue() == []
