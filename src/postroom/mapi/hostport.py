"""`HOST:PORT` as an operator writes it for a listener, and whether a host is on loopback.

The SMTP listener's settings (`engine/listener_settings.py`: `serve smtp --listen`,
`spooler --smtp`) and the status page's server (`web/server.py`: `serve http --listen`,
`spooler --http`) both read it. It lives here, beside the vocabulary, because that is the lowest
room both may import (a front end reads only the face and `mapi/`), so there is one parser and one
wording of its MAPI_E_INVALID_PARAMETER.
"""

from __future__ import annotations

import ipaddress

from .codes import HResult, MAPIError

HIGHEST_PORT = 65535


def parse_host_port(
    text: str, *, option: str, default_host: str | None = None, lowest_port: int = 1
) -> tuple[str, int]:
    """`127.0.0.1:587`, `[::1]:587` (IPv6 in brackets), `localhost:587` → (host, port).

    With `default_host`, a port alone (`8025`) or an empty host (`:8025`) means that host; without
    it they are refused. `lowest_port=0` lets port 0 through (the kernel picks a free port).
    Anything else is MAPI_E_INVALID_PARAMETER naming `option` and what to give.
    """
    given = text.strip()
    if given.startswith("["):
        host, closed, rest = given[1:].partition("]")
        sep, port = rest[:1], rest[1:]
        if not closed or sep != ":":
            raise _refused(text, option, default_host, lowest_port)
    else:
        host, sep, port = given.rpartition(":")  # an unbracketed IPv6 host keeps its colons
        if not sep and default_host is not None:
            host, port = default_host, given
    host = host or (default_host or "")
    if not host or not (port.isascii() and port.isdigit()) or not lowest_port <= int(port) <= HIGHEST_PORT:
        raise _refused(text, option, default_host, lowest_port)
    return host, int(port)


def _refused(text: str, option: str, default_host: str | None, lowest_port: int) -> MAPIError:
    forms = "HOST:PORT or a PORT alone" if default_host is not None else "HOST:PORT"
    return MAPIError(
        HResult.MAPI_E_INVALID_PARAMETER,
        f"{option} {text!r}: give {forms} (e.g. 127.0.0.1:587, or [::1]:587 for IPv6), "
        f"the port from {lowest_port} to {HIGHEST_PORT}",
    )


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, with or without an IPv6 zone, or `localhost`) is on loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False
