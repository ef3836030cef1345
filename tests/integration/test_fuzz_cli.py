"""Bad input, fuzzed, through the `postroom` command (a real process each time).

Whatever the arguments, files and profile: the exit code is 0, 1 or 2 (never 3, an internal
error), stderr holds a few lines and never a traceback, a refused `send` leaves nothing in the
store, and `postroom queue --json` still works afterwards. Few examples per test: every one
costs a couple of processes.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.cli.app import cli
from postroom.profile import PROFILE_FILE, Profile

pytestmark = pytest.mark.integration

CLI_FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_CLI_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MAX_STDERR_LINES = 5
_counter = itertools.count()

# --------------------------------------------------------------------------------------
# running postroom
# --------------------------------------------------------------------------------------

Arg = str | bytes | Path


def as_arg(text: str) -> bytes:
    """Any str as a command-line argument: NUL cannot be passed, anything else goes as bytes
    (lone surrogates as the bytes they would be, which the child sees as undecodable input)."""
    return text.replace("\0", "").encode("utf-8", "surrogatepass")


def postroom(
    *args: Arg, profile: Path | None = None, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    argv: list[Arg] = [sys.executable, "-m", "postroom"]
    if profile is not None:
        argv += ["--profile", profile]
    argv += list(args)
    proc = subprocess.run(
        argv,
        input=stdin or b"",
        capture_output=True,
        env={**os.environ, "POSTROOM_DEBUG": "", "COLUMNS": "200"},
        timeout=timeout,
    )
    result = subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    )
    check_sane(result)
    return result


def check_sane(result: subprocess.CompletedProcess[str]) -> None:
    """Exit 0, 1 or 2; no traceback; a short stderr; an error is one `postroom: error:` line."""
    where = (result.args, result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, where
    assert result.returncode in (0, 1, 2), where
    lines = result.stderr.splitlines()
    assert len(lines) <= MAX_STDERR_LINES, where
    if result.returncode == 2:
        assert any(line.startswith(("postroom: error: ", "Usage: ", "Error: ")) for line in lines), where


def queue_still_works(profile: Path) -> Any:
    result = postroom("queue", "--json", profile=profile)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def store_counts(profile: Path) -> dict[str, int]:
    """Rows per table of the profile's store, read directly (read-only), after an integrity check."""
    path = profile / "store.sqlite"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables if t != "status_rows"}
    finally:
        db.close()


@pytest.fixture
def profile(tmp_path: Path) -> Iterator[Path]:
    """One profile (maildir transport for localhost) for all the examples of a test; when they
    are done, `postroom queue --json` must still work on it (each example checks the store
    in-process: a process per example and check would be too slow)."""
    directory = tmp_path / "profile"
    Profile.create(directory)
    queue_still_works(directory)  # creates the store
    yield directory
    queue_still_works(directory)


# --------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------

NASTY = [
    "\r",
    "\n",
    "\r\n",
    "\t",
    "\x0b",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "\u202e",
    "\udcff",  # an undecodable byte on the command line
    "\ud800",
    "<",
    ">",
    '"',
    ":",
    ";",
    ",",
    "@",
    "\\",
    "=?utf-8?q?",
    "?=",
    "[bold]",
    "-",
    "--",
    " ",
    "é",
    "東京",
    "🙂",
    "%s",
    "{}",
]
nasty_text = st.one_of(
    st.lists(
        st.one_of(
            st.sampled_from(NASTY),
            st.text(st.characters(exclude_categories=()), max_size=5),
            st.text(string.ascii_letters, min_size=1, max_size=6),
        ),
        max_size=8,
    ).map("".join),
    st.sampled_from(
        [
            "",
            "\r\nBcc: evil@evil.test",
            "=?utf-8?b?DQpCY2M6IGV2aWxAZXZpbC50ZXN0?=",
            "--help",
            "-",
            "x" * 5000,
            "user@localhost\r\nBcc: evil@evil.test",
        ]
    ),
)
recipients = st.one_of(
    st.just("user@localhost"),
    st.builds(lambda name: f"{name} <user@localhost>", nasty_text),
    st.builds(lambda local: f"{local}@localhost", nasty_text),
    st.sampled_from(["FAX:+15551234", "nobody@example.org", "SMTP:", "<>", "a" * 300 + "@localhost"]),
    nasty_text,
)


