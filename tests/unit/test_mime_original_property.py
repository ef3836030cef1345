"""Generated messages with random header sets and MIME trees survive: sent unchanged they are their
own bytes (but for the documented transport changes), and edited they keep every header field no
property owns, in order, and their whole content when only header fields changed."""

from __future__ import annotations

import base64
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom import mime, original
from postroom.mapi import tags as T

OWNED = {"from", "to", "cc", "subject", "message-id", "in-reply-to", "mime-version", "date"}

field_names = st.sampled_from(
    ["X-Tag", "X-Mailer", "References", "Reply-To", "List-Unsubscribe", "Auto-Submitted", "Comments", "X-Loop"]
)
field_values = st.one_of(
    st.text(alphabet="abcdefgh <>@.-;=", min_size=1, max_size=30).map(str.strip).filter(bool).map(str.encode),
    st.just(b"=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus K=?utf-8?q?=C3=B6?=ln"),
    st.just("caf\u00e9 r\u00e9sum\u00e9 (RFC 6532)".encode()),
    st.just(b"<a@example.org>\r\n\t<b@example.org>"),  # folded
)
extra_fields = st.lists(st.tuples(field_names, field_values), max_size=8)


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A MIME entity (its Content-* fields, an empty line, its body), CRLF line ends."""
    kind = draw(st.sampled_from(["text", "binary", "status"] + (["multipart"] if depth < 2 else [])))
    if kind == "text":
        text = draw(st.text(alphabet="abc xyz\u00e4\n", max_size=60)).replace("\n", "\r\n")
        return b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + text.encode()
    if kind == "binary":
        data = draw(st.binary(max_size=200))
        width = draw(st.sampled_from([40, 64, 76]))
        encoded = base64.b64encode(data)
        lines = b"\r\n".join(encoded[i : i + width] for i in range(0, len(encoded), width))
        return (
            b'Content-Type: application/octet-stream; name="d.bin"\r\nContent-Disposition: attachment; '
            b'filename="d.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + lines
        )
    if kind == "status":
        return b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n"
    subtype = draw(st.sampled_from(["mixed", "alternative", "signed"]))
    boundary = f"b{depth}{draw(st.integers(0, 999))}".encode()
    children = draw(st.lists(trees(depth + 1), min_size=1, max_size=3))
    body = b"".join(b"--" + boundary + b"\r\n" + child + b"\r\n" for child in children)
    return (
        b"Content-Type: multipart/"
        + subtype.encode()
        + b'; boundary="'
        + boundary
        + b'"\r\n\r\n'
        + body
        + b"--"
        + boundary
        + b"--\r\n"
    )


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    head = [b"From: Alice <alice@example.org>", b"To: bob@example.net", b"Subject: generated"]
    head += [b"Date: Mon, 1 Jan 2024 10:00:00 +0000", b"Message-ID: <gen@example.org>", b"MIME-Version: 1.0"]
    for name, value in draw(extra_fields):
        head.insert(draw(st.integers(0, len(head))), name.encode() + b": " + value)
    return b"\r\n".join(head) + b"\r\n" + draw(trees())


def kept_fields(data: bytes) -> list[bytes]:
    head = re.split(rb"\r\n\r\n", data, maxsplit=1)[0]
    out = [f for f in re.split(rb"\r\n(?![ \t])", head)]
    return [f for f in out if f.split(b":")[0].lower().decode() not in OWNED and not f.lower().startswith(b"content-")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=messages())
def test_generated_messages_survive_sending_and_editing(raw: bytes) -> None:
    md = mime.from_mime(raw)
    assert mime.original_bytes(md) == raw
    if original.sendable(md):
        assert mime.to_bytes(md) == raw  # Date and Message-ID present, no Bcc: nothing to change
    md.props[T.PR_SUBJECT] = "edited"
    wire = mime.to_bytes(md)
    kept = kept_fields(raw)
    assert [f for f in kept_fields(wire) if f in kept] == kept
    assert re.split(rb"\r\n\r\n", wire, maxsplit=1)[1] == re.split(rb"\r\n\r\n", raw, maxsplit=1)[1]
