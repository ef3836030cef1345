"""Issue 16's acceptance: real messages keep their bytes through Postfix, IMAP and POP3.

The corpus (tests/data/corpus/, real messages from two mail libraries' test suites) goes out
through `postroom send --eml` to Postfix on loopback and must arrive in the Maildir with every
header and every byte of every part as it was, except the documented transport changes
(`support.fidelity`). The same messages put into a Dovecot mailbox, received over IMAP and over
POP3 and written out with `postroom export ID --eml`, must be byte-identical to what the server
served. A PGP/MIME message signed with gpg and an S/MIME message signed with openssl still verify
after going out and after coming back in.

The corpus messages keep their own To/Cc (addresses all over the world): they are sent to the
Postfix peer's corpus listener, which takes any recipient and redirects the whole message to
corpus@example.test without touching a header (peers.py). Rewriting their To/Cc instead would
change the very bytes under test, and `send --eml` has no envelope-only recipients (its `--to`
replaces the message's own).

The `postroom` commands of the batches run in this process (`support.cli.in_process`, the
console script's own code) because ~150 of them as processes would cost two minutes; the
signature tests use real processes.
"""

from __future__ import annotations

import email.message
import email.policy
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import CORPUS_MAILBOX, PASSWORD_ENV, Peers, wait_until

import postroom
from postroom.profile import Profile
from postroom.session import Session

from support.cli import ENV, argv, in_process
from support.cli import postroom as postroom_process
from support.fidelity import corpus_files, corpus_id, split, to_crlf, to_lf, transport_differences
from support.prerequisites import unavailable

pytestmark = pytest.mark.integration

ENVELOPE_SENDER = "corpus-sender@example.test"
CORPUS = corpus_files()


# --- helpers -------------------------------------------------------------------------------------------------


def sending_profile(peers: Peers, directory: Path, *, port: int | None = None) -> Path:
    """A profile whose one account is the Postfix peer (the corpus listener unless `port`)."""
    profile = Profile.create(directory, with_defaults=False)
    options = {
        "host": "127.0.0.1",
        "port": port or peers.corpus_smtp_port,
        "security": "none",
        "sender": ENVELOPE_SENDER,
        "timeout": 60,
    }
    profile.add_service("smtp", "postfix", options)
    profile.save()
    return directory


def receiving_session(peers: Peers, directory: Path, kind: str, user: str) -> Session:
    profile = Profile.create(directory, with_defaults=False)
    port = peers.imap_port if kind == "imap" else peers.pop3_port
    options = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": user,
        "password_env": PASSWORD_ENV,
        "timeout": 60,
    }
    profile.add_service(kind, f"in-{kind}", options)
    profile.save()
    return postroom.logon(profile)


def new_maildir_files(peers: Peers, address: str, before: set[Path], count: int) -> list[Path]:
    """The files that arrive in `address`'s Maildir besides `before`, once there are `count`."""

    def arrived() -> list[Path]:
        return [p for p in peers.maildir_files(address) if p not in before]

    wait_until(lambda: len(arrived()) >= count, 30, 0.1)
    return arrived()


def send_through_postfix(profile: Path, files: list[Path]) -> list[str]:
    """Submit every file with `send --eml --later`, then deliver them in one spooler pass."""
    failures = []
    for path in files:
        code, out, err = in_process(profile, "send", "--eml", path, "--later")
        if code != 0:
            failures.append(f"{corpus_id(path)}: send --eml exit {code}: {err.strip() or out.decode()[-300:]}")
    code, out, err = in_process(profile, "spooler", "--once")
    if code != 0:
        lines = [line for line in out.decode().splitlines() if " 0 failed" not in line]
        failures.append(f"spooler --once: exit {code}: {err.strip()} " + "\n".join(lines[-20:]))
    return failures