def file_name(text: str) -> bytes:
    """A legal file name (no '/', no NUL, at most 255 bytes) from any text."""
    raw = as_arg(text).replace(b"/", b"_")[:200]
    return raw if raw not in (b"", b".", b"..") else b"empty"


# --------------------------------------------------------------------------------------
# send with hostile arguments
# --------------------------------------------------------------------------------------


@CLI_FUZZ
@given(
    to=st.lists(recipients, min_size=1, max_size=2),
    subject=st.none() | nasty_text,
    body=st.none() | nasty_text,
    attachments=st.lists(st.tuples(nasty_text, st.binary(max_size=100)), max_size=2),
    later=st.booleans(),
)
def test_send_with_hostile_arguments(
    profile: Path,
    tmp_path: Path,
    to: list[str],
    subject: str | None,
    body: str | None,
    attachments: list[tuple[str, bytes]],
    later: bool,
) -> None:
    args: list[Arg] = ["send"]
    for address in to:
        args += ["--to", as_arg(address)]
    if subject is not None:
        args += ["--subject", as_arg(subject)]
    if body is not None:
        args += ["--body", as_arg(body)]
    folder = tmp_path / f"attach-{next(_counter)}"
    folder.mkdir()
    for name, content in attachments:
        path = os.path.join(os.fsencode(folder), file_name(name))
        with open(path, "wb") as fh:
            fh.write(content)
        args += ["--attach", path]
    if later:
        args.append("--later")

    before = store_counts(profile)
    result = postroom(*args, profile=profile)
    after = store_counts(profile)
    if result.returncode == 2:
        assert after == before, result.stderr  # refused: nothing half-written
    else:
        assert after["messages"] > before["messages"], (result.stdout, result.stderr)


