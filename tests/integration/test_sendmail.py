"""`postroom-sendmail`, run as its callers run it: a message on stdin, sendmail's flags, its exit codes.

Into a profile of one's own ($POSTROOM_PROFILE) with the default `local` transport (Maildirs for
localhost), or an smtp transport sending to an aiosmtpd sink on loopback when the envelope
matters; the system profile's socket has tests of its own (test_system_profile.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import postroom

from support.cli import ok, popen, wait_for
from support.cli import postroom as run
from support.sendmail import sendmail
from support.smtp_sink import SmtpSink

pytestmark = pytest.mark.integration

MESSAGE = b"From: Alice <alice@localhost>\nTo: bob@localhost\nSubject: minutes\n\nAs discussed.\n"


def env(profile: Path) -> dict[str, str | None]:
    return {"POSTROOM_PROFILE": str(profile), "POSTROOM_SOCKET": None}


def mailbox(profile: Path, user: str) -> list[bytes]:
    new = profile / "maildir" / "localhost" / user / "new"
    return [f.read_bytes() for f in sorted(new.iterdir())] if new.is_dir() else []


def test_a_message_on_stdin_goes_to_the_recipients_named_as_arguments_as_its_own_bytes(profile: Path) -> None:
    done = sendmail("carol@localhost", stdin=MESSAGE, env=env(profile))
    assert done.returncode == 0, done.stderr
    (delivered,) = mailbox(profile, "carol")
    assert delivered.startswith(MESSAGE.split(b"\n\n")[0] + b"\n")  # the header block as written…
    assert delivered.endswith(b"\n\nAs discussed.\n")  # …then Date and Message-ID added, and the body
    assert mailbox(profile, "bob") == []  # named in the header only: not in the envelope


def test_dash_t_sends_to_to_cc_and_bcc_and_the_bcc_header_is_removed(profile: Path) -> None:
    message = b"From: alice@localhost\nTo: bob@localhost\nCc: carol@localhost\nBcc: dave@localhost\nSubject: t\n\nx\n"
    assert sendmail("-t", "-i", stdin=message, env=env(profile)).returncode == 0
    for user in ("bob", "carol", "dave"):
        (delivered,) = mailbox(profile, user)
        assert b"Bcc:" not in delivered and b"dave" not in delivered.split(b"\n\n")[0]


def test_without_dash_i_a_line_with_a_single_dot_ends_the_message(profile: Path) -> None:
    message = MESSAGE + b".\nnot part of it\n"
    assert sendmail("bob@localhost", stdin=message, env=env(profile)).returncode == 0
    assert sendmail("-oi", "carol@localhost", stdin=message, env=env(profile)).returncode == 0
    assert b"not part of it" not in mailbox(profile, "bob")[0]
    assert mailbox(profile, "carol")[0].endswith(b"\n.\nnot part of it\n")


def test_a_message_without_a_from_gets_one_with_the_full_name_given_by_dash_f(profile: Path) -> None:
    ok(run("identity", "set", "Cron", "cron@localhost", profile=profile))
    done = sendmail("-F", "Cron Daemon", "bob@localhost", stdin=b"Subject: job\n\noutput\n", env=env(profile))
    assert done.returncode == 0, done.stderr
    (delivered,) = mailbox(profile, "bob")
    assert delivered.startswith(b"From: Cron Daemon <cron@localhost>\nSubject: job\n")


def test_dash_f_is_the_envelope_sender_and_the_from_header_stays_as_written(profile: Path) -> None:
    with SmtpSink() as sink:
        ok(run("service", "add", "smtp", "relay", *sink.options(), profile=profile))
        done = sendmail("-v", "-f", "bounces@example.org", "x@example.net", stdin=MESSAGE, env=env(profile))
        assert done.returncode == 0 and b"x@example.net: delivered" in done.stderr, done.stderr
        assert sink.handler.senders == ["bounces@example.org"]
        assert sink.delivered == [["x@example.net"]]
        (sent,) = sink.handler.messages
        assert sent.startswith(MESSAGE.split(b"\n\n")[0].replace(b"\n", b"\r\n") + b"\r\n")


def test_with_a_spooler_daemon_running_the_daemon_delivers_what_was_submitted(profile: Path) -> None:
    daemon = popen("spooler", profile=profile)
    try:
        assert daemon.stdout is not None and "Spooler running" in daemon.stdout.readline()
        done = sendmail("-v", "bob@localhost", stdin=MESSAGE, env=env(profile))
        assert done.returncode == 0 and b"the spooler daemon delivers it" in done.stderr, done.stderr
        wait_for(lambda: len(mailbox(profile, "bob")) == 1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
    assert daemon.returncode == 0


def test_the_submitting_uid_is_recorded_on_the_message(profile: Path) -> None:
    ok(run("offline", profile=profile))  # kept in the queue: once handled, relayed mail is deleted
    assert sendmail("bob@localhost", stdin=MESSAGE, env=env(profile)).returncode == 0
    with postroom.logon(profile) as session:
        (queued,) = session.queue()
        assert session.submitter_uid(queued.id) == os.getuid()


def test_mailq_and_dash_bp_list_the_messages_waiting_in_the_queue(profile: Path, tmp_path: Path) -> None:
    ok(run("offline", profile=profile))
    assert sendmail("bob@localhost", stdin=MESSAGE, env=env(profile)).returncode == 0
    ok(run("send", "--to", "carol@localhost", "--subject", "from postroom send", "-b", "x", profile=profile))
    for listing in (
        sendmail(program="mailq", links=tmp_path, env=env(profile)),
        sendmail("-bp", env=env(profile)),
    ):
        assert listing.returncode == 0, listing.stderr
        assert b"minutes" in listing.stdout and b"bob@localhost" in listing.stdout
        assert b"from postroom send" in listing.stdout  # a profile of one's own: every message is yours
    ok(run("online", profile=profile))
    ok(run("sendreceive", profile=profile))
    assert b"Mail queue is empty" in sendmail("-bp", env=env(profile)).stdout


def speak_smtp(profile: Path, *lines: bytes) -> tuple[list[bytes], bytes]:
    """`postroom-sendmail -bs` given `lines`: the code of each reply (its last line) and all it said."""
    done = sendmail("-bs", stdin=b"".join(line + b"\r\n" for line in lines), env=env(profile))
    assert done.returncode == 0, done.stderr
    return [line[:3] for line in done.stdout.splitlines() if line[3:4] != b"-"], done.stdout


def test_dash_bs_speaks_smtp_on_stdin_and_stdout(profile: Path) -> None:
    codes, said = speak_smtp(
        profile,
        *(b"EHLO client", b"MAIL FROM:<alice@localhost>", b"RCPT TO:<bob@localhost>", b"DATA"),
        *(b"Subject: over smtp", b"", b"..leading dot", b".", b"QUIT"),
    )
    assert codes == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"], said
    (delivered,) = mailbox(profile, "bob")
    assert delivered.endswith(b"\n\n.leading dot\n")


def test_dash_bs_offers_dsn_and_keeps_ret_envid_and_each_recipients_notify_and_orcpt(profile: Path) -> None:
    ok(run("offline", profile=profile))  # the message waits in the queue, to be read
    codes, said = speak_smtp(
        profile,
        b"EHLO client",
        b"MAIL FROM:<alice@localhost> RET=HDRS ENVID=job+2B42 SIZE=60 BODY=8BITMIME",
        b"RCPT TO:<bob@localhost> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Bob+40example.org",
        b"RCPT TO:<carol@localhost> NOTIFY=NEVER",
        *(b"DATA", b"Subject: asked", b"", b"body", b".", b"QUIT"),
    )
    assert b"250-DSN" in said.splitlines() or b"250 DSN" in said.splitlines(), said
    assert codes == [b"220", b"250", b"250", b"250", b"250", b"354", b"250", b"221"], said
    tags = postroom.mapi.tags
    with postroom.logon(profile) as session:
        [queued] = session.queue()
        message = session.open_message(queued.id)
    assert (message.props.get(tags.PR_POSTROOM_DSN_RET), message.props.get(tags.PR_POSTROOM_DSN_ENVID)) == (
        "HDRS",
        "job+42",
    )
    asked = {
        r.email_address: (r.props.get(tags.PR_POSTROOM_DSN_NOTIFY), r.props.get(tags.PR_POSTROOM_DSN_ORCPT))
        for r in message.recipients
    }
    assert asked == {"bob@localhost": ("SUCCESS,DELAY", "rfc822;Bob@example.org"), "carol@localhost": ("NEVER", None)}


def test_dash_bs_refuses_a_bad_notify_with_501_and_notify_on_mail_with_555(profile: Path) -> None:
    codes, said = speak_smtp(
        profile,
        b"EHLO client",
        b"MAIL FROM:<alice@localhost> NOTIFY=NEVER",
        b"MAIL FROM:<alice@localhost> SMTPUTF8 FUTURE=1",
        b"MAIL FROM:<alice@localhost> RET=FULL",
        b"RCPT TO:<bob@localhost> NOTIFY=SOMETIMES",
        b"RCPT TO:<bob@localhost> RET=HDRS",
        b"RCPT TO:<bob@localhost> NOTIFY=FAILURE",
        b"HELO client",  # no extensions offered: no parameters taken
        b"MAIL FROM:<alice@localhost> RET=FULL",
        b"QUIT",
    )
    assert codes == [b"220", b"250", b"555", b"555", b"250", b"501", b"555", b"250", b"250", b"555", b"221"], said
    assert mailbox(profile, "bob") == []


# --- the exit codes (sysexits.h) ---------------------------------------------------------------------


def test_an_unknown_flag_is_ex_usage(profile: Path) -> None:
    done = sendmail("-Q", "bob@localhost", stdin=MESSAGE, env=env(profile))
    assert done.returncode == 64 and b"unknown option '-Q'" in done.stderr
    assert mailbox(profile, "bob") == []


def test_dash_t_without_recipient_headers_is_ex_dataerr(profile: Path) -> None:
    done = sendmail("-t", stdin=b"Subject: nobody\n\nx\n", env=env(profile))
    assert done.returncode == 65 and b"MAPI_E_NO_RECIPIENTS" in done.stderr


def test_a_recipient_that_is_no_address_is_ex_nouser(profile: Path) -> None:
    done = sendmail("bob@@localhost", stdin=MESSAGE, env=env(profile))
    assert done.returncode == 67 and b"bob@@localhost" in done.stderr


def test_a_submit_socket_that_answers_nonsense_is_ex_software(profile: Path, nonsense_socket: Path) -> None:
    done = sendmail("bob@localhost", stdin=MESSAGE, env={"POSTROOM_SOCKET": str(nonsense_socket)})
    assert done.returncode == 70 and b"not its protocol" in done.stderr


def test_a_store_that_cannot_be_written_is_ex_cantcreat(profile: Path) -> None:
    (profile / "store.sqlite-writer").mkdir()  # what the store locks is no file: even root cannot write it
    done = sendmail("bob@localhost", stdin=MESSAGE, env=env(profile))
    assert done.returncode == 73, done.stderr


def test_a_submit_socket_nobody_listens_on_is_ex_tempfail(tmp_path: Path) -> None:
    stale = tmp_path / "submit.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listened on: as a socket left by a stopped server
    done = sendmail("bob@localhost", stdin=MESSAGE, env={"POSTROOM_SOCKET": str(stale)})
    assert done.returncode == 75 and b"cannot reach the submit socket" in done.stderr


def test_no_profile_at_postroom_profile_is_ex_config(tmp_path: Path) -> None:
    done = sendmail("bob@localhost", stdin=MESSAGE, env={"POSTROOM_PROFILE": str(tmp_path / "none")})
    assert done.returncode == 78 and b"holds no profile" in done.stderr


@pytest.fixture
def nonsense_socket(tmp_path: Path) -> Iterator[Path]:
    """A Unix socket whose server answers every connection with a line that is not the protocol."""
    path = tmp_path / "nonsense.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def answer() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.recv(1 << 16)
            conn.sendall(json.dumps(["what?"]).encode() + b"\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield path
    server.close()
    thread.join(5)
