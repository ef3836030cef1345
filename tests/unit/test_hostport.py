"""HOST:PORT as an operator writes it (postroom.mapi.hostport): the one parser behind
`serve smtp --listen`, `spooler --smtp`, `serve http --listen` and `spooler --http`."""

from __future__ import annotations

import pytest

from postroom.engine.listener_settings import ListenerSettings
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.hostport import is_loopback, parse_host_port
from postroom.web.server import parse_listen as parse_page_listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:587", ("127.0.0.1", 587)),
        (" localhost:25 ", ("localhost", 25)),
        ("[::1]:25", ("::1", 25)),
        ("[fe80::1%eth0]:2525", ("fe80::1%eth0", 2525)),
        ("mail.example.org:65535", ("mail.example.org", 65535)),
    ],
)
def test_a_host_and_port_are_read_with_ipv6_in_brackets(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, option="--listen") == expected


@pytest.mark.parametrize(
    "text",
    ["", "587", ":587", "host", "host:", "host:port", "host:70000", "host:0", "host:-1", "host:²", "[::1]", "[::1]25"],
)
def test_anything_else_is_refused_with_invalid_parameter_naming_the_option(text: str) -> None:
    with pytest.raises(MAPIError) as caught:
        parse_host_port(text, option="--smtp")
    assert caught.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert f"--smtp {text!r}: give HOST:PORT" in str(caught.value)
    assert "[::1]:587 for IPv6" in str(caught.value)


def test_a_port_alone_or_an_empty_host_means_the_default_host_when_there_is_one() -> None:
    assert parse_host_port("8025", option="--listen", default_host="127.0.0.1") == ("127.0.0.1", 8025)
    assert parse_host_port(":8025", option="--listen", default_host="127.0.0.1") == ("127.0.0.1", 8025)
    with pytest.raises(MAPIError, match="HOST:PORT or a PORT alone"):
        parse_host_port("eighty", option="--listen", default_host="127.0.0.1")


def test_port_zero_is_let_through_only_where_the_kernel_may_pick_the_port() -> None:
    assert parse_host_port("127.0.0.1:0", option="--listen", lowest_port=0) == ("127.0.0.1", 0)
    with pytest.raises(MAPIError, match="the port from 1 to 65535"):
        parse_host_port("127.0.0.1:0", option="--listen")


def test_the_smtp_listener_and_the_status_page_read_addresses_with_the_same_parser() -> None:
    # The listener takes port 0 (tests listen on a free port); the page takes a port alone.
    assert ListenerSettings.from_options(["[::1]:0"]).listen == (("::1", 0),)
    assert parse_page_listen("[::1]:8025") == ("::1", 8025)
    assert parse_page_listen("9000") == ("127.0.0.1", 9000)
    for refuse in (lambda: ListenerSettings.from_options(["9000"]), lambda: parse_page_listen("host:0", "--http")):
        with pytest.raises(MAPIError) as caught:
            refuse()
        assert caught.value.code == HResult.MAPI_E_INVALID_PARAMETER and "HOST:PORT" in str(caught.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.2", True),
        ("::1", True),
        ("::1%lo", True),
        ("localhost", True),
        ("192.0.2.1", False),
        ("mail.example.org", False),
    ],
)
def test_loopback_is_recognised_by_address_with_or_without_a_zone_and_by_name(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
