"""Where the status page may listen (postroom.web.server): loopback freely, anywhere else only
with TLS and an operator token; HOST:PORT read as an operator writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom.mapi.codes import HResult, MAPIError
from postroom.web.server import Listen, check_listen, parse_listen

HASH = "0" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8025", ("127.0.0.1", 8025)), ("[::1]:9000", ("::1", 9000)), ("8080", ("127.0.0.1", 8080))],
)
def test_listen_addresses_are_read_as_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:", "host:port", "127.0.0.1:70000", "127.0.0.1:0"])
def test_a_listen_address_without_a_good_port_is_refused(text: str) -> None:
    with pytest.raises(MAPIError) as caught:
        parse_listen(text)
    assert caught.value.code == HResult.MAPI_E_INVALID_PARAMETER


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "localhost"])
def test_loopback_needs_neither_tls_nor_a_token(host: str) -> None:
    check_listen(Listen(host, 8025), None)


def test_a_unix_socket_needs_neither(tmp_path: Path) -> None:
    check_listen(Listen("0.0.0.0", 8025, socket=tmp_path / "s"), None)


@pytest.mark.parametrize(
    ("tls", "token"), [(False, None), (False, HASH), (True, None)], ids=["neither", "token only", "TLS only"]
)
def test_any_other_address_needs_tls_and_a_token(tls: bool, token: str | None, tmp_path: Path) -> None:
    cert = (tmp_path / "c.pem", tmp_path / "k.pem") if tls else (None, None)
    with pytest.raises(MAPIError) as caught:
        check_listen(Listen("192.0.2.10", 8025, None, *cert), token)
    assert caught.value.code == HResult.MAPI_E_NO_ACCESS


def test_any_other_address_is_served_with_tls_and_a_token(tmp_path: Path) -> None:
    check_listen(Listen("192.0.2.10", 8025, None, tmp_path / "c.pem", tmp_path / "k.pem"), HASH)


def test_tls_needs_its_certificate_and_its_key(tmp_path: Path) -> None:
    with pytest.raises(MAPIError) as caught:
        check_listen(Listen("192.0.2.10", 8025, None, tmp_path / "c.pem", None), HASH)
    assert caught.value.code == HResult.MAPI_E_INVALID_PARAMETER
