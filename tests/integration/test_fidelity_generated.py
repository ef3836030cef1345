"""Generated messages keep their bytes: store → export, and store → SMTP (issue 16).

Hypothesis makes messages with random header sets (repeated fields, X- fields, RFC 2047 encoded
words, raw UTF-8 (RFC 6532), folded fields, with or without Date, Message-ID and Bcc) over random
MIME trees (multipart/mixed, alternative, related, nested message/rfc822, text and binary
leaves in 7bit, quoted-printable and base64). Each one goes into a SQLite profile with
`postroom send --eml FILE --later`; `postroom export ID --eml` must give back exactly the input,
and `postroom spooler --once` must send it to an SMTP server on loopback (aiosmtpd) with only the
documented transport changes (`support.fidelity`).

The commands run in this process (`postroom.cli.run`), so an example costs milliseconds.
"""

from __future__ import annotations

import email.message
import email.policy
import itertools
import json
import os
import re
import threading
from collections.abc import Iterator
from email.header import Header
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from postroom.profile import Profile

from support.cli import in_process
from support.fidelity import transport_differences
from support.smtp_sink import free_port

pytestmark = pytest.mark.integration

ROUND_TRIP = settings(
    max_examples=int(os.environ.get("FIDELITY_EXAMPLES", "30")),
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no explain: it traces every line
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


class WireRecorder:
    """Keeps the bytes of every DATA exactly as they came over the wire (dot-unstuffed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages.append((list(envelope.rcpt_tos), bytes(envelope.original_content)))
        return "250 2.0.0 Ok: queued"

    def take(self) -> list[tuple[list[str], bytes]]:
        with self._lock:
            taken, self.messages = self.messages, []
        return taken


@pytest.fixture
def sink() -> Iterator[tuple[WireRecorder, int]]:
    recorder = WireRecorder()
    port = free_port()
    controller = Controller(
        recorder, hostname="127.0.0.1", port=port, server_hostname="sink.test", enable_SMTPUTF8=True, ready_timeout=10
    )
    controller.start()
    try:
        yield recorder, port
    finally:
        controller.stop()


# --- the messages ---------------------------------------------------------------------------------------------

ascii_words = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
unicode_words = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S"), exclude_characters="\x85\u2028\u2029"),
    min_size=1,
    max_size=10,
)


@st.composite
def field_value(draw: st.DrawFn) -> str:
    """An unstructured field body: ASCII words, RFC 2047 encoded words, raw UTF-8, folded."""
    words = draw(st.lists(st.one_of(ascii_words, unicode_words), min_size=1, max_size=8))
    style = draw(st.sampled_from(["ascii", "rfc2047", "utf8"]))
    if style == "ascii":
        text = " ".join(w.encode("ascii", "replace").decode("ascii") for w in words)
    elif style == "rfc2047":
        text = " ".join(
            w if w.isascii() else Header(w, "utf-8").encode(maxlinelen=900) for w in words
        )  # every encoded word on one line
    else:
        text = " ".join(words)
    if draw(st.booleans()) and " " in text:  # fold at some spaces
        parts = text.split(" ")
        text = parts[0] + "".join(("\r\n " if draw(st.booleans()) else " ") + p for p in parts[1:])
    return text


def address(n: int, name: str) -> str:
    return f"{name} <r{n}@sink.test>" if name else f"r{n}@sink.test"


display_names = st.one_of(
    st.just(""),
    st.from_regex(r"[A-Za-z][A-Za-z ]{0,15}[a-z]", fullmatch=True),
    unicode_words.map(lambda w: Header(w, "utf-8").encode(maxlinelen=900)),
)
extra_names = st.one_of(
    st.sampled_from(["Comments", "Keywords", "X-Mailer", "X-Priority", "X-Spam-Status", "List-Unsubscribe"]),
    st.from_regex(r"X-[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True),
)


@st.composite
def header_fields(draw: st.DrawFn) -> list[str]:
    """From, To (on sink.test), maybe Cc/Bcc/Date/Message-ID/threading, and random extras."""
    fields = [f"From: {address(0, draw(display_names)).replace('r0@', 'sender@')}"]
    to = draw(st.lists(display_names, min_size=1, max_size=3))
    fields.append("To: " + ",\r\n ".join(address(i + 1, n) for i, n in enumerate(to)))
    if draw(st.booleans()):
        fields.append(f"Cc: {address(10, draw(display_names))}")
    if draw(st.booleans()):
        fields.append(f"Bcc: {address(20, draw(display_names))}")
    fields.append(f"Subject: {draw(field_value())}")
    if draw(st.booleans()):
        fields.append("Date: Tue, 01 Dec 2026 10:00:00 +0100")
    if draw(st.booleans()):
        fields.append(f"Message-ID: <gen.{draw(st.integers(0, 10**9))}@sink.test>")
    if draw(st.booleans()):
        fields += ["In-Reply-To: <parent.1@sink.test>", "References: <root.1@sink.test>\r\n <parent.1@sink.test>"]
    for name, value in draw(st.lists(st.tuples(extra_names, field_value()), max_size=6)):
        fields.append(f"{name}: {value}")
        if draw(st.booleans()):
            fields.append(f"{name}: {value}")  # a repeated field
    return draw(st.permutations(fields))


Spec = tuple[Any, ...]


def build(spec: Spec, path: str = "b") -> email.message.MIMEPart:
    """A MIME part from its spec (specs are plain data, so hypothesis can replay and shrink them;
    boundaries are named by the part's place, as the email package would draw them at random)."""
    part = email.message.MIMEPart(policy=email.policy.SMTP)
    if spec[0] == "leaf":
        _, kind, text, cte, blob = spec
        if kind == "binary":
            part.set_content(blob, "application", "octet-stream", filename="data.bin")
        else:
            part.set_content(text, subtype=kind, cte=cte)
    elif spec[0] == "multipart":
        _, subtype, children = spec
        part.set_type(f"multipart/{subtype}")
        part.set_boundary(f"=_{path}")
        for n, child in enumerate(children):
            part.attach(build(child, f"{path}.{n}"))
    else:
        inner = b"From: inner@sink.test\r\nSubject: enclosed\r\n" + build(spec[1], f"{path}.m").as_bytes()
        part.set_content(email.message_from_bytes(inner, policy=email.policy.SMTP))
    return part


leaf_specs = st.tuples(
    st.just("leaf"),
    st.sampled_from(["plain", "html", "binary"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=200).map(lambda t: t + "\n"),
    st.sampled_from(["quoted-printable", "base64", "8bit"]),
    st.binary(max_size=300),
)
tree_specs = st.recursive(
    leaf_specs,
    lambda children: st.one_of(
        st.tuples(
            st.just("multipart"),
            st.sampled_from(["mixed", "alternative", "related"]),
            st.lists(children, min_size=1, max_size=3),
        ),
        st.tuples(st.just("message"), children),
    ),
    max_leaves=6,
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A whole message, CRLF line ends, as bytes."""
    mime = build(draw(tree_specs)).as_bytes()
    head = "".join(f"{field}\r\n" for field in draw(header_fields())).encode("utf-8")
    if not mime.startswith(b"MIME-Version:"):
        mime = b"MIME-Version: 1.0\r\n" + mime
    return head + mime


def recipients(message: bytes) -> list[str]:
    """The addresses of the message's To, Cc and Bcc: its envelope (they are all r<N>@sink.test)."""
    head = message.partition(b"\r\n\r\n")[0].decode("utf-8")
    fields = re.findall(r"^(?:To|Cc|Bcc):([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.MULTILINE)
    return sorted(set(re.findall(r"r\d+@sink\.test", " ".join(fields))))


# --- the test --------------------------------------------------------------------------------------------------


def test_generated_messages_keep_their_bytes_through_the_store_export_and_smtp(
    tmp_path: Path, sink: tuple[WireRecorder, int]
) -> None:
    recorder, port = sink
    runs = itertools.count()

    @ROUND_TRIP
    @given(message=messages())
    def round_trip(message: bytes) -> None:
        directory = tmp_path / f"p{next(runs)}"  # a fresh profile: nothing left from another example
        profile = Profile.create(directory, with_defaults=False)
        profile.add_service("smtp", "sink", {"host": "127.0.0.1", "port": port, "security": "none", "timeout": 30})
        profile.save()
        recorder.take()
        source = directory / "in.eml"
        source.write_bytes(message)
        code, out, err = in_process(directory, "--json", "send", "--eml", source, "--later")
        assert code == 0, err
        mid = json.loads(out)["message_id"]
        code, exported, err = in_process(directory, "export", str(mid), "--eml")
        assert code == 0, err
        assert exported == message

        code, out, err = in_process(directory, "spooler", "--once")
        assert code == 0, err + out.decode()
        (envelope, sent), *more = recorder.take()
        assert not more
        assert sorted(envelope) == recipients(message)
        assert sent.count(b"\n") == sent.count(b"\r\n") == sent.count(b"\r"), "CRLF line ends on the wire"
        assert transport_differences(message, sent) == []

    round_trip()