def test_send_attach_what_is_not_a_regular_file(profile: Path, tmp_path: Path) -> None:
    """A directory, a FIFO (opening one blocks until a writer comes), a device, a dangling link."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing")
    before = store_counts(profile)
    for path in (tmp_path, fifo, Path("/dev/null"), dangling, tmp_path / "missing"):
        result = postroom("send", "--to", "user@localhost", "--attach", path, profile=profile, timeout=20)
        assert result.returncode == 2, (path, result.stderr)
        assert str(path) in result.stderr
    assert store_counts(profile) == before


# --------------------------------------------------------------------------------------
# send --eml with garbage
# --------------------------------------------------------------------------------------

EML = (
    b"From: Someone <someone@example.org>\r\n"
    b"To: User <user@localhost>, other@example.org\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Message-ID: <fuzz@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n'
    b"\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
    b'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="a.bin"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n"
    b"--b--\r\n"
)


@st.composite
def garbage_emls(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=500))
    if kind == 1:  # hostile header values in an otherwise fine message
        header = draw(st.sampled_from([b"To", b"From", b"Subject", b"Message-ID", b"Cc", b"Bcc", b"Content-Type"]))
        value = as_arg(draw(nasty_text))
        return header + b": " + value + b"\r\n" + EML
    data = bytearray(EML)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data) - 1)) if data else 0
        piece = draw(
            st.sampled_from([b"\r\n", b"\0", b"\xff", b"=?", b"<", b":", b"--b\r\n", b""]) | st.binary(max_size=8)
        )
        data[at : at + draw(st.integers(0, 10))] = piece
    return bytes(data)


@CLI_FUZZ
@given(eml=garbage_emls(), with_to=st.booleans(), later=st.booleans())
def test_send_eml_with_garbage(profile: Path, tmp_path: Path, eml: bytes, with_to: bool, later: bool) -> None:
    path = tmp_path / f"fuzz-{next(_counter)}.eml"
    path.write_bytes(eml)
    args: list[Arg] = ["send", "--eml", path]
    if with_to:
        args += ["--to", "user@localhost"]
    if later:
        args.append("--later")
    before = store_counts(profile)
    result = postroom(*args, profile=profile)
    if result.returncode == 2:
        assert store_counts(profile) == before, result.stderr


# --------------------------------------------------------------------------------------
# a hostile profile.toml
# --------------------------------------------------------------------------------------

# Values that cannot name a path outside the profile (a `store` or maildir `root` could).
safe = st.text(alphabet="abcXYZ09_-. ", max_size=8)
toml_junk = st.sampled_from(
    ['"text"', "5", "-1", "1.5", "nan", "inf", "true", "[]", "[1, 2]", '["a"]', "{}", "{a = 1}", "1979-05-27", '""']
)


@st.composite
def hostile_profiles(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=200))
    lines = ["[profile]"]
    for key in (
        "mode",
        "store",
        "transport_order",
        "spooler_concurrency",
        "lease_seconds",
        "sender_address",
        "crash_policy",
    ):
        if draw(st.booleans()):
            value = draw(
                toml_junk | st.sampled_from(['"online"', '"offline"', '"store.sqlite"', '"profile.toml"', '"."'])
            )
            lines.append(f"{key} = {value}")
    for _ in range(draw(st.integers(0, 2))):
        lines.append("[[service]]")
        for key, good in (
            ("name", '"local"'),
            ("kind", draw(st.sampled_from(['"maildir"', '"pipe"', '"nope"']))),
            ("provider_uid", f'"{draw(st.binary(min_size=16, max_size=16)).hex()}"'),
            ("options", '{root = "maildir", domains = ["localhost"]}'),
            ("poll_seconds", "60"),
        ):
            choice = draw(st.integers(0, 5))
            if choice == 0:
                continue
            lines.append(f"{key} = {draw(toml_junk) if choice == 1 else good}")
        if draw(st.integers(0, 3)) == 0:
            lines.append(f"options = {{command = [{draw(safe)!r}], address_types = {draw(toml_junk)}}}")
    if kind == 1:
        lines = [draw(st.sampled_from(["service = 5", "profile = 1", "[[profile]]", "sendreceive_group = 1"])), *lines]
    text = "\n".join(lines) + "\n"
    if kind == 2:  # almost TOML
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(st.sampled_from(["", "[", "]", '"', "=", "\n", "\0"])) + text[at + 1 :]
    return text.encode("utf-8")


@CLI_FUZZ
@given(content=hostile_profiles())
def test_hostile_profile_file(tmp_path: Path, content: bytes) -> None:
    directory = tmp_path / f"hostile-{next(_counter)}"
    directory.mkdir()
    (directory / PROFILE_FILE).write_bytes(content)
    postroom("send", "--to", "user@localhost", "--subject", "x", "--body", "y", profile=directory)
    result = postroom("queue", "--json", profile=directory)
    document = json.loads(result.stdout)  # the queue, or {"error": …} when the profile is refused
    assert result.returncode == 0 or "error" in document, (result.stdout, result.stderr)


# --------------------------------------------------------------------------------------
# message IDs that are not
# --------------------------------------------------------------------------------------

ID_COMMANDS = [
    c for c in ("show", "export", "hold", "release", "cancel", "retry") if c in cli.list_commands(click.Context(cli))
]
junk_ids = st.one_of(
    nasty_text,
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(
        ["0", "-1", "1", " 1 ", "01", "1e3", "0x1", "²", "١", "𝟙", "1_000", "+1", "99999999999999999999999", "00" * 29]
    ),
    st.binary(min_size=29, max_size=29).map(bytes.hex),
    st.text("0123456789abcdef", min_size=1, max_size=80),
)


@CLI_FUZZ
@given(ref=junk_ids, command=st.sampled_from(ID_COMMANDS))
def test_junk_message_ids(profile: Path, ref: str, command: str) -> None:
    before = store_counts(profile)
    result = postroom(command, "--", as_arg(ref), profile=profile)
    if result.returncode != 0:
        assert store_counts(profile) == before


NEAR_MISSES = ("²", "99999999999999999999999")


def test_junk_ids_after_a_real_message(profile: Path) -> None:
    """The same with a message in the store, so that a near-miss ID has something to hit."""
    assert postroom("send", "--later", "--to", "user@localhost", "-s", "x", "-b", "y", profile=profile).returncode == 0
    [entry] = queue_still_works(profile)
    entry_id = str(entry["entry_id"])
    near = (NEAR_MISSES[1], entry_id[:-1] + ("0" if entry_id[-1] != "0" else "1"))
    for command in ("show", "hold", "cancel"):
        for ref in near:
            result = postroom(command, "--", ref, profile=profile)
            assert result.returncode == 2, (command, ref, result.stdout, result.stderr)
    # folder IDs go through the same kind of lookup
    assert postroom("list", "--", NEAR_MISSES[0], profile=profile).returncode == 2
    assert [e["id"] for e in queue_still_works(profile)] == [entry["id"]]  # untouched by all that
