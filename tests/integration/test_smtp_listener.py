"""The SMTP submission listener (`postroom serve smtp`, `postroom spooler --smtp`), driven by real
clients (Python's smtplib, swaks) over loopback, delivering into the profile's Maildir."""

from __future__ import annotations

import json
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from support.cli import ok, postroom, wait_for
from support.disk import fill, small_disk
from support.listener import running

pytestmark = pytest.mark.integration

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@localhost>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <listener-1@example.org>\r\n"
    b"X-Odd:   kept   as   is\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe,\r\n"
    b"..a line that starts with a dot\r\n"
    b"the end\r\n"
)


def mailbox(profile: Path, user: str) -> list[Path]:
    new = profile / "maildir" / "localhost" / user / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def test_a_message_sent_with_smtplib_reaches_the_maildir_byte_for_byte(profile: Path) -> None:
    with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            refused = client.sendmail("alice@example.org", ["bob@localhost", "carol@localhost"], MESSAGE)
        assert refused == {}
        wait_for(lambda: len(mailbox(profile, "bob")) == 1 and len(mailbox(profile, "carol")) == 1)
    # Maildir files have LF line ends; otherwise the bytes are the ones sent (a leading dot too).
    for user in ("bob", "carol"):
        [path] = mailbox(profile, user)
        assert path.read_bytes() == lf(MESSAGE)


def test_a_bcc_recipient_only_in_the_envelope_gets_the_message_and_the_header_recipient_does_not(
    profile: Path,
) -> None:
    with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.sendmail("alice@example.org", ["dave@localhost"], MESSAGE)
        wait_for(lambda: len(mailbox(profile, "dave")) == 1)
    assert mailbox(profile, "bob") == []  # To: names Bob, but the envelope decides


def test_a_recipient_no_transport_takes_is_refused_at_rcpt_with_550_5_1_1(profile: Path) -> None:
    with (
        running(profile, "serve", "smtp", "--listen", "127.0.0.1:0") as listener,
        smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as client,
    ):
        client.ehlo()
        client.mail("alice@example.org")
        code, text = client.rcpt("someone@example.com")
        assert (code, text.split()[0]) == (550, b"5.1.1")
        assert client.rcpt("bob@localhost")[0] == 250


def test_the_250_comes_only_once_the_message_is_in_the_store(profile: Path) -> None:
    """serve smtp alone delivers nothing: what got 250 waits in the queue, for a daemon."""
    with running(profile, "serve", "smtp", "--listen", "127.0.0.1:0") as listener:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as client:
            client.sendmail("alice@example.org", ["bob@localhost"], MESSAGE)
        queue = json.loads(ok(postroom("--json", "queue", profile=profile)).stdout)
    assert len(queue["messages"] if isinstance(queue, dict) else queue) == 1
    assert mailbox(profile, "bob") == []
    exported = postroom("export", "1", "--eml", profile=profile)
    assert exported.returncode == 0
    assert lf(exported.stdout.encode("utf-8")) == lf(MESSAGE)


def test_a_message_over_the_size_limit_is_refused_with_552(profile: Path) -> None:
    with (
        running(profile, "serve", "smtp", "--listen", "127.0.0.1:0", "--max-message-size", "1k") as listener,
        smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as client,
        pytest.raises(smtplib.SMTPSenderRefused) as refused,
    ):
        client.sendmail("alice@example.org", ["bob@localhost"], MESSAGE + b"x" * 2000 + b"\r\n")
    assert refused.value.smtp_code == 552


def test_one_recipient_more_than_the_limit_is_refused_with_452(profile: Path) -> None:
    with (
        running(profile, "serve", "smtp", "--listen", "127.0.0.1:0", "--max-recipients", "2") as listener,
        smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as client,
    ):
        client.ehlo()
        client.mail("alice@example.org")
        assert client.rcpt("a@localhost")[0] == 250
        assert client.rcpt("b@localhost")[0] == 250
        code, text = client.rcpt("c@localhost")
    assert (code, text.split()[0]) == (452, b"4.5.3")


