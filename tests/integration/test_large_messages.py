"""Large messages end to end: a 1 MiB body and a 1 MiB attachment arrive byte-identical through
the maildir transport and through SMTP (aiosmtpd on loopback), and a submit killed with SIGKILL
leaves either nothing or the whole message."""

from __future__ import annotations

import email
import email.policy
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from email.message import EmailMessage
from pathlib import Path
from typing import cast

import postroom
from postroom.mapi import tags as T
from postroom.profile import Profile

from support.smtp_sink import SmtpSink

MIB = 1 << 20
LINE = "a large body, line by line, \u00e9\u00e8 ASCII and not \u4e2d\u6587\n"
TEXT_BODY = LINE * (MIB // len(LINE.encode()))  # about 1 MiB as UTF-8
ASCII_BODY = ("x" * 77 + "\n") * (MIB // 78)  # the fast rendering path: 7bit
ATTACHMENT = random.Random(17).randbytes(MIB)


def parsed(data: bytes) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))


BODIES = {"text": TEXT_BODY, "ascii": ASCII_BODY}


def check_arrived(data: bytes) -> str:
    """Checks one arrived message against what was submitted; its subject."""
    msg = parsed(data)
    body = BODIES[str(msg["subject"])]
    text = msg.get_body(("plain",))
    # The text as sent (CRLF on the wire, LF in a Maildir file), line for line the one submitted.
    assert text is not None and text.get_content().replace("\r\n", "\n") == body
    attached = [part.get_content() for part in msg.iter_attachments()]
    assert attached == [ATTACHMENT]
    return str(msg["subject"])


def submit_large(session: postroom.Session, to: str, subject: str) -> int:
    draft = session.create_message(subject, BODIES[subject]).to(to)
    draft.attach_bytes("random.bin", ATTACHMENT)
    return draft.submit()


def test_a_large_message_arrives_byte_identical_through_maildir(tmp_path: Path) -> None:
    with postroom.logon(Profile.create(tmp_path / "p")) as session:
        for subject in BODIES:
            submit_large(session, "big@localhost", subject)
        plain = session.create_message("ascii only", ASCII_BODY).to("plain@localhost").submit()
        session.deliver()
        assert session.queue() == []
        assert session.open_message(plain)[T.PR_BODY] == ASCII_BODY
        root = session.profile.directory / "maildir" / "localhost"
    assert sorted(check_arrived(path.read_bytes()) for path in (root / "big" / "new").iterdir()) == sorted(BODIES)
    (only,) = (root / "plain" / "new").iterdir()
    text = parsed(only.read_bytes()).get_body(("plain",))
    assert text is not None and text.get_content() == ASCII_BODY


def test_a_large_message_arrives_byte_identical_through_smtp(tmp_path: Path) -> None:
    with SmtpSink() as sink:
        profile = Profile.create(tmp_path / "p", with_defaults=False)
        profile.add_service("smtp", "sink", {"host": "127.0.0.1", "port": sink.port, "security": "none"})
        profile.save()
        with postroom.logon(profile) as session:
            for subject in BODIES:
                submit_large(session, "big@sink.test", subject)
            session.deliver()
            assert session.queue() == []
        assert sink.delivered == [["big@sink.test"], ["big@sink.test"]]
        assert sorted(check_arrived(data) for data in sink.handler.messages) == sorted(BODIES)


CHILD = textwrap.dedent(
    """
    import sys
    import postroom
    body = "".join(f"line {i:06d} of a large body\\n" for i in range(40_000))  # 1 MiB and more
    with postroom.logon(sys.argv[1]) as session:
        n = 0
        while True:
            draft = session.create_message(f"large {n}", body).to("big@localhost")
            draft.attach_bytes("a.bin", bytes(range(256)) * 2048)
            draft.submit()
            print(n, flush=True)
            n += 1
    """
)


def test_a_large_submit_killed_midway_leaves_nothing_or_the_whole_message(tmp_path: Path) -> None:
    profile = Profile.create(tmp_path / "p")
    expected_body = "".join(f"line {i:06d} of a large body\n" for i in range(40_000)).encode()
    rng = random.Random(5)
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(profile.directory)], stdout=subprocess.PIPE, env={**os.environ}
        )
        assert child.stdout is not None
        child.stdout.readline()  # one message is in: the next one is being written
        time.sleep(rng.uniform(0.0, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
    db = sqlite3.connect(profile.directory / "store.sqlite")
    try:
        messages = db.execute("SELECT id FROM messages WHERE folder_id IS NOT NULL").fetchall()
        bodies = db.execute("SELECT message_id, data FROM message_streams WHERE tag=?", (T.PR_BODY,)).fetchall()
        attachments = db.execute("SELECT message_id, length(data) FROM attachments").fetchall()
        events = db.execute("SELECT message_id FROM events WHERE kind='submitted'").fetchall()
    finally:
        db.close()
    assert len(messages) >= 3
    ids = {m for (m,) in messages}
    assert {m for m, _ in bodies} == ids and all(bytes(data) == expected_body for _, data in bodies)
    assert sorted(attachments) == sorted((m, 256 * 2048) for m in ids)
    assert {m for (m,) in events} == ids
    with postroom.logon(profile) as session:  # and the store opens and delivers them all
        session.deliver()
        assert session.queue() == []
    delivered = list((profile.directory / "maildir" / "localhost" / "big" / "new").iterdir())
    assert len(delivered) == len(ids)


def test_the_large_message_benchmark_runs_quick(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "large_messages.py"
    out = tmp_path / "large.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "-n", "3", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "postroom deliver() through maildir" in proc.stdout and "disk floor" in proc.stdout
    assert out.is_file()