def match_arrivals(originals: dict[str, bytes], arrived: list[bytes]) -> list[str]:
    """Pair each original with an arrived message equal to it but for the documented changes;
    for those without one, the differences from the arrival most like it."""
    problems: list[str] = []
    unused = list(arrived)
    for name, original in originals.items():
        exact = next((a for a in unused if not transport_differences(original, a)), None)
        if exact is not None:
            unused.remove(exact)
            continue
        want = split(to_lf(original))
        subject = next((f.raw for f in want.fields if f.name == "subject"), None)
        similar = [a for a in unused if split(to_lf(a)).body == want.body] or [
            a for a in unused if subject is not None and subject in a
        ]
        if similar:
            problems.append(f"{name}: {'; '.join(transport_differences(original, similar[0]))}")
        else:
            problems.append(f"{name}: did not arrive (no arrival with its body or its Subject)")
    return problems


def headers_not_shown(profile: Path, mid: int, message: bytes) -> list[str]:
    """The header fields of `message` (those in ASCII) that `postroom show ID --props` does not
    show in full, in PR_TRANSPORT_MESSAGE_HEADERS."""
    code, out, err = in_process(profile, "--json", "show", str(mid), "--props")
    if code != 0:
        return [f"show {mid} --props: exit {code}: {err.strip()}"]
    props = {p["name"]: p["value"] for p in json.loads(out)["props"]}
    shown = to_lf(str(props.get("PR_TRANSPORT_MESSAGE_HEADERS", "")).encode("utf-8"))
    missing = [f.raw for f in split(to_lf(message)).fields if f.raw.isascii() and f.raw not in shown]
    return [f"message {mid}: show --props lacks {field[:100]!r}" for field in missing[:3]]


# --- outbound: the corpus through Postfix --------------------------------------------------------------------


def test_every_corpus_message_sent_with_send_eml_arrives_through_postfix_with_its_bytes(
    peers: Peers, tmp_path: Path
) -> None:
    assert len(CORPUS) >= 30
    profile = sending_profile(peers, tmp_path / "sender")
    before = set(peers.maildir_files(CORPUS_MAILBOX))
    failures = send_through_postfix(profile, CORPUS)
    arrived = new_maildir_files(peers, CORPUS_MAILBOX, before, len(CORPUS) - len(failures))
    problems = match_arrivals({corpus_id(p): p.read_bytes() for p in CORPUS}, [p.read_bytes() for p in arrived])
    report = failures + problems
    assert not report, f"{len(report)} of {len(CORPUS)} corpus messages changed:\n" + "\n".join(report)
    assert len(arrived) == len(CORPUS)


# --- inbound: the corpus over IMAP and POP3 ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["imap", "pop3"])
def test_every_corpus_message_received_and_exported_with_export_eml_is_byte_identical(
    peers: Peers, tmp_path: Path, kind: str
) -> None:
    """Dovecot serves a message with CRLF line ends (the Maildir file may have LF): that, the
    bytes the server gave, is what `export --eml` must give back. POP3 cannot carry a message
    without a final line end (RETR is lines ended by CRLF.CRLF): there the server adds one."""
    user = peers.new_user("corpus")
    for path in CORPUS:
        peers.put_message(user, path.read_bytes())
    with receiving_session(peers, tmp_path / kind, kind, user) as session:
        assert session.receive() == len(CORPUS)
        ids = [m.id for m in session.list_messages(session.inbox)]
    exported: list[bytes] = []
    problems: list[str] = []
    for mid in ids:
        code, out, err = in_process(tmp_path / kind, "export", str(mid), "--eml")
        if code != 0:
            problems.append(f"export {mid} --eml: exit {code}: {err.strip()}")
        exported.append(out)
        problems += headers_not_shown(tmp_path / kind, mid, out)
    for path in CORPUS:
        served = to_crlf(path.read_bytes())
        if kind == "pop3" and not served.endswith(b"\r\n"):
            served += b"\r\n"
        if served in exported:
            exported.remove(served)
            continue
        near = [e for e in exported if split(to_lf(e)).body == split(to_lf(served)).body]
        detail = "; ".join(transport_differences(served, near[0])) if near else "no export with its body"
        if not near:
            headed = [e for e in exported if e[:60] == served[:60]]
            detail += f"; exported as {headed[0][:150]!r}" if headed else ""
        problems.append(f"{corpus_id(path)}: not exported byte for byte ({detail})")
    assert not problems, f"{len(problems)} of {len(CORPUS)} differ over {kind}:\n" + "\n".join(problems)


