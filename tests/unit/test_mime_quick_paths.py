"""The listener's cheaper reading of a message (issue 18): a Date field read without the email
package's header parser, and address fields remembered, give exactly what the parser gives."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest

from postroom import mime
from postroom.mapi import tags as T


def read(header_lines: str) -> mime.MessageData:
    return mime.from_mime(f"{header_lines}Subject: x\r\n\r\nbody\r\n".encode(), submission=True)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("Wed, 02 Dec 2026 10:00:00 +0000", datetime(2026, 12, 2, 10, 0, tzinfo=UTC)),
        ("2 Dec 2026 10:00 -0500", datetime(2026, 12, 2, 15, 0, tzinfo=UTC)),
        ("Wed,\r\n 02 Dec 2026 10:00:00 +0100 (CET)", datetime(2026, 12, 2, 9, 0, tzinfo=UTC)),
        ("not a date at all", None),
    ],
)
def test_a_date_field_is_read_as_the_email_package_reads_it(field: str, expected: datetime | None) -> None:
    md = read(f"From: a@example.org\r\nTo: b@example.org\r\nDate: {field}\r\n")
    assert md.get(T.PR_CLIENT_SUBMIT_TIME) == expected


def test_the_same_address_field_in_two_messages_gives_the_same_recipients_each_time() -> None:
    lines = "From: =?utf-8?q?J=C3=B6rg?= <j@example.org>\r\nTo: Bob <bob@example.org>, carol@example.org\r\n"
    first, second = read(lines), read(lines)
    rows = [[(r[T.PR_DISPLAY_NAME], r[T.PR_EMAIL_ADDRESS]) for r in md.recipients] for md in (first, second)]
    assert rows[0] == rows[1] == [("Bob", "bob@example.org"), ("carol@example.org", "carol@example.org")]
    assert first.get(T.PR_SENDER_NAME) == second.get(T.PR_SENDER_NAME) == "Jörg"
    first.recipients[0][T.PR_DISPLAY_NAME] = "changed"  # what one message does is not remembered for the next
    assert read(lines).recipients[0][T.PR_DISPLAY_NAME] == "Bob"


def test_a_long_address_field_is_read_but_not_remembered() -> None:
    many = ", ".join(f"user{n}@example.org" for n in range(200))
    assert len(many) > mime._REMEMBERED_FIELD
    mime._remembered_address_pairs.cache_clear()
    md = read(f"From: a@example.org\r\nTo: {many}\r\n")
    assert [r[T.PR_EMAIL_ADDRESS] for r in md.recipients] == [f"user{n}@example.org" for n in range(200)]
    assert mime._remembered_address_pairs.cache_info().currsize == 1  # the From only


ODD_DATES = [
    "Wed, 02 Dec 2026 10:00:00 -0000",
    "02 Dec 26 10:00 EST",
    "Wed, 02 Dec 2026 10:00:00",
    "=?us-ascii?q?Wed=2C_02_Dec_2026_10=3A00=3A00_+0000?=",
    "Wed, 02 Dec 2026 10:00:00 +0000 =?utf-8?q?x?=",
    "Wed, 02 Dec 2026 25:61:00 +0000",
    "Wed, 02 Dec 10000 10:00:00 +0000",
    "Wed 02 Dec 2026 10:00:00 +0000 (\u00e9t\u00e9)",
    "\u00e9\u00e9\u00e9",
    "   ",
    "1",
    "Wed, 32 Foo 2026",
]


@pytest.mark.parametrize("field", ODD_DATES)
def test_an_odd_date_field_is_read_as_the_email_package_reads_it(field: str) -> None:
    data = f"From: a@example.org\r\nTo: b@example.org\r\nDate: {field}\r\nSubject: x\r\n\r\nbody\r\n".encode()
    header = email.message_from_bytes(data, policy=email.policy.default)["Date"]
    when = getattr(header, "datetime", None)
    expected = None if when is None else (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    assert mime.from_mime(data, submission=True).get(T.PR_CLIENT_SUBMIT_TIME) == expected


def test_a_date_with_a_number_too_large_for_a_datetime_is_no_date_and_the_message_is_read() -> None:
    md = read("From: a@example.org\r\nTo: b@example.org\r\nDate: Wed, 02 Dec 99999999999999999999 10:00 +0000\r\n")
    assert md.get(T.PR_CLIENT_SUBMIT_TIME) is None
    assert md.get(T.PR_SUBJECT) == "x" and [r[T.PR_EMAIL_ADDRESS] for r in md.recipients] == ["b@example.org"]
