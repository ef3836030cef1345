"""The maildir transport, driven directly through the transport SPI with real files."""

from __future__ import annotations

import email
import email.policy
import errno
import os
import stat
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import postroom
from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.flags import EndMessageFlags, LogonFlags, NDRDiag, NDRReason, RecipientType, StatusCode
from postroom.mapi.message import MessageData, Recipient
from postroom.profile import Profile
from postroom.store import RecipientState
from postroom.transports import maildir as maildir_mod
from postroom.transports.maildir import MaildirLogon, MaildirProvider
from postroom.transports.spi import (
    OutboundMessage,
    OutboundRecipient,
    RecipientScope,
    Registration,
)

from support.spi import provider_context


def make_logon(tmp_path: Path, **options: Any) -> MaildirLogon:
    options.setdefault("domains", ["example.test"])
    logon = MaildirProvider(provider_context("maildir", "local", options, tmp_path)).logon(LogonFlags.NONE)
    assert isinstance(logon, MaildirLogon)
    return logon


def rcpt(address: str, *, adrtype: str = "SMTP", kind: RecipientType = RecipientType.TO, row_id: int = 0) -> Recipient:
    return Recipient(
        props={
            T.PR_DISPLAY_NAME: address.partition("@")[0].title() or address,
            T.PR_ADDRTYPE: adrtype,
            T.PR_EMAIL_ADDRESS: address,
            T.PR_RECIPIENT_TYPE: int(kind),
        },
        row_id=row_id,
    )


def make_message(*recipients: Recipient | tuple[Recipient, bool], subject: str = "Hello there") -> OutboundMessage:
    rows: list[Recipient] = []
    views: list[OutboundRecipient] = []
    for i, item in enumerate(recipients):
        row, responsibility = item if isinstance(item, tuple) else (item, False)
        row.row_id = i
        rows.append(row)
        views.append(OutboundRecipient(row, responsibility=responsibility))
    data = MessageData(
        props={
            T.PR_MESSAGE_CLASS: "IPM.Note",
            T.PR_SUBJECT: subject,
            T.PR_BODY: "Body text\nsecond line\n",
            T.PR_SENDER_NAME: "Sam Sender",
            T.PR_SENDER_ADDRTYPE: "SMTP",
            T.PR_SENDER_EMAIL_ADDRESS: "sam@sender.test",
        },
        recipients=rows,
    )
    return OutboundMessage(data, views, ref=1, deferred=False)