# --- signatures: gpg (PGP/MIME) and openssl (S/MIME) ---------------------------------------------------------

SIGNED_TEXT = "Grüße aus Köln.\nThe signature covers these bytes, quoted-printable and all.\nFrom here on.\n"


def signed_part() -> bytes:
    """The part to sign, as its canonical CRLF bytes (RFC 3156 §5, RFC 8551 §3.1.1)."""
    part = email.message.MIMEPart(policy=email.policy.SMTP)
    part.set_content(SIGNED_TEXT, cte="quoted-printable")
    return to_crlf(part.as_bytes())


def multipart_signed(headers: str, protocol: str, micalg: str, content: bytes, signature: bytes, ctype: str) -> bytes:
    """A multipart/signed message around `content`, assembled as bytes: the email package would
    serialize the signed part again, and a signature is over these exact bytes."""
    boundary = f"signed-{secrets.token_hex(8)}"
    head = (
        f"{headers}MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/signed; protocol="{protocol}"; micalg={micalg};\r\n boundary="{boundary}"\r\n\r\n'
        "This is an OpenPGP/MIME or S/MIME signed message.\r\n"
    )
    sig_part = f"Content-Type: {ctype}\r\nContent-Disposition: attachment\r\n\r\n".encode("ascii") + to_crlf(signature)
    return (
        head.encode("utf-8")
        + f"--{boundary}\r\n".encode("ascii")
        + content
        + f"\r\n--{boundary}\r\n".encode("ascii")
        + sig_part
        + f"\r\n--{boundary}--\r\n".encode("ascii")
    )


def signed_parts(message: bytes) -> tuple[bytes, bytes]:
    """The signed part's bytes and the signature part's body, cut out of a multipart/signed
    message as it arrived (line ends made CRLF again, as a verifying MUA does)."""
    data = to_crlf(message)
    boundary = re.search(rb'boundary="([^"]+)"', data)
    assert boundary is not None, data[:500]
    delimiter = b"\r\n--" + boundary.group(1)
    pieces = data.split(delimiter)
    assert len(pieces) == 4, f"expected two parts, got {len(pieces) - 2}"
    content = pieces[1].removeprefix(b"\r\n")
    signature = pieces[2].removeprefix(b"\r\n").partition(b"\r\n\r\n")[2]
    return content, signature