def test_one_connection_more_than_the_limit_gets_421(profile: Path) -> None:
    with running(profile, "serve", "smtp", "--listen", "127.0.0.1:0", "--max-connections", "1") as listener:
        first = smtplib.SMTP("127.0.0.1", listener.port, timeout=30)
        try:
            with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as second:
                assert second.recv(200).startswith(b"421 4.7.0")
        finally:
            first.quit()
        listener.wait_line("refused: 1 connections already")


def test_a_silent_client_is_cut_off_after_the_timeout(profile: Path) -> None:
    with running(profile, "serve", "smtp", "--listen", "127.0.0.1:0", "--timeout", "1") as listener:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as silent:
            greeting = silent.recv(200)
            assert greeting.startswith(b"220")
            started = time.monotonic()
            while silent.recv(200):  # until the listener closes the connection
                pass
            assert time.monotonic() - started < 25  # cut off, not left open until the test's limit
        listener.wait_line(r"timed out: silent for 1 s")


def test_auth_with_a_listener_user_works_and_the_password_is_kept_only_hashed(profile: Path) -> None:
    ok(postroom("serve", "smtp", "--add-user", "cron", profile=profile, stdin=b"s3cret-Pa55\n"))
    assert b"s3cret-Pa55" not in (profile / "profile.toml").read_bytes()
    assert "scrypt$" in (profile / "profile.toml").read_text()
    assert ok(postroom("serve", "smtp", "--list-users", profile=profile)).stdout.split() == ["cron"]
    with running(profile, "serve", "smtp", "--listen", "127.0.0.1:0", "--log-level", "debug") as listener:
        with (
            smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as client,
            pytest.raises(smtplib.SMTPAuthenticationError),
        ):
            client.login("cron", "wrong-Pa55")
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as client:
            client.login("cron", "s3cret-Pa55")
            client.sendmail("alice@example.org", ["bob@localhost"], MESSAGE)
        listener.wait_line(r"user=cron accepted")
        listener.wait_line(r"AUTH \w+ failed for user 'cron'")
    log = "\n".join(listener.lines)
    for secret in ("s3cret-Pa55", "wrong-Pa55", "czNjcmV0LVBhNTU", "AGNyb24AczNjcmV0LVBhNTU"):
        assert secret not in log  # neither the passwords nor their base64 (AUTH PLAIN / LOGIN)


def test_a_removed_listener_user_is_gone_and_an_unknown_one_is_a_clear_error(profile: Path) -> None:
    ok(postroom("serve", "smtp", "--add-user", "cron", profile=profile, stdin=b"pw\n"))
    ok(postroom("serve", "smtp", "--remove-user", "cron", profile=profile))
    again = postroom("serve", "smtp", "--remove-user", "cron", profile=profile)
    assert again.returncode == 2
    assert "MAPI_E_NOT_FOUND" in again.stderr and "Traceback" not in again.stderr


def test_a_bad_listen_address_is_a_one_line_error(profile: Path) -> None:
    done = postroom("serve", "smtp", "--listen", "nowhere", profile=profile)
    assert done.returncode == 2
    assert "MAPI_E_INVALID_PARAMETER" in done.stderr and "HOST:PORT" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_each_recipient_outcome_is_one_log_line_like_postfix(profile: Path) -> None:
    with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.sendmail("alice@example.org", ["bob@localhost"], MESSAGE)
        line = daemon.wait_line(r"to=<bob@localhost>")
    assert "msgid=<listener-1@example.org>" in line
    assert "transport=local relay=maildir delay=" in line
    assert " status=sent" in line
    assert not line[:1].isdigit()  # not on a terminal: no time stamp of its own