def delivered_files(root: Path, domain: str, local: str) -> list[Path]:
    new = root / domain / local / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def parse(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


# --- options --------------------------------------------------------------------------------


def test_validate_options_normalises() -> None:
    opts = MaildirProvider.validate_options(
        {"domains": " Example.TEST, other.test ,", "address_types": ["smtp", "X-Local"]}
    )
    assert opts == {"root": "maildir", "domains": ["example.test", "other.test"], "address_types": ["SMTP", "X-LOCAL"]}
    assert MaildirProvider.validate_options({"domains": ["a.test"], "root": Path("/srv/mail")})["root"] == "/srv/mail"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({}, "'domains' is required"),
        ({"domains": []}, "at least one"),
        ({"domains": " , "}, "at least one"),
        ({"domains": 42}, "'domains'"),
        ({"domains": ["ok.test", 3]}, "string"),
        ({"domains": ["../etc"]}, "not a domain"),
        ({"domains": ["a/b.test"]}, "not a domain"),
        ({"domains": ["a.test"], "root": 5}, "'root'"),
        ({"domains": ["a.test"], "root": ""}, "'root'"),
        ({"domains": ["a.test"], "address_types": []}, "at least one"),
        ({"domains": ["a.test"], "address_types": "*"}, "wildcard"),
        ({"domains": ["a.test"], "address_types": [1]}, "string"),
        ({"domains": ["a.test"], "bogus": 1}, "unknown option 'bogus'"),
    ],
)
def test_validate_options_errors(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(MAPIError) as err:
        MaildirProvider.validate_options(options)
    assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert needle in err.value.message


def test_every_option_has_help() -> None:
    assert set(MaildirProvider.option_help) == {"root", "domains", "address_types"}
    assert MaildirProvider.display_name == "Maildir delivery"


def test_logon_registers_address_types_and_creates_root(tmp_path: Path) -> None:
    logon = make_logon(tmp_path, address_types="smtp,x-local")
    assert logon.address_types() == Registration.of(
        "SMTP", "X-LOCAL", scope=RecipientScope.for_domains(["example.test"])
    )
    assert (tmp_path / "maildir").is_dir()
    assert logon.status.provider_display == "Maildir delivery"


def test_logon_default_address_type_and_absolute_root(tmp_path: Path) -> None:
    root = tmp_path / "elsewhere" / "mail"
    logon = make_logon(tmp_path, root=str(root))
    assert logon.address_types().address_types == ("SMTP",)
    assert logon.config.root == root
    assert root.is_dir()


def test_logon_with_bad_options_fails(tmp_path: Path) -> None:
    with pytest.raises(MAPIError) as err:
        make_logon(tmp_path, domains=[])
    assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER


# --- delivery -----------------------------------------------------------------------------------


def test_delivers_into_maildir(tmp_path: Path) -> None:
    logon = make_logon(tmp_path)
    msg = make_message(rcpt("alice@example.test"), subject="Quarterly report")
    result = logon.submit_message(msg, 0)
    assert result.code == HResult.S_OK
    (alice,) = msg.recipients
    assert alice.mark is not None and alice.mark.delivered
    root = tmp_path / "maildir"
    for sub in ("tmp", "new", "cur"):
        assert (root / "example.test" / "alice" / sub).is_dir()
    (path,) = delivered_files(root, "example.test", "alice")
    assert not list((root / "example.test" / "alice" / "tmp").iterdir())
    parsed = parse(path)
    assert parsed["Subject"] == "Quarterly report"
    body = parsed.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Body text" in body.get_content()
    # Maildir files use the local line ending, LF.
    assert b"\r\n" not in path.read_bytes()
    # The standard unique name: time.pid_seq.hostname
    stamp, pid_seq, _host = path.name.split(".", 2)
    assert stamp.isdigit()
    assert pid_seq.split("_")[0] == str(os.getpid())


def test_local_part_and_domain_are_case_insensitive(tmp_path: Path) -> None:
    logon = make_logon(tmp_path, domains="Example.Test")
    msg = make_message(rcpt("Alice.Smith@EXAMPLE.test"), rcpt("alice.smith@example.TEST"))
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    files = delivered_files(tmp_path / "maildir", "example.test", "alice.smith")
    assert len(files) == 2
    assert len({f.name for f in files}) == 2


def test_other_domains_and_types_stay_pending(tmp_path: Path) -> None:
    logon = make_logon(tmp_path, domains=["example.test", "second.test"], address_types=["SMTP", "X-LOCAL"])
    msg = make_message(
        rcpt("alice@example.test"),
        rcpt("bob@elsewhere.test"),
        rcpt("carol@second.test"),
        rcpt("dave@example.test", adrtype="FAX"),
        rcpt("no-at-sign", adrtype="X-LOCAL"),
    )
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    alice, bob, carol, dave, noat = msg.recipients
    assert alice.mark is not None and alice.mark.delivered
    assert carol.mark is not None and carol.mark.delivered
    for other in (bob, dave, noat):
        assert other.mark is None
        assert not other.responsibility
    assert msg.pending() == [bob, dave, noat]
    assert not (tmp_path / "maildir" / "elsewhere.test").exists()
    assert not (tmp_path / "maildir" / "example.test" / "dave").exists()


def test_not_me_when_nothing_taken(tmp_path: Path) -> None:
    logon = make_logon(tmp_path)
    msg = make_message(rcpt("bob@elsewhere.test"))
    result = logon.submit_message(msg, 0)
    assert result.code == HResult.MAPI_E_NOT_ME
    assert msg.recipients[0].mark is None


def test_recipients_with_responsibility_are_never_touched(tmp_path: Path) -> None:
    logon = make_logon(tmp_path)
    msg = make_message((rcpt("alice@example.test"), True), rcpt("bob@example.test"))
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    alice, bob = msg.recipients
    assert alice.mark is None
    assert bob.mark is not None and bob.mark.delivered
    assert not (tmp_path / "maildir" / "example.test" / "alice").exists()
    # Only already-handled recipients: not mine.
    msg = make_message((rcpt("alice@example.test"), True))
    assert logon.submit_message(msg, 0).code == HResult.MAPI_E_NOT_ME
    assert msg.recipients[0].mark is None


@pytest.mark.parametrize(
    "local",
    [
        "..",
        "../../etc/passwd",
        "a/b",
        ".hidden",
        "a..b",
        "a\\b",
        "x\0y",
        "tab\there",
        "",
        '"../../etc"',
        '"a/b"',
        '".."',
        '"a\\/b"',
    ],
)
def test_path_traversal_is_refused(tmp_path: Path, local: str) -> None:
    # The MIME converter refuses most of these addresses in SMTP recipients (which would stop
    # the whole message); a private address type reaches the Maildir check unfiltered.
    logon = make_logon(tmp_path, address_types=["SMTP", "X-LOCAL"])
    msg = make_message(rcpt(f"{local}@example.test", adrtype="X-LOCAL"), rcpt("ok@example.test"))
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    bad, ok = msg.recipients
    assert bad.mark is not None and not bad.mark.delivered
    assert bad.mark.reason == NDRReason.TRANSFER_IMPOSSIBLE
    assert bad.mark.diag == NDRDiag.MAIL_ADDRESS_INCORRECT
    assert "local part" in bad.mark.text
    assert ok.mark is not None and ok.mark.delivered
    # Nothing was written anywhere but ok's Maildir.
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert [p.parts[:3] for p in written] == [("maildir", "example.test", "ok")]


@pytest.mark.parametrize("local", ['"../../etc"', '"a/b"', '".."'])
def test_quoted_smtp_traversal_is_refused(tmp_path: Path, local: str) -> None:
    logon = make_logon(tmp_path)
    msg = make_message(rcpt(f"{local}@example.test"), rcpt("ok@example.test"))
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    bad, ok = msg.recipients
    assert bad.mark is not None and not bad.mark.delivered
    assert bad.mark.diag == NDRDiag.MAIL_ADDRESS_INCORRECT
    assert ok.mark is not None and ok.mark.delivered
    assert sorted(p.name for p in (tmp_path / "maildir" / "example.test").iterdir()) == ["ok"]


def test_quoted_local_part_names_the_same_mailbox(tmp_path: Path) -> None:
    logon = make_logon(tmp_path)
    msg = make_message(rcpt('"Bob"@example.test'), rcpt('"Mixed.Case"@example.test'))
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    assert all(r.mark is not None and r.mark.delivered for r in msg.recipients)
    assert len(delivered_files(tmp_path / "maildir", "example.test", "bob")) == 1
    assert len(delivered_files(tmp_path / "maildir", "example.test", "mixed.case")) == 1


def test_unconvertible_message_fails_taken_recipients(tmp_path: Path) -> None:
    logon = make_logon(tmp_path)
    # An address with a space cannot be written into the To header.
    msg = make_message(rcpt("ok@example.test"), rcpt("bad address@elsewhere.test"))
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    ok, other = msg.recipients
    assert ok.mark is not None and not ok.mark.delivered
    assert ok.mark.reason == NDRReason.CONVERSION_NOT_PERFORMED
    assert "cannot be converted" in ok.mark.text
    assert other.mark is None
    assert delivered_files(tmp_path / "maildir", "example.test", "ok") == []


def test_only_bad_recipients_is_ok_without_writing(tmp_path: Path) -> None:
    logon = make_logon(tmp_path, address_types="SMTP,X-LOCAL")
    msg = make_message(rcpt("../x@example.test", adrtype="X-LOCAL"))
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    assert msg.recipients[0].mark is not None and not msg.recipients[0].mark.delivered
    assert list((tmp_path / "maildir").iterdir()) == []


def test_bcc_copies_reveal_no_bcc(tmp_path: Path) -> None:
    logon = make_logon(tmp_path)
    msg = make_message(
        rcpt("alice@example.test", kind=RecipientType.TO),
        rcpt("bob@example.test", kind=RecipientType.BCC),
        rcpt("carol@example.test", kind=RecipientType.BCC),
    )
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    root = tmp_path / "maildir"
    for local in ("alice", "bob", "carol"):
        (path,) = delivered_files(root, "example.test", local)
        raw = path.read_bytes()
        parsed = parse(path)
        assert parsed["Bcc"] is None
        assert b"bob@example.test" not in raw
        assert b"carol@example.test" not in raw
        assert "alice@example.test" in str(parsed["To"])


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="needs POSIX permissions as non-root")
def test_a_mailbox_that_cannot_be_created_delays_that_recipient_alone(tmp_path: Path) -> None:
    logon = make_logon(tmp_path)
    root = tmp_path / "maildir"
    # alice's Maildir exists; bob's cannot be created.
    maildir_mod.ensure_maildir(root / "example.test" / "alice")
    (root / "example.test").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        msg = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
        result = logon.submit_message(msg, 0)
    finally:
        (root / "example.test").chmod(stat.S_IRWXU)
    assert result.code == HResult.S_OK
    alice, bob = msg.recipients
    assert alice.mark is not None and alice.mark.delivered
    assert bob.mark is None and not bob.responsibility
    assert logon.end_message(msg.ref) == EndMessageFlags.RESEND_LATER
    assert len(delivered_files(root, "example.test", "alice")) == 1
    assert list((root / "example.test" / "alice" / "tmp").iterdir()) == []
    assert logon.status.last_error.startswith("Maildir write failed for 'bob@example.test':")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="needs POSIX permissions as non-root")
