"""The imap and pop3 transports against servers that misbehave (tests/support/mailservers.py).

Each test reproduces one failure found by trying postroom as a hostile server would (issue 14):
a message the server will not return must not be deleted or skipped for good, an unparseable one
is stored with its exact bytes before the server deletes it, duplicate UIDLs, a server that
trickles, and messages too large to fetch (announced honestly or not).
"""

from __future__ import annotations

import tracemalloc
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import pytest

from postroom import mime
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.flags import StatusCode
from postroom.mime import RAW_ATTACHMENT_NAME
from postroom.transports.imap import IMAPProvider
from postroom.transports.pop3 import POP3Provider

from support.inbound import inbox, logon, run, session_for, status_row, subjects
from support.mailservers import FakeIMAPServer, FakePOP3Server, Fault, Mail, running

pytestmark = pytest.mark.integration

PASSWORD_ENV = "POSTROOM_TEST_FAKE_SERVER_PASSWORD"
KINDS = ("imap", "pop3")


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-a-secret")


def server_for(kind: str, **kwargs: Any) -> FakeIMAPServer | FakePOP3Server:
    return FakeIMAPServer(**kwargs) if kind == "imap" else FakePOP3Server(**kwargs)


def options(server: FakeIMAPServer | FakePOP3Server, **extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "security": "none",
        "username": "box",
        "password_env": PASSWORD_ENV,
        "timeout": 5,
        **extra,
    }


def deleting(kind: str) -> dict[str, Any]:
    """The options that remove a delivered message from the server."""
    return {"after_download": "delete"} if kind == "imap" else {"leave_on_server": False}


def message(subject: str, body: str = "Hello there.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Sam Sender <sam@sender.test>"
    msg["To"] = "box@example.test"
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain="sender.test")
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP)


def fetched_content_of(server: FakeIMAPServer | FakePOP3Server, mail: Mail) -> bool:
    if isinstance(server, FakeIMAPServer):
        return mail.uid in server.body_fetches()
    return mail.uidl in server.retrieved()


# --- 3: a message the server would not return ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fault", "extra"),
    [
        ("imap", Fault.REFUSE, {"after_download": "delete"}),
        ("imap", Fault.NIL, {"after_download": "move:Archive"}),
        ("imap", Fault.REFUSE, {}),
        ("imap", Fault.NIL, {}),
        ("pop3", Fault.REFUSE, {"leave_on_server": False}),
        ("pop3", Fault.REFUSE, {}),
    ],
    ids=["imap-no-delete", "imap-nil-move", "imap-no-keep", "imap-nil-keep", "pop3-err-delete", "pop3-err-keep"],
)
def test_a_message_the_server_would_not_return_is_retried_later_and_never_deleted(
    tmp_path: Path, kind: str, fault: Fault, extra: dict[str, Any]
) -> None:
    with running(server_for(kind)) as server:
        if isinstance(server, FakeIMAPServer):
            server.folders["Archive"] = []
        shy = server.add(Mail(message("shy"), faults=[fault]))
        fine = server.add(Mail(message("fine")))
        removes = bool(extra)
        with session_for(tmp_path / "p", (kind, "in", options(server, **extra))) as session:
            assert session.receive() == 1
            assert subjects(session) == ["fine"]  # no note stands in for it
            row = status_row(session, "in")
            assert StatusCode.FAILURE in row.status_code
            assert "could not be fetched" in row.last_error and "tried again" in row.last_error
            assert ("NIL" if fault == Fault.NIL else "UNAVAILABLE" if kind == "imap" else "SYS/TEMP") in row.last_error
            assert not shy.deleted and not shy.flags  # left exactly as it was
            assert fine.deleted is removes
            assert session.receive() == 1  # the next run tries it again; now the server returns it
            assert subjects(session) == ["fine", "shy"]
            assert shy.deleted is removes
            assert StatusCode.FAILURE not in status_row(session, "in").status_code
            assert session.receive() == 0
            assert shy.fetched == 2 and fine.fetched == 1


@pytest.mark.parametrize("kind", KINDS)
def test_poll_says_mail_waits_while_a_message_the_server_refused_is_owed(tmp_path: Path, kind: str) -> None:
    """The spooler daemon receives only when poll() says so: an owed message must say so."""
    with running(server_for(kind)) as server:
        server.add(Mail(message("shy"), faults=[Fault.REFUSE]))
        server.add(Mail(message("fine")))
        direct = logon(tmp_path, kind, options(server))
        try:
            assert [m.subject for m in run(direct)] == ["fine"]
            assert direct.poll() is True
            assert [m.subject for m in run(direct)] == ["shy"]
            assert direct.poll() is False
        finally:
            direct.logoff()