def verified(stage: str, argv: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, f"{stage}: {argv[0]} does not verify: {done.stderr.strip()}"
    return done.stderr


def roundtrip_signed(peers: Peers, tmp_path: Path, message: bytes) -> tuple[bytes, bytes]:
    """`message` sent with `postroom send --eml` through Postfix to a fresh mailbox, then received
    over IMAP by another profile and written out with `postroom export ID --eml` (real processes):
    the bytes that arrived in the Maildir, and the exported bytes."""
    source = tmp_path / "signed.eml"
    source.write_bytes(message)
    sender = sending_profile(peers, tmp_path / "sender", port=peers.smtp_port)
    sent = postroom_process("send", "--eml", source, profile=sender)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    recipient = re.search(rb"^To: .*<([^>]+)>", message, re.MULTILINE)
    assert recipient is not None
    arrived = new_maildir_files(peers, recipient.group(1).decode(), set(), 1)
    assert len(arrived) == 1
    delivered = arrived[0].read_bytes()  # before Dovecot moves it to cur/
    with receiving_session(peers, tmp_path / "receiver", "imap", recipient.group(1).decode()) as session:
        assert session.receive() == 1
        (mid,) = [m.id for m in session.list_messages(session.inbox)]
    exported = subprocess.run(
        argv(tmp_path / "receiver", "export", str(mid), "--eml"), capture_output=True, env=ENV, timeout=60, check=False
    )
    assert exported.returncode == 0, exported.stderr.decode("utf-8", "replace")
    return delivered, exported.stdout


@pytest.fixture
def gnupg(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """gpg with a throw-away home in tmp_path (and its agent stopped afterwards)."""
    gpg = shutil.which("gpg")
    if gpg is None:
        unavailable("needs gpg (Debian package gnupg, installed by .ci/install-system-packages)")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        yield gpg, env
    finally:
        gpgconf = shutil.which("gpgconf")
        if gpgconf is not None:
            subprocess.run([gpgconf, "--kill", "all"], env=env, capture_output=True, timeout=30, check=False)


def test_a_pgp_mime_message_signed_with_gpg_verifies_after_postfix_and_after_imap(
    peers: Peers, tmp_path: Path, gnupg: tuple[str, dict[str, str]]
) -> None:
    gpg, env = gnupg
    batch = [gpg, "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run(
        [*batch, "--quick-gen-key", "Signer <signer@example.test>", "ed25519", "sign", "1d"],
        env=env, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    content = signed_part()
    (tmp_path / "content").write_bytes(content)
    signature = subprocess.run(
        [*batch, "--armor", "--digest-algo", "SHA256", "--detach-sign", "--output", "-", str(tmp_path / "content")],
        env=env, capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    recipient = peers.new_postfix_user()
    headers = (
        f"From: Signer <signer@example.test>\r\nTo: Reader <{recipient}>\r\nSubject: PGP/MIME signed\r\n"
        "Date: Wed, 02 Dec 2026 08:00:00 +0000\r\nMessage-ID: <pgp-mime.1@example.test>\r\n"
    )
    message = multipart_signed(
        headers, "application/pgp-signature", "pgp-sha256", content, signature, "application/pgp-signature"
    )
    for stage, data in zip(
        ("through Postfix", "back over IMAP"), roundtrip_signed(peers, tmp_path, message), strict=True
    ):
        got_content, got_signature = signed_parts(data)
        assert got_content == content, stage
        (tmp_path / "got-content").write_bytes(got_content)
        (tmp_path / "got-signature.asc").write_bytes(got_signature)
        said = verified(
            stage, [gpg, "--batch", "--verify", str(tmp_path / "got-signature.asc"), str(tmp_path / "got-content")], env
        )
        assert 'Good signature from "Signer <signer@example.test>"' in said, (stage, said)


def test_an_s_mime_message_signed_with_openssl_verifies_after_postfix_and_after_imap(
    peers: Peers, tmp_path: Path
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("needs openssl (installed by .ci/install-system-packages)")
    key, cert = tmp_path / "signer.key", tmp_path / "signer.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=Signer/emailAddress=signer@example.test",
         "-addext", "keyUsage=digitalSignature", "-addext", "extendedKeyUsage=emailProtection"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    content = signed_part()
    (tmp_path / "content").write_bytes(content)
    signature = subprocess.run(
        [openssl, "cms", "-sign", "-binary", "-in", str(tmp_path / "content"), "-signer", str(cert),
         "-inkey", str(key), "-outform", "PEM", "-md", "sha256"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    b64 = b"".join(line for line in signature.splitlines(keepends=True) if not line.startswith(b"-----"))
    recipient = peers.new_postfix_user()
    headers = (
        f"From: Signer <signer@example.test>\r\nTo: Reader <{recipient}>\r\nSubject: S/MIME signed\r\n"
        "Date: Wed, 02 Dec 2026 08:00:00 +0000\r\nMessage-ID: <s-mime.1@example.test>\r\n"
    )
    message = multipart_signed(
        headers, "application/pkcs7-signature", "sha-256", content, b64,
        'application/pkcs7-signature; name="smime.p7s"\r\nContent-Transfer-Encoding: base64',
    )  # fmt: skip
    for stage, data in zip(
        ("through Postfix", "back over IMAP"), roundtrip_signed(peers, tmp_path, message), strict=True
    ):
        assert signed_parts(data)[0] == content, stage
        (tmp_path / "got.eml").write_bytes(to_crlf(data))
        verified(stage, [openssl, "smime", "-verify", "-in", str(tmp_path / "got.eml"), "-CAfile", str(cert),
                  "-out", str(tmp_path / "verified")])  # fmt: skip
        assert to_crlf((tmp_path / "verified").read_bytes()) == content, stage