def test_an_unwritable_root_makes_the_whole_message_wait(tmp_path: Path) -> None:
    logon = make_logon(tmp_path)
    root = tmp_path / "maildir"
    root.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        msg = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
        result = logon.submit_message(msg, 0)
    finally:
        root.chmod(stat.S_IRWXU)
    # Nothing marked: the whole message waits, as for any temporary trouble.
    assert result.code == HResult.MAPI_E_WAIT
    assert result.wait_seconds == 0  # the spooler backs off
    assert result.reason.startswith("Maildir write failed for ")
    assert all(r.mark is None for r in msg.recipients)
    assert logon.end_message(msg.ref) == EndMessageFlags.NONE
    assert logon.status.status_code & StatusCode.FAILURE


def test_a_file_in_the_way_of_one_mailbox_delays_that_recipient_alone(tmp_path: Path) -> None:
    logon = make_logon(tmp_path)
    root = tmp_path / "maildir" / "example.test"
    root.mkdir(parents=True)
    (root / "bob").write_text("a file where bob's Maildir should be")  # fails even for root
    msg = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
    result = logon.submit_message(msg, 0)
    assert result.code == HResult.S_OK
    alice, bob = msg.recipients
    assert alice.mark is not None and alice.mark.delivered
    assert bob.mark is None
    assert logon.end_message(msg.ref) == EndMessageFlags.RESEND_LATER
    assert len(list((root / "alice" / "new").iterdir())) == 1
    assert logon.status.status_code & StatusCode.FAILURE
    # Fixed: the next attempt (bob alone) delivers and clears the failure from the status row.
    (root / "bob").unlink()
    msg = make_message((rcpt("alice@example.test"), True), rcpt("bob@example.test"))
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    assert logon.end_message(msg.ref) == EndMessageFlags.NONE
    assert len(delivered_files(tmp_path / "maildir", "example.test", "alice")) == 1
    assert len(delivered_files(tmp_path / "maildir", "example.test", "bob")) == 1
    assert not logon.status.status_code & StatusCode.FAILURE


