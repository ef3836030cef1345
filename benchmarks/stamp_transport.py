"""A benchmark transport that records when its submit_message is called, and a daemon launcher.

Kind "stamp" (registered in-process with `postroom.register_transport_kind` on import):
registers the address types in option `address_types` (default SMTP), and for each message writes
one line "<subject>\\t<time.monotonic()>" to the file in option `file` (CLOCK_MONOTONIC is one
clock for every process on the machine), then marks its recipients delivered. It is `async def`,
so the spooler calls it on its event loop (a plain `def` would go through a worker thread).

As a script: `python stamp_transport.py PROFILE` runs the real CLI spooler daemon
(`postroom --profile PROFILE spooler`, i.e. `python -m postroom … spooler`) in this process, with
the stamp kind registered — the only difference from the CLI command is that registration.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from postroom import register_transport_kind
from postroom.mapi import tags as T
from postroom.mapi.flags import LogoffFlags, LogonFlags
from postroom.transports.spi import (
    OutboundMessage,
    Registration,
    SubmitResult,
    TransportLogon,
    TransportProvider,
)


class StampLogon(TransportLogon):
    def __init__(self, provider: TransportProvider, flags: LogonFlags) -> None:
        super().__init__(provider, flags)
        self._fd = os.open(str(self.options["file"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def address_types(self) -> Registration:
        return Registration.of(*self.options.get("address_types", ["SMTP"]))

    async def submit_message(self, message: OutboundMessage, flags: int) -> SubmitResult:
        now = time.monotonic()
        subject = str(message.props.get(T.PR_SUBJECT, ""))
        os.write(self._fd, f"{subject}\t{now:.9f}\n".encode())
        for r in message.pending():
            r.mark_delivered(report=False)
        return SubmitResult.ok()

    def logoff(self, flags: LogoffFlags = LogoffFlags.NORMAL) -> None:
        os.close(self._fd)


class StampProvider(TransportProvider):
    display_name = "stamp (benchmark)"
    option_help: Mapping[str, str] = {
        "file": "where to append '<subject>\\t<monotonic time>' per submit_message call",
        "address_types": "address types to register (default ['SMTP'])",
    }

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        out = super().validate_options(options)
        if "file" not in out:
            from postroom.mapi.codes import HResult, MAPIError

            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "option 'file' is required")
        return out

    def logon(self, flags: LogonFlags) -> StampLogon:
        return StampLogon(self, flags)


register_transport_kind("stamp", StampProvider)


def read_stamps(path: str | os.PathLike[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                subject, _, t = line.rstrip("\n").rpartition("\t")
                if subject:
                    out.setdefault(subject, float(t))
    except FileNotFoundError:
        pass
    return out


if __name__ == "__main__":
    from postroom.cli import main

    sys.argv = ["postroom", "--profile", sys.argv[1], "spooler", "--workers", "1", *sys.argv[2:]]
    main()
