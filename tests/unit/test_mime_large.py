"""Large messages render fast and exactly: a large 7bit body, a large attachment's base64 and every
payload's line ends are made at once, and the bytes are those the `email` package's own
content manager and generator write (the slow path, patched back in as the reference)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.generator import BytesGenerator

import pytest

from postroom import mime
from postroom.mapi import tags as T
from postroom.mapi.message import Attachment, MessageData, Recipient

BIG = random.Random(3).randbytes(1 << 20)


def message(
    body: str | None, attachments: tuple[tuple[str, str, bytes], ...] = (), html: bytes | None = None
) -> MessageData:
    props = {
        T.PR_SUBJECT: "large",
        T.PR_SENDER_EMAIL_ADDRESS: "a@b.test",
        T.PR_SENDER_ADDRTYPE: "SMTP",
        T.PR_SENDER_NAME: "A",
        T.PR_INTERNET_MESSAGE_ID: "<a@b.test>",
        T.PR_CLIENT_SUBMIT_TIME: datetime(2026, 1, 1, tzinfo=UTC),
    }
    if body is not None:
        props[T.PR_BODY] = body
    if html is not None:
        props[T.PR_HTML] = html
    rcpt = Recipient(
        props={
            T.PR_EMAIL_ADDRESS: "big@x.test",
            T.PR_ADDRTYPE: "SMTP",
            T.PR_RECIPIENT_TYPE: 1,
            T.PR_DISPLAY_NAME: "Big",
        }
    )
    atts = [
        Attachment(props={T.PR_ATTACH_LONG_FILENAME: name, T.PR_ATTACH_MIME_TAG: mime_type}, data=data, size=len(data))
        for name, mime_type, data in attachments
    ]
    return MessageData(props=props, recipients=[rcpt], attachments=atts)


CASES = {
    "7bit body": message(("x" * 77 + "\n") * 20000),
    "7bit body without a last line end": message(("x" * 78 + "\n") * 2000 + "end"),
    "a line of 79": message(("c" * 79 + "\n") * 1000),
    "UTF-8 body": message("\u00e9" * 70000),
    "CR and CRLF in the body": message("a\r\nb\rc\n" * 30000),
    "empty lines": message("\n" * 70000),
    "1 MiB attachment": message("small", (("r.bin", "application/octet-stream", BIG),)),
    "attachment of whole lines": message("small", (("r.bin", "application/octet-stream", BIG[: 57 * 2000]),)),
    "attachment just over the size": message("small", (("r.bin", "application/octet-stream", BIG[: 65536 + 1]),)),
    "small and empty attachments": message("s", (("s.bin", "application/octet-stream", b"abc"), ("e", "x/y", b""))),
    "large text attachment": message("t", (("t.txt", "text/plain", ("l\u00efne\r\n" * 20000).encode()),)),
    "large HTML": message("with html", html=("<p>" + "h" * 90 + "</p>\n").encode() * 1000),
    "all together": message(("x" * 77 + "\n") * 2000, (("r.png", "image/png", BIG[:200000]),), html=b"<b>x</b>"),
}


@pytest.mark.parametrize("linesep", ["\r\n", "\n"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_large_message_renders_as_the_email_package_writes_it(
    case: str, linesep: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    random.seed(17)  # the multipart boundaries
    fast = mime.to_bytes(CASES[case], linesep=linesep)
    monkeypatch.setattr(mime, "_LARGE_BODY", 1 << 60)  # the package's content manager for every part
    monkeypatch.setattr(mime, "_seven_bit_payload", lambda text: None)  # and for every text
    monkeypatch.setattr(mime, "_Generator", BytesGenerator)  # and its generator, line by line
    random.seed(17)
    assert fast == mime.to_bytes(CASES[case], linesep=linesep)