def test_log_format_json_writes_one_object_a_line(profile: Path) -> None:
    with running(profile, "spooler", "--smtp", "127.0.0.1:0", "--log-format", "json") as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.sendmail("alice@example.org", ["bob@localhost"], MESSAGE)
        line = daemon.wait_line(r"to=<bob@localhost>")
    doc = json.loads(line)
    assert doc["level"] == "info" and doc["logger"] == "postroom.delivery"
    assert "status=sent" in doc["message"] and "time" not in doc


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (Debian package swaks)")
def test_swaks_hands_a_message_to_the_listener(profile: Path) -> None:
    with running(profile, "spooler", "--smtp", "127.0.0.1:0") as daemon:
        done = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{daemon.port}", "--from", "alice@example.org",
             "--to", "erin@localhost", "--header", "Subject: from swaks", "--body", "swaks body"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: len(mailbox(profile, "erin")) == 1)
    [path] = mailbox(profile, "erin")
    text = path.read_text()
    assert "Subject: from swaks" in text and "swaks body" in text


def test_a_full_disk_is_452_and_the_client_can_try_again_once_there_is_space(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        profile = disk / "profile"
        ok(postroom("init", profile))
        with running(profile, "serve", "smtp", "--listen", "127.0.0.1:0") as listener:
            with smtplib.SMTP("127.0.0.1", listener.port, timeout=60) as client:
                client.sendmail("alice@example.org", ["bob@localhost"], MESSAGE)  # room for this one
                filler = fill(disk)
                with pytest.raises(smtplib.SMTPDataError) as full:
                    client.sendmail("alice@example.org", ["bob@localhost"], MESSAGE + (b"y" * 70 + b"\r\n") * 800)
                assert (full.value.smtp_code, full.value.smtp_error.split()[0]) == (452, b"4.3.1")
                filler.unlink()
                client.sendmail("alice@example.org", ["bob@localhost"], MESSAGE)  # taken again
            listener.wait_line(r"not taken: .*(space|disk)")
        assert len(json.loads(ok(postroom("--json", "queue", profile=profile)).stdout)) == 2


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def own_address() -> str | None:
    """This machine's address on a network interface (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the interface
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_starttls_then_auth_works_and_off_loopback_auth_is_refused_before_tls(profile: Path, tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    ok(postroom("serve", "smtp", "--add-user", "cron", profile=profile, stdin=b"pw-tls\n"))
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    with (
        running(profile, "serve", "smtp", "--listen", "127.0.0.1:0", *tls) as listener,
        smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as client,
    ):
        client.starttls(context=insecure)
        client.login("cron", "pw-tls")
        assert client.sendmail("alice@example.org", ["bob@localhost"], MESSAGE) == {}
    address = own_address()
    if address is None:
        pytest.skip("no network interface besides loopback to listen on")
    with (
        running(profile, "serve", "smtp", "--listen", f"{address}:0", *tls) as listener,
        smtplib.SMTP(address, listener.port, timeout=30) as client,
    ):
        client.ehlo()
        assert "auth" not in client.esmtp_features  # not offered in clear text off loopback
        code, _ = client.docmd("AUTH", "PLAIN AGNyb24AcHctdGxz")
        assert code == 538  # encryption required
        assert client.mail("alice@example.org")[0] == 530  # and AUTH is required from here
        client.starttls(context=insecure)
        client.login("cron", "pw-tls")
        client.sendmail("alice@example.org", ["bob@localhost"], MESSAGE)


def test_a_full_queue_is_452_at_mail(profile: Path) -> None:
    with (
        running(profile, "serve", "smtp", "--listen", "127.0.0.1:0", "--max-queued", "1") as listener,
        smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as client,
    ):
        client.sendmail("alice@example.org", ["bob@localhost"], MESSAGE)
        code, text = client.mail("alice@example.org")
        assert (code, text.split()[0]) == (452, b"4.3.1")
        listener.wait_line("refused: the queue is full")


def test_a_client_that_drips_commands_is_cut_off_after_the_session_limit(profile: Path) -> None:
    with running(
        profile, "serve", "smtp", "--listen", "127.0.0.1:0", "--timeout", "5", "--max-session-time", "2"
    ) as listener:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as client:
            started = time.monotonic()
            with pytest.raises(smtplib.SMTPServerDisconnected):
                while time.monotonic() - started < 25:
                    client.noop()  # busy, never silent for 5 s
                    time.sleep(0.3)
        listener.wait_line("cut off: open longer than 2 s")
