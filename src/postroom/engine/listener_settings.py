"""How the SMTP submission listener listens and what it takes (`postroom serve smtp`'s options).

Apart from listener.py so that the face can name these settings without loading aiosmtpd, which
only a process that listens needs (`postroom --version` must not pay for it; fig9_startup.py).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..mapi.codes import HResult, MAPIError
from ..mapi.hostport import parse_host_port

DEFAULT_LISTEN = "127.0.0.1:587"


def parse_listen(text: str) -> tuple[str, int]:
    """The listener's `HOST:PORT` (`[::1]:587` for IPv6); port 0 lets the kernel pick a free port."""
    return parse_host_port(text, option="--listen", lowest_port=0)


@dataclass(frozen=True)
class ListenerSettings:
    """How the listener listens and what it takes (`postroom serve smtp`'s options)."""

    listen: tuple[tuple[str, int], ...] = (parse_listen(DEFAULT_LISTEN),)
    tls_cert: Path | None = None  # with tls_key: STARTTLS is offered
    tls_key: Path | None = None
    max_message_bytes: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_connections: int = 100
    timeout_seconds: float = 60.0  # a client silent this long is cut off
    max_session_seconds: float = 600.0  # and a connection open this long, however busy
    max_queued: int | None = None  # more messages than this in the queue: 452 at MAIL
    hostname: str | None = None  # the name in the greeting (default: the machine's)
    reuse_port: bool = False  # SO_REUSEPORT: several listener processes share the port (serve smtp --processes)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "give both --tls-cert and --tls-key, or neither")
        for name in ("max_message_bytes", "max_recipients", "max_connections"):
            if int(getattr(self, name)) < 1:
                raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"{name} must be at least 1")
        if self.timeout_seconds <= 0 or self.max_session_seconds <= 0:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "the timeouts must be positive")

    @classmethod
    def from_options(cls, listen: Sequence[str] = (), **options: Any) -> ListenerSettings:
        """The settings from `HOST:PORT` strings (default 127.0.0.1:587) and the other fields by name."""
        addresses = tuple(parse_listen(a) for a in (listen or (DEFAULT_LISTEN,)))
        return cls(listen=addresses, **options)

    def tls_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise MAPIError(
                HResult.MAPI_E_INVALID_PARAMETER, f"cannot load the TLS certificate {self.tls_cert}: {exc}"
            ) from exc
        return context
