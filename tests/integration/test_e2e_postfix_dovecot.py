"""End to end: postroom sends through a real Postfix and reads the answers back from a real Dovecot.

A profile for alice@example.test has an `smtp` service (Postfix on loopback, plain text) and an
`imap` service (alice's mailbox on Dovecot). Postfix accepts bob, refuses unknown example.test
users at RCPT (550 5.1.1), accepts @bounce.test and bounces it afterwards with a real DSN to
alice (5.1.2), and answers 450 4.4.1 at RCPT for @defer.test. See peers.py.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import hashlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from peers import PASSWORD_ENV, Peers

import postroom
from postroom.mapi import tags as T
from postroom.mapi.flags import NDRDiag, NDRReason, RecipientType, StatusCode
from postroom.mapi.message import MessageData
from postroom.profile import Profile
from postroom.session import Session
from postroom.store import RecipientState

pytestmark = pytest.mark.integration

BOUNCE_WAIT_SECONDS = 30.0
V = TypeVar("V")


def open_session(peers: Peers, directory: Path, address: str, *, smtp: bool = True) -> Session:
    """A profile for `address`: smtp to Postfix (plain text) and imap for its mailbox on Dovecot."""
    profile = Profile.create(directory, with_defaults=False)
    profile.settings["sender_address"] = address
    profile.settings["sender_name"] = address.partition("@")[0].title()
    if smtp:
        profile.add_service(
            "smtp",
            "postfix",
            {"host": "127.0.0.1", "port": peers.smtp_port, "security": "none", "sender": address, "timeout": 60},
        )
    profile.add_service(
        "imap",
        "dovecot",
        {
            "host": "127.0.0.1",
            "port": peers.imap_port,
            "security": "none",
            "username": address,
            "password_env": PASSWORD_ENV,
            "timeout": 60,
        },
    )
    profile.save()
    return postroom.logon(profile)


def wait_for(what: str, probe: Callable[[], V | None], timeout: float, interval: float = 0.2) -> V:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def maildir_message(peers: Peers, address: str, marker: str, timeout: float = 15.0) -> email.message.EmailMessage:
    """The message whose subject contains `marker`, read back through Dovecot IMAP."""

    def probe() -> email.message.EmailMessage | None:
        for raw in peers.fetch_all(address):
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(msg, email.message.EmailMessage)
            if marker in str(msg.get("Subject", "")):
                return msg
        return None

    return wait_for(f"the message {marker!r} in {address}'s mailbox", probe, timeout)


def inbox(session: Session) -> list[MessageData]:
    return [session.open_message(m.id) for m in session.list_messages(session.inbox)]


def row_for(message: MessageData, address: str) -> Any:
    rows = [r for r in message.recipients if r.email_address.lower() == address]
    assert len(rows) == 1, [r.email_address for r in message.recipients]
    return rows[0]


# --- the acceptance ------------------------------------------------------------------------------------------


def test_one_message_three_fates(peers: Peers, tmp_path: Path) -> None:
    """bob delivered; nobody refused at RCPT (NDR from the spooler, with Postfix's own text);
    someone@bounce.test accepted, then bounced by Postfix with a DSN that comes back over IMAP."""
    marker = uuid.uuid4().hex[:8]
    with open_session(peers, tmp_path / "alice", "alice@example.test") as session:
        draft = session.create_message(f"Three fates {marker}", "One message, three recipients.\n")
        draft.to("bob@example.test", "nobody@example.test", "someone@bounce.test")
        mid = draft.submit()

        summary = session.deliver()
        assert summary.delivered == 2  # bob and someone@bounce.test (accepted by Postfix)
        assert summary.failed == 1  # nobody@example.test
        states = {r.row_id: r.state for r in session.recipient_states(mid)}
        assert states == {0: RecipientState.DELIVERED, 1: RecipientState.FAILED, 2: RecipientState.DELIVERED}

        # The NDR for nobody: made by the spooler from Postfix's RCPT answer, exactly as sent.
        ndrs = [m for m in inbox(session) if m.message_class == "REPORT.IPM.Note.NDR"]
        assert len(ndrs) == 1
        ndr = ndrs[0]
        nobody = row_for(ndr, "nobody@example.test")
        assert nobody[T.PR_REPORT_TEXT] == (
            "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in virtual mailbox table"
        )
        assert nobody[T.PR_NDR_STATUS_CODE] == 550
        assert nobody[T.PR_NDR_DIAG_CODE] == NDRDiag.MAIL_RECIPIENT_UNKNOWN
        assert nobody[T.PR_NDR_REASON_CODE] == NDRReason.TRANSFER_IMPOSSIBLE
        assert [r.email_address for r in ndr.recipients] == ["nobody@example.test"]

        # bob's copy, read back through Dovecot.
        bobs = maildir_message(peers, "bob@example.test", marker)
        assert bobs["From"].addresses[0].addr_spec == "alice@example.test"
        assert bobs["Subject"] == f"Three fates {marker}"

        # The original, in Sent Items, with the Message-ID stamped at submit.
        sent = [session.open_message(m.id) for m in session.list_messages(session.sent_items)]
        originals = {str(m.get(T.PR_INTERNET_MESSAGE_ID)): m for m in sent}
        message_id = str(session.open_message(mid).get(T.PR_INTERNET_MESSAGE_ID))
        assert message_id in originals
        assert bobs["Message-ID"] == message_id

        # Postfix's bounce for someone@bounce.test comes back to alice's mailbox; the imap
        # transport fetches it and it is stored as a REPORT.IPM.Note.NDR.
        started = time.monotonic()

        def bounce_arrived() -> MessageData | None:
            session.receive()
            for m in inbox(session):
                if m.message_class == "REPORT.IPM.Note.NDR" and any(
                    r.email_address == "someone@bounce.test" for r in m.recipients
                ):
                    return m
            return None

        dsn = wait_for("Postfix's bounce in postroom's Inbox", bounce_arrived, BOUNCE_WAIT_SECONDS, 0.5)
        waited = time.monotonic() - started
        someone = row_for(dsn, "someone@bounce.test")
        assert someone[T.PR_NDR_DIAG_CODE] == NDRDiag.OR_NAME_UNRECOGNIZED  # 5.1.2: other X.1.x
        assert someone[T.PR_NDR_REASON_CODE] == NDRReason.TRANSFER_IMPOSSIBLE
        assert "simulated: bad destination system address" in someone[T.PR_REPORT_TEXT]
        assert dsn.get(T.PR_SENDER_EMAIL_ADDRESS) == "MAILER-DAEMON@mx.example.test"
        # PR_REPORT_TAG carries the original's Message-ID: that finds the original.
        tag = bytes(dsn[T.PR_REPORT_TAG]).decode("ascii")
        assert tag == message_id
        original = originals[tag]
        assert original.subject == f"Three fates {marker}"
        assert dsn.get(T.PR_ORIGINAL_SUBJECT) == original.subject

        # Delivered once, and not again: the imap transport remembers what it delivered.
        assert session.receive() == 0
        row = next(r for r in session.status_table() if r.display_name == "dovecot")
        assert StatusCode.FAILURE not in row.status_code
    print(
        f"\nNDR text for nobody: {nobody[T.PR_REPORT_TEXT]!r}"
        f"\nDSN row for someone@bounce.test: {someone[T.PR_REPORT_TEXT]!r}, back after {waited:.1f} s"
    )


def test_postfix_bounce_of_smtputf8_mail_is_read_as_an_ndr(peers: Peers, tmp_path: Path) -> None:
    """Mail to a UTF-8 address goes out with SMTPUTF8; Postfix bounces it with an RFC 6533
    message/global-delivery-status, whose UTF-8 fields become the NDR row (issue 16, item 6)."""
    marker = uuid.uuid4().hex[:8]
    bounced = "jörg@bounce.test"
    sender = peers.new_postfix_user()
    with open_session(peers, tmp_path / "p", sender) as session:
        draft = session.create_message(f"Grüße {marker}", "Hallo.\n")
        draft.to(bounced)
        mid = draft.submit()
        assert session.deliver().delivered == 1  # accepted by Postfix, bounced afterwards
        message_id = str(session.open_message(mid).get(T.PR_INTERNET_MESSAGE_ID))

        def bounce_arrived() -> MessageData | None:
            session.receive()
            return next((m for m in inbox(session) if m.message_class == "REPORT.IPM.Note.NDR"), None)

        dsn = wait_for("Postfix's SMTPUTF8 bounce in postroom's Inbox", bounce_arrived, BOUNCE_WAIT_SECONDS, 0.5)
        row = row_for(dsn, bounced)
        assert row.address_type == "SMTP"
        assert row[T.PR_NDR_REASON_CODE] == NDRReason.TRANSFER_IMPOSSIBLE
        assert "simulated: bad destination system address" in row[T.PR_REPORT_TEXT]
        assert bytes(dsn[T.PR_REPORT_TAG]).decode("ascii") == message_id
    # It really was RFC 6533, as Postfix writes it: the raw bounce in the sender's mailbox.
    (raw,) = [r for r in peers.fetch_all(sender) if b"global-delivery-status" in r]
    assert "Final-Recipient: utf-8; jörg@bounce.test".encode() in raw


def test_deferred_at_rcpt_waits_in_the_outbox(peers: Peers, tmp_path: Path) -> None:
    sender = peers.new_postfix_user()
    with open_session(peers, tmp_path / "p", sender) as session:
        draft = session.create_message("Later, please", "This one has to wait.\n")
        draft.to("someone@defer.test")
        draft.attach_bytes("notes.txt", b"keep me\n")
        mid = draft.submit()
        summary = session.deliver()
        assert summary.delivered == 0 and summary.failed == 0 and summary.waiting == 1

        entries = [q for q in session.queue() if q.id == mid]
        assert len(entries) == 1
        entry = entries[0]
        assert entry.last_error is not None
        assert "450 4.4.1 <someone@defer.test>: Recipient address rejected" in entry.last_error
        assert entry.next_attempt is not None
        assert [m.id for m in session.list_messages(session.outbox)] == [mid]
        kept = session.open_message(mid)  # unharmed
        assert kept.subject == "Later, please"
        assert kept.attachments[0].read_all() == b"keep me\n"
        assert [r.email_address for r in kept.recipients] == ["someone@defer.test"]
        assert {r.state for r in session.recipient_states(mid)} == {RecipientState.PENDING}
        assert not any(m.message_class.startswith("REPORT.") for m in inbox(session))
    print(f"\nqueued message's last_error: {entry.last_error!r}")


def test_non_ascii_subject_and_20_mb_attachment_arrive_intact(peers: Peers, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:8]
    subject = f"Grüße, 東京 and ça va — {marker}"
    blob = os.urandom(20 * 1024 * 1024)
    sender = peers.new_postfix_user()
    with open_session(peers, tmp_path / "sender", sender) as session:
        draft = session.create_message(subject, "Zwanzig Megabyte, bitte.\n")
        draft.to("bob@example.test")
        draft.attach_bytes("random.bin", blob, mime_type="application/octet-stream")
        draft.submit()
        summary = session.deliver()
        assert summary.delivered == 1, summary

    # Straight from Dovecot: the bytes of the attachment, the decoded subject.
    received = maildir_message(peers, "bob@example.test", marker, timeout=30)
    assert received["Subject"] == subject
    parts = [p for p in received.iter_attachments() if p.get_filename() == "random.bin"]
    assert len(parts) == 1
    content = parts[0].get_content()
    assert isinstance(content, bytes)
    assert hashlib.sha256(content).digest() == hashlib.sha256(blob).digest()

    # And through postroom's imap transport into bob's own store.
    with open_session(peers, tmp_path / "bob", "bob@example.test", smtp=False) as bob:
        bob.receive()
        got = [m for m in inbox(bob) if marker in m.subject]
        assert len(got) == 1
        assert got[0].subject == subject
        attachments = [a for a in got[0].attachments if a.filename == "random.bin"]
        assert len(attachments) == 1
        assert hashlib.sha256(attachments[0].read_all()).digest() == hashlib.sha256(blob).digest()


def test_bcc_recipient_gets_the_mail_without_a_bcc_header(peers: Peers, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:8]
    sender, hidden = peers.new_postfix_user(), peers.new_postfix_user()
    with open_session(peers, tmp_path / "p", sender) as session:
        draft = session.create_message(f"Quietly {marker}", "Someone else reads along.\n")
        draft.to("bob@example.test")
        draft.bcc(hidden)
        mid = draft.submit()
        assert session.deliver().delivered == 2
        kinds = {r.email_address: r.kind for r in session.open_message(mid).recipients}
        assert kinds[hidden] == RecipientType.BCC
    bobs = maildir_message(peers, "bob@example.test", marker)
    hiddens = maildir_message(peers, hidden, marker)
    for copy in (bobs, hiddens):
        assert "Bcc" not in copy
        assert copy["To"].addresses[0].addr_spec == "bob@example.test"
    assert hidden not in bobs.as_string()  # bob cannot tell anyone else got it
    assert hiddens["Delivered-To"] == hidden  # Postfix's envelope, not a header postroom wrote
