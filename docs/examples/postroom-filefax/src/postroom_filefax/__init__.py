"""A complete third-party postroom transport in one file.

It registers the address type FAX. For every FAX recipient assigned to it, it writes
`<spool>/<number>.<ref>.txt` with the subject and body, and marks the recipient
delivered. Numbers that are not made of digits (and an optional leading +) are failed
with an NDR, as a real fax gateway would refuse them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.flags import LogonFlags, NDRDiag, NDRReason
from postroom.transports.spi import (
    OutboundMessage,
    Registration,
    SubmitResult,
    TransportLogon,
    TransportProvider,
)

NUMBER = re.compile(r"^\+?[0-9]{3,20}$")


class FileFaxLogon(TransportLogon):
    """One logon: knows its spool directory."""

    def __init__(self, provider: TransportProvider, flags: LogonFlags, spool: Path) -> None:
        super().__init__(provider, flags)
        self.spool = spool

    def address_types(self) -> Registration:
        # Called by the spooler right after logon: "I deliver to FAX recipients".
        return Registration.of("FAX")

    def submit_message(self, message: OutboundMessage, flags: int) -> SubmitResult:
        # Only recipients with PR_RESPONSIBILITY FALSE are ours; leave everything else alone.
        for recipient in message.pending():
            number = recipient.email_address.replace(" ", "")
            if not NUMBER.match(number):
                recipient.mark_failed(
                    f"not a fax number: {recipient.email_address!r}",
                    reason=NDRReason.TRANSFER_IMPOSSIBLE,
                    diag=NDRDiag.MAIL_ADDRESS_INCORRECT,
                )
                continue
            page = f"To: {recipient.display_name} ({number})\nSubject: {message.data.subject}\n\n{message.data.body}\n"
            (self.spool / f"{number}.{message.ref}.txt").write_text(page, encoding="utf-8")
            recipient.mark_delivered()
        return SubmitResult.ok()


class FileFaxProvider(TransportProvider):
    """The provider: validates options when the service is added, logs on."""

    display_name = "File fax (example)"
    option_help: ClassVar[dict[str, str]] = {
        "spool": "directory the fax pages are written to (relative to the profile)"
    }

    @classmethod
    def validate_options(cls, options: Any) -> dict[str, Any]:
        checked = super().validate_options(options)
        if not isinstance(checked.get("spool", "fax-spool"), str):
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "spool must be a directory path")
        return checked

    def logon(self, flags: LogonFlags) -> TransportLogon:
        spool = self.context.profile_dir / str(self.context.options.get("spool", "fax-spool"))
        spool.mkdir(parents=True, exist_ok=True)
        return FileFaxLogon(self, flags, spool)
