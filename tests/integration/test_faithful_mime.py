"""What goes in comes out (issue 16, items 1-3): a message given to `postroom send --eml` goes
over SMTP as its own bytes, with only the documented transport changes, and `export --eml`
gives back exactly what came in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.cli import argv, as_json, environment, ok
from support.cli import postroom as run
from support.smtp_sink import SmtpSink

pytestmark = pytest.mark.integration

# A signed message as a mail client writes it: the signed part must reach the server byte for byte.
SIGNED = (
    b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Bcc: hidden@example.test\r\n"
    b"Subject: signed, with headers that must survive\r\n"
    b"Message-ID: <signed.1@example.test>\r\n"
    b"In-Reply-To: <earlier@example.test>\r\n"
    b"References: <first@example.test>\r\n <earlier@example.test>\r\n"
    b"Reply-To: list@example.test\r\n"
    b"List-Unsubscribe: <mailto:unsubscribe@example.test>\r\n"
    b"Auto-Submitted: auto-generated\r\n"
    b"X-Tag: one\r\n"
    b"X-Tag: two\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/signed; micalg=pgp-sha256; protocol="application/pgp-signature";\r\n'
    b' boundary="sig"\r\n'
    b"\r\n"
    b"--sig\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=C3=BC=C3=9Fe   \r\n"
    b"trailing blanks and =\r\n"
    b"soft breaks stay as they are\r\n"
    b"--sig\r\n"
    b"Content-Type: application/pgp-signature; name=signature.asc\r\n"
    b"\r\n"
    b"-----BEGIN PGP SIGNATURE-----\r\n"
    b"iQEzBAEBCAAdFiEE\r\n"
    b"-----END PGP SIGNATURE-----\r\n"
    b"--sig--\r\n"
)


def export_eml(profile: Path, mid: int, *, rendered: bool = False) -> bytes:
    """`postroom export ID --eml`, its stdout as bytes; `rendered`: it says on stderr that the
    message has no original bytes any more, so what it wrote is a rendering."""
    proc = subprocess.run(
        argv(profile, "export", str(mid), "--eml"), capture_output=True, env=environment(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert (b"has no original bytes" in proc.stderr) is rendered, proc.stderr
    return proc.stdout


def test_a_message_sent_unchanged_goes_over_smtp_as_its_own_bytes_without_bcc_and_with_a_date(
    profile: Path, tmp_path: Path
) -> None:
    eml = tmp_path / "signed.eml"
    eml.write_bytes(SIGNED)
    with SmtpSink() as sink:
        ok(run("service", "add", "smtp", "work", *sink.options(), profile=profile))
        sent = as_json(ok(run("send", "--eml", eml, "--json", profile=profile)))
        assert {r["state"] for r in sent["recipients"]} == {"delivered"}
        [wire] = sink.handler.messages
    head, body = SIGNED.split(b"\r\n\r\n", 1)
    fields = head.split(b"\r\n")
    kept = b"\r\n".join(f for f in fields if not f.startswith(b"Bcc:"))
    # The only changes: Bcc removed, and the missing Date added after the last field.
    assert wire.startswith(kept + b"\r\nDate: ")
    assert wire.endswith(b"\r\n\r\n" + body)
    assert wire.count(b"\r\n") == SIGNED.count(b"\r\n")  # one field out, one in
    [delivered] = sink.delivered
    assert sorted(delivered) == ["bob@example.test", "hidden@example.test"]
    # The stored message still is the file, byte for byte.
    assert export_eml(profile, sent["message_id"]) == SIGNED


def test_a_message_edited_on_the_command_line_keeps_its_headers_and_its_signed_content(
    profile: Path, tmp_path: Path
) -> None:
    eml = tmp_path / "signed.eml"
    eml.write_bytes(SIGNED)
    with SmtpSink() as sink:
        ok(run("service", "add", "smtp", "work", *sink.options(), profile=profile))
        sent = as_json(ok(run("send", "--eml", eml, "--subject", "Re-sent", "--json", profile=profile)))
        [wire] = sink.handler.messages
    head, body = wire.split(b"\r\n\r\n", 1)
    assert body == SIGNED.split(b"\r\n\r\n", 1)[1]  # the signed part and its signature, byte for byte
    for field in (b"References: <first@example.test>\r\n <earlier@example.test>", b"X-Tag: one\r\nX-Tag: two"):
        assert field in head
    assert b"Subject: Re-sent" in head and b"Bcc" not in head
    # show --props shows the headers as they came; export --eml no longer claims the file's bytes.
    shown = ok(run("show", str(sent["message_id"]), "--props", profile=profile)).stdout
    assert "List-Unsubscribe: <mailto:unsubscribe@example.test>" in shown
    exported = export_eml(profile, sent["message_id"], rendered=True)
    assert b"Subject: Re-sent" in exported and exported.endswith(SIGNED.split(b"\r\n\r\n", 1)[1].replace(b"\r", b""))
