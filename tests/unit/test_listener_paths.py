"""The listener remembers the MAIL and RCPT paths it has read (issue 18): what it gives back is
what aiosmtpd's own reading gives, the first time and every time after."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP

from postroom.engine.listener import _Protocol


class _Listener:
    def __init__(self) -> None:
        self.paths: dict[str, str] = {}


def protocol() -> _Protocol:
    """The protocol's path reading alone: no connection, no loop (a mock-free bare object)."""
    p = object.__new__(_Protocol)
    p.listener = _Listener()  # type: ignore[assignment]
    p.local_part_limit = 0
    return p


@pytest.mark.parametrize(
    "arg",
    [
        "<a@example.org> SIZE=100",
        "<a@example.org>",
        " <a@example.org>  BODY=8BITMIME",
        "<a@example.org>(comment) X=1",
        "<>",
        "<a@example.org>SIZE=1",
        "a@example.org",
        '<"q x"@example.org>',
        "<@relay:a@example.org>",
        "<bad@@>",
        "",
    ],
)
def test_a_path_read_twice_reads_as_aiosmtpd_reads_it(arg: str) -> None:
    p = protocol()
    theirs = SMTP._getaddr(p, arg)
    for _ in range(2):
        address, params = p._getaddr(arg)
        assert address == theirs[0]
        assert (params or "").split() == str(theirs[1] or "").split()


def test_only_a_plain_path_is_remembered_and_a_bad_one_never() -> None:
    p = protocol()
    p._getaddr("<a@example.org> SIZE=1")
    p._getaddr("<bad@@>")
    p._getaddr('<"q x"@example.org>')
    assert p.listener.paths == {"<a@example.org>": "a@example.org"}
