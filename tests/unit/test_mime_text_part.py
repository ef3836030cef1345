"""A text part rendered without the email package's content manager (issue 17): a 7bit text's
headers are remembered per subtype and its payload made at once, byte for byte as
`EmailMessage.set_content` makes them (the content manager decides every other text)."""

from __future__ import annotations

from email.contentmanager import raw_data_manager
from email.message import EmailMessage, MIMEPart

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom import mime
from postroom.mapi import tags as T
from postroom.mapi.message import MessageData, Recipient

LINE_PIECES = st.sampled_from(["x", "y" * 77, "z" * 78, "w" * 79, " ", ".", "\n", "\r\n", "\r", "é", "From ", "\t"])
TEXTS = st.lists(LINE_PIECES, max_size=40).map("".join)


def by_the_content_manager(text: str, subtype: str) -> list[tuple[str, str]]:
    scratch = MIMEPart(policy=mime._TEXT_POLICY)
    raw_data_manager.set_content(scratch, text, subtype)
    return [*scratch.raw_items(), ("payload", str(scratch.get_payload()))]


def by_set_text(text: str, subtype: str) -> list[tuple[str, str]]:
    part = EmailMessage(policy=mime._OUT_POLICY)
    mime._set_text(part, text, subtype)
    return [*part.raw_items(), ("payload", str(part.get_payload()))]


@settings(max_examples=300, deadline=None)
@given(text=TEXTS, subtype=st.sampled_from(["plain", "html"]))
def test_a_text_part_gets_the_headers_and_payload_the_content_manager_gives_it(text: str, subtype: str) -> None:
    assert by_set_text(text, subtype) == by_the_content_manager(text, subtype)


@pytest.mark.parametrize(
    "body", ["", "one line", "two\nlines\n", ("x" * 78 + "\n") * 13, "x" * 79, "caf\u00e9\n", "a\r\nb\n", ".\nFrom x\n"]
)
def test_a_message_renders_the_same_with_and_without_the_quick_text_part(
    body: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = MessageData(
        props={T.PR_SUBJECT: "s", T.PR_BODY: body, T.PR_INTERNET_MESSAGE_ID: "<1@example.org>"},
        recipients=[Recipient(props={T.PR_ADDRTYPE: "SMTP", T.PR_EMAIL_ADDRESS: "b@example.org"})],
    )
    quick = mime.to_bytes(msg)
    monkeypatch.setattr(mime, "_seven_bit_payload", lambda text: None)  # the content manager for every text
    assert quick == mime.to_bytes(msg)
