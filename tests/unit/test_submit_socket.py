"""The submit socket's request, read from a real socket pair: what `read_request` lets through."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from postroom.cli.submit_socket import ProtocolProblem, read_request


def _read(request: dict[str, Any], raw: bytes = b"x") -> tuple[dict[str, Any], bytes]:
    client, server = socket.socketpair()
    with client, server:
        client.sendall(json.dumps({"op": "submit", "size": len(raw), **request}).encode() + b"\n" + raw)
        return read_request(server)


def test_each_recipients_dsn_request_is_read_as_sent() -> None:
    asked = {"bob@localhost": {"notify": "SUCCESS", "orcpt": "rfc822;bob@example.org"}}
    request, raw = _read({"recipients": ["bob@localhost"], "dsn_recipients": asked})
    assert (request["dsn_recipients"], raw) == (asked, b"x")


@pytest.mark.parametrize(
    "dsn_recipients", [["bob@localhost"], {"bob@localhost": "NEVER"}, {"bob@localhost": {"notify": ["NEVER"]}}]
)
def test_dsn_recipients_that_are_no_map_of_strings_are_not_the_protocol(dsn_recipients: object) -> None:
    with pytest.raises(ProtocolProblem, match="dsn_recipients"):
        _read({"recipients": ["bob@localhost"], "dsn_recipients": dsn_recipients})
