"""The imap and pop3 transports against a real Dovecot on loopback (see peers.py).

Messages are written straight into Dovecot's Maildirs; every test takes a fresh mailbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
import time
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import pytest
from peers import PASSWORD_ENV, Peers

import postroom
from postroom import mime
from postroom.mapi import tags as T
from postroom.mapi.codes import MAPIError
from postroom.mapi.flags import LogonFlags, LogonResultFlags, StatusCode
from postroom.mapi.message import MessageData
from postroom.profile import Profile
from postroom.transports import imap as imap_module
from postroom.transports import pop3 as pop3_module
from postroom.transports.imap import IMAPProvider
from postroom.transports.pop3 import POP3Provider
from postroom.transports.spi import InboundMessage, Registration

from support.inbound import inbox, logon, run, session_for, status_row, subjects
from support.prerequisites import unavailable

pytestmark = pytest.mark.integration

KINDS = ("imap", "pop3")


# --- helpers -------------------------------------------------------------------------------------------


def message(subject: str, body: str = "Hello there.\n", *, to: str = "box@example.test") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Sam Sender <sam@sender.test>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain="sender.test")
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP)


def options(peers: Peers, kind: str, user: str, **extra: Any) -> dict[str, Any]:
    port = peers.imap_port if kind == "imap" else peers.pop3_port
    opts: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": user,
        "password_env": PASSWORD_ENV,
        "timeout": 10,
    }
    opts.update(extra)
    return opts


# --- fetching ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_fetches_messages_put_into_the_maildir(peers: Peers, tmp_path: Path, kind: str) -> None:
    user = peers.new_user()
    for subject in ("first", "Grüße aus Köln – ça va?", "third"):
        peers.put_message(user, message(subject, to=user))
    with session_for(tmp_path / "p", (kind, "in", options(peers, kind, user))) as session:
        assert session.receive() == 3
        assert subjects(session) == ["first", "Grüße aus Köln – ça va?", "third"]
        first = inbox(session)[0]
        assert first.get(T.PR_SENDER_EMAIL_ADDRESS) == "sam@sender.test"
        assert first.body.strip() == "Hello there."
        assert session.receive() == 0  # nothing new: nothing again
        row = status_row(session, "in")
        assert StatusCode.FAILURE not in row.status_code
        assert row.status_string.startswith(f"checked 127.0.0.1:{options(peers, kind, user)['port']} at ")
        assert row.status_string.endswith(": 3 message(s) received")
    # The transport registers no address type and asks to be polled.
    direct = logon(tmp_path / "direct", kind, options(peers, kind, user))
    assert direct.address_types() == Registration.none()
    assert direct.result_flags & LogonResultFlags.SP_POLL
    direct.logoff()


@pytest.mark.parametrize("kind", KINDS)
def test_no_duplicates_across_sessions(peers: Peers, tmp_path: Path, kind: str) -> None:
    user = peers.new_user()
    service = (kind, "mail", options(peers, kind, user))
    peers.put_message(user, message("one", to=user))
    peers.put_message(user, message("two", to=user))
    with session_for(tmp_path / "p", service) as session:
        assert session.receive() == 2
    peers.put_message(user, message("three", to=user))
    with session_for(tmp_path / "p", service) as session:
        assert session.receive() == 1
        assert subjects(session) == ["one", "two", "three"]
    with session_for(tmp_path / "p", service) as session:
        assert session.receive() == 0
    # The state file: in the profile directory, owner-only, naming the account, never the password.
    state_file = tmp_path / "p" / f".{kind}-mail.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    text = state_file.read_text(encoding="utf-8")
    assert peers.password not in text
    state = json.loads(text)
    assert state["account"] == f"{user}@127.0.0.1:{service[2]['port']}"
    if kind == "imap":
        assert state["mailboxes"]["INBOX"]["last_uid"] == 3
    else:
        assert len(state["delivered"]) == 3
    # The messages are still on the server (keep / leave_on_server are the defaults).
    assert len(peers.fetch_all(user)) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_the_spooler_daemon_polls_and_delivers(peers: Peers, tmp_path: Path, kind: str) -> None:
    """LOGON_SP_POLL end to end: the daemon polls every poll_seconds and fetches what waits."""
    user = peers.new_user()
    profile = Profile.create(tmp_path / "p", with_defaults=False)
    profile.add_service(kind, "in", options(peers, kind, user), poll_seconds=0.3)
    profile.save()

    async def scenario() -> list[str]:
        async with postroom.alogon(profile) as session:
            stop = asyncio.Event()
            daemon = asyncio.create_task(session.run_spooler(stop))
            try:
                await asyncio.sleep(0.5)
                peers.put_message(user, message("polled in", to=user))
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    found = [m.subject for m in session.list_messages(session.inbox)]
                    if found:
                        return found
                    await asyncio.sleep(0.1)
                return []
            finally:
                stop.set()
                await daemon

    assert asyncio.run(scenario()) == ["polled in"]


@pytest.mark.parametrize("kind", KINDS)
def test_poll_says_whether_mail_waits(peers: Peers, tmp_path: Path, kind: str) -> None:
    user = peers.new_user()
    direct = logon(tmp_path, kind, options(peers, kind, user))
    try:
        assert direct.poll() is False
        peers.put_message(user, message("waiting", to=user))
        assert direct.poll() is True
        assert [m.subject for m in run(direct)] == ["waiting"]
        assert direct.poll() is False
    finally:
        direct.logoff()


# --- after_download / leave_on_server ---------------------------------------------------------------


def imap_flags(peers: Peers, user: str) -> list[bytes]:
    with peers.imap(user) as conn:
        typ, data = conn.uid("FETCH", "1:*", "(FLAGS)")
        assert typ == "OK"
        return [d for d in data if isinstance(d, bytes)]


def test_imap_keep_leaves_messages_unseen_and_seen_marks_them(peers: Peers, tmp_path: Path) -> None:
    keep_user, seen_user = peers.new_user(), peers.new_user()
    for user in (keep_user, seen_user):
        peers.put_message(user, message("a", to=user))
        peers.put_message(user, message("b", to=user))
    with session_for(
        tmp_path / "p",
        ("imap", "keep", options(peers, "imap", keep_user)),
        ("imap", "seen", options(peers, "imap", seen_user, after_download="seen")),
    ) as session:
        assert session.receive() == 4
    assert all(b"\\Seen" not in f for f in imap_flags(peers, keep_user))
    seen_flags = imap_flags(peers, seen_user)
    assert len(seen_flags) == 2 and all(b"\\Seen" in f for f in seen_flags)


def test_imap_after_download_move(peers: Peers, tmp_path: Path) -> None:
    user = peers.new_user()
    raws = [message(f"to archive {n}", to=user) for n in range(3)]
    for raw in raws:
        peers.put_message(user, raw)
    with session_for(tmp_path / "p", ("imap", "in", options(peers, "imap", user, after_download="move:Archive"))) as s:
        assert s.receive() == 3
        assert subjects(s) == ["to archive 0", "to archive 1", "to archive 2"]
        assert s.receive() == 0
    assert peers.fetch_all(user) == []
    assert peers.fetch_all(user, "Archive") == raws
    state = json.loads((tmp_path / "p" / ".imap-in.json").read_text(encoding="utf-8"))
    assert state["mailboxes"]["INBOX"]["after_download"] == []  # nothing owed


def test_imap_after_download_delete(peers: Peers, tmp_path: Path) -> None:
    user = peers.new_user()
    for n in range(2):
        peers.put_message(user, message(f"doomed {n}", to=user))
    with session_for(tmp_path / "p", ("imap", "in", options(peers, "imap", user, after_download="delete"))) as s:
        assert s.receive() == 2
    assert peers.fetch_all(user) == []
    assert peers.maildir_files(user) == []


def test_pop3_leave_on_server_false_deletes(peers: Peers, tmp_path: Path) -> None:
    user, keeper = peers.new_user(), peers.new_user()
    for who in (user, keeper):
        for n in range(3):
            peers.put_message(who, message(f"pop {n}", to=who))
    with session_for(
        tmp_path / "p",
        ("pop3", "del", options(peers, "pop3", user, leave_on_server=False)),
        ("pop3", "keep", options(peers, "pop3", keeper)),
    ) as session:
        assert session.receive() == 6
        assert peers.maildir_files(user) == []  # deleted at the QUIT ending the run
        assert len(peers.maildir_files(keeper)) == 3
        state = json.loads((tmp_path / "p" / ".pop3-del.json").read_text(encoding="utf-8"))
        assert len(state["delivered"]) == 3
        assert session.receive() == 0
    state = json.loads((tmp_path / "p" / ".pop3-del.json").read_text(encoding="utf-8"))
    assert state["delivered"] == []  # UIDLs gone from the server are forgotten at the next session


# --- robustness -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_does_not_block_the_next_message(peers: Peers, tmp_path: Path, kind: str) -> None:
    user = peers.new_user()
    peers.put_message(user, b"\x00\xff\xfe garbage \x80\x81 no headers at all\r\n\r\n\xc3\x28")
    peers.put_message(user, message("after the garbage", to=user))
    with session_for(tmp_path / "p", (kind, "in", options(peers, kind, user))) as session:
        assert session.receive() == 2
        assert subjects(session) == [mime.UNPARSEABLE_SUBJECT, "after the garbage"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_message_that_cannot_be_converted_arrives_as_an_attachment(
    peers: Peers, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = peers.new_user()
    bad = message("explosive", body="BOOM\n", to=user)
    peers.put_message(user, bad)
    peers.put_message(user, message("fine", to=user))
    real = mime.from_mime

    def from_mime(data: bytes) -> MessageData:
        if b"BOOM" in data:
            raise RuntimeError("converter bug")
        return real(data)

    monkeypatch.setattr(mime, "from_mime", from_mime)
    with session_for(tmp_path / "p", (kind, "in", options(peers, kind, user))) as session:
        assert session.receive() == 2
        note, fine = inbox(session)
        assert note.subject.startswith("(message could not be converted: ")
        assert "RuntimeError: converter bug" in note.body
        assert len(note.attachments) == 1
        assert note.attachments[0].filename == "original-message.eml"
        assert note.attachments[0].read_all() == bad  # as received, byte for byte
        assert fine.subject == "fine"


@pytest.mark.parametrize("kind", KINDS)
def test_server_restart_fails_the_status_row_then_recovers(peers: Peers, tmp_path: Path, kind: str) -> None:
    user = peers.new_user()
    peers.put_message(user, message("before", to=user))
    with session_for(tmp_path / "p", (kind, "in", options(peers, kind, user))) as session:
        assert session.receive() == 1
        peers.stop_dovecot()
        try:
            peers.put_message(user, message("during", to=user))
            assert session.receive() == 0
            row = status_row(session, "in")
            assert StatusCode.FAILURE in row.status_code
            assert "127.0.0.1" in row.last_error
            assert "refused" in row.last_error.lower()
        finally:
            peers.start_dovecot()
        assert session.receive() == 1
        row = status_row(session, "in")
        assert StatusCode.FAILURE not in row.status_code
        assert StatusCode.AVAILABLE in row.status_code
        assert subjects(session) == ["before", "during"]


def test_imap_connection_dropped_mid_run_is_replaced(peers: Peers, tmp_path: Path) -> None:
    """A connection that worked and then broke is replaced at once (one retry), without duplicates."""
    user = peers.new_user()
    for n in range(3):
        peers.put_message(user, message(f"m{n}", to=user))
    direct = logon(tmp_path, "imap", options(peers, "imap", user))
    try:
        first = run(direct, stop_after=1)
        assert [m.subject for m in first] == ["m0"]
        direct._client.shutdown()  # the server side is fine; our socket is gone
        rest = [InboundMessage(ref) for ref in (2, 3, 4)]
        for msg in rest:
            direct.start_message(msg)
        assert [m.data.subject for m in rest if m.saved] == ["m1", "m2"]
        assert StatusCode.FAILURE not in direct.status.status_code
        assert direct.connections_opened == 2
    finally:
        direct.logoff()


@pytest.mark.parametrize("kind", KINDS)
def test_unconfirmed_message_is_fetched_again(peers: Peers, tmp_path: Path, kind: str) -> None:
    """At least once: only the spooler coming back for the next message records the previous one."""
    user = peers.new_user()
    for n in range(3):
        peers.put_message(user, message(f"m{n}", to=user))
    opts = options(peers, kind, user)
    first = logon(tmp_path, kind, opts)
    try:
        one = InboundMessage(1)
        first.start_message(one)
        assert one.saved and one.data.subject == "m0"
        # The run broke (say the store failed): the next run starts at ref 1 again.
        again = InboundMessage(1)
        first.start_message(again)
        assert again.saved and again.data.subject == "m0"
        two = InboundMessage(2)  # confirms m0
        first.start_message(two)
        assert two.data.subject == "m1"
    finally:
        first.logoff()  # m1 was never confirmed
    second = logon(tmp_path, kind, opts)
    try:
        assert [m.subject for m in run(second)] == ["m1", "m2"]
        assert run(second) == []
    finally:
        second.logoff()


def test_one_session_of_a_profile_receives_at_a_time(peers: Peers, tmp_path: Path) -> None:
    user = peers.new_user()
    peers.put_message(user, message("only once", to=user))
    opts = options(peers, "imap", user)
    first, second = logon(tmp_path, "imap", opts), logon(tmp_path, "imap", opts)
    try:
        assert first.poll() is True
        assert second.poll() is False
        assert run(second) == []
        assert "another session" in second.status.status_string
        assert [m.subject for m in run(first)] == ["only once"]
        first.logoff()
        assert run(second) == []  # took over, knows it was delivered
        assert second.state.locked
    finally:
        first.logoff()
        second.logoff()


@pytest.mark.parametrize("kind", KINDS)
def test_no_connect_never_connects(peers: Peers, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    user = peers.new_user()
    peers.put_message(user, message("stays put", to=user))

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("connected despite LogonFlags.NO_CONNECT")

    monkeypatch.setattr(imap_module, "_Client", explode)
    monkeypatch.setattr(pop3_module, "_POP3", explode)
    direct = logon(tmp_path, kind, options(peers, kind, user), LogonFlags.NO_DIALOG | LogonFlags.NO_CONNECT)
    try:
        assert direct.poll() is False
        msg = InboundMessage(1)
        direct.start_message(msg)
        assert not msg.saved
        assert direct.connections_opened == 0
        assert StatusCode.OFFLINE in direct.status.status_code
        assert direct.status.status_string == "offline (no connect)"
    finally:
        direct.logoff()
    # And through a session that is offline: nothing is fetched.
    with session_for(tmp_path / "p", (kind, "in", options(peers, kind, user))) as session:
        session.set_mode("offline")
        assert session.receive() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_password_never_in_status_rows_or_logs(
    peers: Peers, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    user = peers.new_user()
    peers.put_message(user, message("secret stuff", to=user))
    password_file = tmp_path / "pw"
    password_file.write_text(peers.password + "\n", encoding="utf-8")
    os.chmod(password_file, 0o600)
    wrong_env = "POSTROOM_TEST_WRONG_PASSWORD"
    wrong = f"wrong-{peers.password}"
    monkeypatch.setenv(wrong_env, wrong)
    good = options(peers, kind, user, password_file=str(password_file))
    del good["password_env"]
    bad = options(peers, kind, user, password_env=wrong_env)
    with session_for(tmp_path / "p", (kind, "good", good), (kind, "bad", bad)) as session:
        assert session.receive() == 1
        rows = session.status()
        bad_row = status_row(session, "bad")
        assert StatusCode.FAILURE in bad_row.status_code
        assert "failed" in bad_row.last_error and user in bad_row.last_error
        shown = repr([vars(r) for r in rows])
        profile_text = (tmp_path / "p" / "profile.toml").read_text(encoding="utf-8")
    for secret in (peers.password, wrong):
        assert secret not in shown
        assert secret not in caplog.text
        assert secret not in profile_text
        for state_file in (tmp_path / "p").glob(".*.json"):
            assert secret not in state_file.read_text(encoding="utf-8")
    # The logon object itself does not show it either.
    direct = logon(tmp_path / "d", kind, good)
    try:
        assert peers.password not in repr(vars(direct))
    finally:
        direct.logoff()


# --- IMAP IDLE, TLS, options -------------------------------------------------------------------------------


def test_imap_idle_poll_wakes_up_on_new_mail(peers: Peers, tmp_path: Path) -> None:
    user = peers.new_user()
    direct = logon(tmp_path, "imap", options(peers, "imap", user, idle=True, idle_seconds=10))
    try:
        timer = threading.Timer(0.5, peers.put_message, (user, message("pushed", to=user)))
        started = time.monotonic()
        timer.start()
        try:
            assert direct.poll() is True
        finally:
            timer.join()
        assert time.monotonic() - started < 8
        assert [m.subject for m in run(direct)] == ["pushed"]
    finally:
        direct.logoff()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_tls_with_a_private_ca(peers: Peers, tmp_path: Path, kind: str, security: str) -> None:
    if peers.ca_file is None:
        unavailable("needs openssl to make a test certificate")
    user = peers.new_user()
    peers.put_message(user, message("over TLS", to=user))
    if security == "tls":
        port = peers.imaps_port if kind == "imap" else peers.pop3s_port
    else:
        port = peers.imap_port if kind == "imap" else peers.pop3_port
    trusted = options(peers, kind, user, security=security, port=port, ca_file=str(peers.ca_file))
    untrusted = options(peers, kind, user, security=security, port=port)
    with session_for(tmp_path / "p", (kind, "trusted", trusted), (kind, "untrusted", untrusted)) as session:
        assert session.receive() == 1
        assert subjects(session) == ["over TLS"]
        row = status_row(session, "untrusted")
        assert StatusCode.FAILURE in row.status_code
        assert "CERTIFICATE_VERIFY_FAILED" in row.last_error


def test_options_are_checked() -> None:
    base = {"host": "mail.test", "username": "u", "password_env": "X"}
    assert IMAPProvider.validate_options(base)["port"] == 993
    assert IMAPProvider.validate_options({**base, "security": "starttls"})["port"] == 143
    assert IMAPProvider.validate_options({**base, "security": "none"})["port"] == 143
    assert POP3Provider.validate_options(base)["port"] == 995
    assert POP3Provider.validate_options({**base, "security": "none"})["port"] == 110
    checked = IMAPProvider.validate_options({**base, "after_download": "Move:Old Mail"})
    assert checked["after_download"] == "move:Old Mail"
    assert checked["mailbox"] == "INBOX" and checked["idle"] is False
    assert POP3Provider.validate_options(base)["leave_on_server"] is True
    for bad in (
        {**base, "password": "hunter2"},
        {"host": "mail.test", "username": "u"},
        {"host": "mail.test", "password_env": "X"},
        {**base, "password_file": "pw"},
        {**base, "security": "ssl"},
        {**base, "after_download": "move"},
        {**base, "after_download": "move:INBOX"},
        {**base, "after_download": "archive"},
        {**base, "idle": "maybe"},
        {**base, "port": 70000},
        {**base, "security": "none", "ca_file": "ca.pem"},
        {**base, "frobnicate": 1},
    ):
        with pytest.raises(MAPIError) as info:
            IMAPProvider.validate_options(bad)
        assert "hunter2" not in str(info.value)
    with pytest.raises(MAPIError):
        POP3Provider.validate_options({**base, "leave_on_server": "perhaps"})


def test_damaged_state_file_skips_the_provider(peers: Peers, tmp_path: Path) -> None:
    user = peers.new_user()
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / ".imap-in.json").write_text("{not json", encoding="utf-8")
    with session_for(tmp_path / "p", ("imap", "in", options(peers, "imap", user))) as session:
        assert session.receive() == 0
        row = status_row(session, "in")
        assert StatusCode.FAILURE in row.status_code
        assert "damaged" in row.last_error


@pytest.mark.parametrize("kind", KINDS)
def test_a_received_message_keeps_the_exact_bytes_the_server_gave(peers: Peers, tmp_path: Path, kind: str) -> None:
    user = peers.new_user()
    signed = (
        f"From: Sam Sender <sam@sender.test>\r\nTo: {user}\r\nSubject: signed\r\nX-Tag: kept\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain='sender.test')}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/signed; micalg=pgp-sha256; protocol="application/pgp-signature"; boundary="s"\r\n'
        "\r\n--s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsigned text   \r\n--s\r\n"
        "Content-Type: application/pgp-signature\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\n"
        "iQEz\r\n-----END PGP SIGNATURE-----\r\n--s--\r\n"
    ).encode()
    peers.put_message(user, signed)
    with session_for(tmp_path / "p", (kind, "in", options(peers, kind, user))) as session:
        assert session.receive() == 1
        [received] = inbox(session)
        assert mime.original_bytes(received) == signed
        assert mime.to_bytes(received) == signed  # sent on unchanged, it is the same message
