"""A sendmail caller's message as postroom takes it: the envelope sender it gets from the From."""

from __future__ import annotations

from postroom import original
from postroom.mapi import tags as T
from postroom.submission import sendmail_message

CRON = b"From: root (Cron Daemon)\nTo: a@example.org\nSubject: Cron <ops@vm> nightly\n\nbackup done\n"


def test_a_from_that_is_a_bare_local_part_is_qualified_in_the_envelope_only() -> None:
    md = sendmail_message(CRON, recipients=["a@example.org"], domain="example.test")
    assert md.props[T.PR_SENDER_EMAIL_ADDRESS] == "root@example.test"  # MAIL FROM:<root@example.test>
    assert original.exact(md) == CRON  # the header still says `From: root (Cron Daemon)`


def test_a_full_from_and_an_explicit_envelope_sender_are_left_as_they_are() -> None:
    full = CRON.replace(b"From: root", b"From: root@vm.example.org")
    assert (
        sendmail_message(full, recipients=["a@example.org"], domain="example.test").props[T.PR_SENDER_EMAIL_ADDRESS]
        == "root@vm.example.org"
    )
    given = sendmail_message(CRON, recipients=["a@example.org"], envelope_sender="ops@example.org", domain="x.test")
    assert given.props[T.PR_SENDER_EMAIL_ADDRESS] == "ops@example.org"