def test_a_local_part_too_long_once_lower_cased_fails_that_recipient_alone(tmp_path: Path) -> None:
    # 122 x "İ" is 244 bytes in UTF-8, but its lower-case form ("i" + U+0307 each) is 366 bytes:
    # longer than a file name may be. (A short domain keeps the address within 254 bytes.)
    logon = make_logon(tmp_path, domains=["ex.test"])
    long_local = "İ" * 122
    msg = make_message(rcpt(f"{long_local}@ex.test"), rcpt("ok@ex.test"))
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    bad, ok = msg.recipients
    assert bad.mark is not None and not bad.mark.delivered
    assert bad.mark.reason == NDRReason.TRANSFER_IMPOSSIBLE
    assert bad.mark.diag == NDRDiag.MAIL_ADDRESS_INCORRECT
    assert "longer than 255 bytes" in bad.mark.text
    assert ok.mark is not None and ok.mark.delivered
    assert logon.end_message(msg.ref) == EndMessageFlags.NONE


@pytest.mark.parametrize(
    ("code", "words"), [(errno.ENAMETOOLONG, "File name too long"), (errno.EILSEQ, "Invalid or incomplete")]
)
def test_a_mailbox_name_the_file_system_refuses_fails_that_recipient_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, words: str
) -> None:
    # No file system here refuses a name the local-part check lets through, so this one is made to.
    logon = make_logon(tmp_path)
    real_ensure = maildir_mod.ensure_maildir

    def refusing(path: Path) -> None:
        if path.name == "bob":
            raise OSError(code, os.strerror(code), str(path))
        real_ensure(path)

    monkeypatch.setattr(maildir_mod, "ensure_maildir", refusing)
    msg = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    alice, bob = msg.recipients
    assert alice.mark is not None and alice.mark.delivered
    assert bob.mark is not None and not bob.mark.delivered
    assert bob.mark.diag == NDRDiag.MAIL_ADDRESS_INCORRECT
    assert "refuses the mailbox name" in bob.mark.text and words in bob.mark.text
    assert logon.end_message(msg.ref) == EndMessageFlags.NONE