# --- 4: unparseable mail keeps its exact bytes -----------------------------------------------------------

UNPARSEABLE = {
    "no-headers-latin-1": b"caf\xe9 cr\xe8me, no header at all\r\njust text\r\n",
    "latin-1-subject": b"From: a@sender.test\r\nTo: box@example.test\r\nSubject: caf\xe9 cr\xe8me\r\n\r\nbody\r\n",
    "broken-boundary": (
        b"From: a@sender.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="never-used"\r\n\r\n'
        b"--other\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsch\xc3\xb6n \xe9\r\n--other--\r\n"
    ),
    "body-not-its-charset": (
        b"From: a@sender.test\r\nSubject: x\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xe9\r\n"
    ),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sample", sorted(UNPARSEABLE))
def test_mail_that_cannot_be_read_exactly_is_stored_byte_for_byte_before_the_server_deletes_it(
    tmp_path: Path, kind: str, sample: str
) -> None:
    raw = UNPARSEABLE[sample]
    with running(server_for(kind)) as server:
        odd = server.add(Mail(raw))
        server.add(Mail(message("after it")))
        with session_for(tmp_path / "p", (kind, "in", options(server, **deleting(kind)))) as session:
            assert session.receive() == 2
            stored, after = inbox(session)
            assert after.subject == "after it"
            originals = [a for a in stored.attachments if a.filename == RAW_ATTACHMENT_NAME]
            assert len(originals) == 1
            assert originals[0].read_all() == raw  # byte for byte, from the store
            assert RAW_ATTACHMENT_NAME in stored.body  # the body says why it is there
            assert "\ufffd" not in stored.subject
            assert odd.deleted  # only now that its bytes are safe


def test_a_message_read_exactly_gets_no_copy_of_its_bytes(tmp_path: Path) -> None:
    clean = message("Grüße aus Köln", body="Schöne Grüße, ça va?\n")
    with running(FakeIMAPServer()) as server:
        server.add(Mail(clean))
        with session_for(tmp_path / "p", ("imap", "in", options(server))) as session:
            assert session.receive() == 1
            (stored,) = inbox(session)
            assert stored.subject == "Grüße aus Köln"
            assert stored.attachments == []
    assert mime.from_mime(clean).attachments == []


# --- 6: duplicate UIDLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("leave_on_server", [True, False])
def test_duplicate_uidls_deliver_each_message_exactly_once(tmp_path: Path, leave_on_server: bool) -> None:
    with running(FakePOP3Server()) as server:
        twins = [server.add(Mail(message(f"twin {n}"), uidl="same-uidl")) for n in (1, 2)]
        server.add(Mail(message("single")))
        service = ("pop3", "in", options(server, leave_on_server=leave_on_server))
        with session_for(tmp_path / "p", service) as session:
            assert session.receive() == 3
            assert sorted(subjects(session)) == ["single", "twin 1", "twin 2"]
            assert session.receive() == 0
            assert all(t.deleted is not leave_on_server for t in twins)
        server.add(Mail(message("later")))
        with session_for(tmp_path / "p", service) as session:
            assert session.receive() == 1
            assert sorted(subjects(session)) == ["later", "single", "twin 1", "twin 2"]


# --- 9: a server that trickles -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_reply_trickled_byte_by_byte_trips_the_read_deadline(tmp_path: Path, kind: str) -> None:
    """One byte every 0.2 s never trips the 5 s per-reply timeout; the 1.5 s read_timeout does."""
    with running(server_for(kind, trickle_seconds=0.2)) as server:
        slow = server.add(Mail(message("slow"), faults=[Fault.TRICKLE]))
        server.add(Mail(message("quick")))
        service = (kind, "in", options(server, read_timeout=1.5, **deleting(kind)))
        with session_for(tmp_path / "p", service) as session:
            assert session.receive() == 1
            assert subjects(session) == ["quick"]
            assert server.replies_cut_short(1) == 1  # postroom hung up before the trickle was over
            row = status_row(session, "in")
            assert StatusCode.FAILURE in row.status_code
            assert "read_timeout" in row.last_error and "tried again" in row.last_error
            assert not slow.deleted
            assert session.receive() == 1  # the server is quick again: the message comes
            assert subjects(session) == ["quick", "slow"]
            assert slow.deleted


@pytest.mark.parametrize("kind", KINDS)
def test_a_greeting_trickled_byte_by_byte_trips_the_read_deadline(tmp_path: Path, kind: str) -> None:
    with running(server_for(kind, trickle_seconds=0.2, trickle_greeting=True)) as server:
        server.add(Mail(message("waiting")))
        direct = logon(tmp_path, kind, options(server, read_timeout=1))
        try:
            assert direct.poll() is False
            assert server.replies_cut_short(1) == 1
            assert StatusCode.FAILURE in direct.status.status_code
            assert "read_timeout" in direct.status.last_error
        finally:
            direct.logoff()


# --- 15: messages too large ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_an_oversize_message_is_skipped_reported_once_and_left_on_the_server(tmp_path: Path, kind: str) -> None:
    with running(server_for(kind)) as server:
        big = server.add(Mail(message("big", body="x" * 20_000 + "\n")))
        small = server.add(Mail(message("small")))
        limited = options(server, max_message_bytes=10_000, **deleting(kind))
        direct = logon(tmp_path, kind, limited)
        try:
            got = run(direct)
            assert [m.subject for m in got][1:] == ["small"]
            note = got[0]
            assert note.subject.startswith("(message too large: ")
            assert f"{big.size} bytes" in note.body and "10000" in note.body and "max_message_bytes" in note.body
            assert not fetched_content_of(server, big)  # its size said enough: never downloaded
            assert not big.deleted and small.deleted
            assert "too large" in direct.status.status_string
            assert direct.poll() is False
            assert run(direct) == []  # said once; it does not block or repeat
            assert "too large" in direct.status.status_string  # but the status row still says so
        finally:
            direct.logoff()
        # With a limit it fits, it comes (and only now goes from the server).
        direct = logon(tmp_path, kind, {**limited, "max_message_bytes": 100_000})
        try:
            assert [m.subject for m in run(direct)] == ["big"]
            assert big.deleted
        finally:
            direct.logoff()


def test_a_hostile_imap_literal_size_is_refused_without_reserving_memory(tmp_path: Path) -> None:
    with running(FakeIMAPServer()) as server:
        liar = server.add(Mail(message("liar"), faults=[Fault.HUGE], claimed_size=200))
        server.add(Mail(message("honest")))
        with session_for(tmp_path / "p", ("imap", "in", options(server, after_download="delete"))) as session:
            tracemalloc.start()
            try:
                assert session.receive() == 2
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < 200_000_000  # the literal announced 8 GB
            note, honest = inbox(session)
            assert note.subject.startswith("(message too large: ")
            assert honest.subject == "honest"
            assert not liar.deleted
            assert server.replies_cut_short(1) == 1


def test_a_pop3_message_far_larger_than_listed_is_cut_off(tmp_path: Path) -> None:
    with running(FakePOP3Server(flood_bytes=30_000_000)) as server:
        liar = server.add(Mail(message("liar"), faults=[Fault.HUGE], claimed_size=200))
        server.add(Mail(message("honest")))
        service = ("pop3", "in", options(server, max_message_bytes=100_000, leave_on_server=False))
        with session_for(tmp_path / "p", service) as session:
            assert session.receive() == 2
            note, honest = inbox(session)
            assert note.subject.startswith("(message too large: ")
            assert honest.subject == "honest"
            assert not liar.deleted
            assert server.replies_cut_short(1) == 1  # postroom stopped reading long before the 30 MB were through
            assert server.sent_in_cut_short < 30_000_000


def test_the_size_limit_and_the_read_deadline_are_checked_options() -> None:
    base = {"host": "mail.test", "username": "u", "password_env": "X"}
    for provider in (IMAPProvider, POP3Provider):
        checked = provider.validate_options(base)
        assert checked["max_message_bytes"] == 50 * 1024 * 1024
        assert checked["read_timeout"] == 120
        checked = provider.validate_options({**base, "max_message_bytes": "2000000", "read_timeout": "2.5"})
        assert checked["max_message_bytes"] == 2_000_000 and checked["read_timeout"] == 2.5
        for bad in ({"max_message_bytes": 50}, {"max_message_bytes": "lots"}, {"max_message_bytes": 1e3 + 0.5}):
            with pytest.raises(MAPIError) as info:
                provider.validate_options({**base, **bad})
            assert info.value.code == HResult.MAPI_E_INVALID_PARAMETER
            assert "max_message_bytes" in str(info.value)
        for bad_seconds in (0, -1, "soon"):
            with pytest.raises(MAPIError, match="read_timeout"):
                provider.validate_options({**base, "read_timeout": bad_seconds})