def test_a_recipient_with_an_impossible_mailbox_gets_an_ndr_and_the_others_their_mail(tmp_path: Path) -> None:
    profile = Profile.create(tmp_path / "p")  # the default maildir transport for localhost
    long_local = "İ" * 122
    with postroom.logon(profile) as session:
        mid = session.create_message("Minutes", "body").to(f"{long_local}@localhost", "ok@localhost").submit()
        summary = session.deliver()
        assert (summary.delivered, summary.failed, summary.waiting) == (1, 1, 0)
        states = {s.row_id: s.state for s in session.recipient_states(mid)}
        assert states == {0: RecipientState.FAILED, 1: RecipientState.DELIVERED}
        (ndr,) = session.list_messages("Inbox")
        report = session.open_message(ndr.id)
        assert report.message_class == "REPORT.IPM.Note.NDR"
        (row,) = report.recipients
        assert row.get(T.PR_NDR_DIAG_CODE) == int(NDRDiag.MAIL_ADDRESS_INCORRECT)
        assert "longer than 255 bytes" in str(row.get(T.PR_REPORT_TEXT))
    assert len(delivered_files(profile.directory / "maildir", "localhost", "ok")) == 1


def test_rename_error_waits_and_cleans_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logon = make_logon(tmp_path)
    real_rename = os.rename
    calls: list[Any] = []

    def failing_rename(src: Any, dst: Any) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(maildir_mod.os, "rename", failing_rename)
    msg = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
    result = logon.submit_message(msg, 0)
    assert result.code == HResult.MAPI_E_WAIT
    root = tmp_path / "maildir" / "example.test"
    # The documented window: alice's copy was already in new/ (a retry may duplicate it, never lose it).
    assert len(list((root / "alice" / "new").iterdir())) == 1
    assert list((root / "bob" / "new").iterdir()) == []
    assert list((root / "bob" / "tmp").iterdir()) == []


def test_write_error_in_tmp_removes_earlier_tmp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logon = make_logon(tmp_path)
    real_write = maildir_mod.write_tmp
    calls: list[Path] = []

    def failing_write(maildir: Path, data: bytes) -> Path:
        calls.append(maildir)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(maildir, data)

    monkeypatch.setattr(maildir_mod, "write_tmp", failing_write)
    msg = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
    result = logon.submit_message(msg, 0)
    assert result.code == HResult.MAPI_E_WAIT
    assert "No space left on device" in result.reason
    root = tmp_path / "maildir" / "example.test"
    for local in ("alice", "bob"):
        assert list((root / local / "tmp").iterdir()) == []
        assert list((root / local / "new").iterdir()) == []

    # The retry delivers each recipient exactly once.
    monkeypatch.setattr(maildir_mod, "write_tmp", real_write)
    msg = make_message(rcpt("alice@example.test"), rcpt("bob@example.test"))
    assert logon.submit_message(msg, 0).code == HResult.S_OK
    for local in ("alice", "bob"):
        assert len(list((root / local / "new").iterdir())) == 1


def test_unique_names_differ() -> None:
    names = {maildir_mod.unique_name() for _ in range(100)}
    assert len(names) == 100


def test_a_mailbox_in_trouble_waits_alone_and_is_delivered_once_fixed(tmp_path: Path) -> None:
    profile = Profile.create(tmp_path / "p")
    domain = profile.directory / "maildir" / "localhost"
    domain.mkdir(parents=True)
    (domain / "bob").write_text("a file where bob's Maildir should be")
    with postroom.logon(profile) as session:
        mid = session.create_message("Minutes", "body").to("alice@localhost", "bob@localhost").submit()
        summary = session.deliver()
        assert (summary.delivered, summary.failed, summary.waiting) == (1, 0, 1)
        states = {s.row_id: s.state for s in session.recipient_states(mid)}
        assert states == {0: RecipientState.DELIVERED, 1: RecipientState.PENDING}
        [bob] = [r for r in session.recipient_report(mid) if r.state == "waiting"]
        assert bob.waiting_for == "local" and bob.why is not None and "Maildir write failed" in bob.why
        (domain / "bob").unlink()
        session.retry(mid)
        assert session.deliver().delivered == 1
        assert {s.state for s in session.recipient_states(mid)} == {RecipientState.DELIVERED}
    assert len(delivered_files(profile.directory / "maildir", "localhost", "alice")) == 1
    assert len(delivered_files(profile.directory / "maildir", "localhost", "bob")) == 1
