"""A message handed over with an SMTP envelope (the submission listener, a sendmail command).

Such a message comes as exact bytes plus an envelope: the reverse path (`MAIL FROM`) and the
forward paths (`RCPT TO`). The envelope, not the header, says whom to deliver to: a Bcc
recipient is only in the envelope, and a mailing-list copy names none of its readers in `To`.
In MAPI's words (spec §6.5) the header rows are shown but not sent again (MAPI_SUBMITTED), and
each forward path is an envelope-only row (MAPI_P1), exactly as `sendmail -t` treats a resend.
Neither changes what the header-dependent fingerprint of the original sees (original.py), so
the message still goes out as the bytes it came in.

Two provider-defined properties mark where the message came from and who gets reports about it
(spooler/sender_reports.py): PR_POSTROOM_SUBMISSION_SOURCE ("smtp" from the listener, "sendmail"
from the sendmail command; both may set it) and PR_POSTROOM_ENVELOPE_FROM (the reverse path,
"" for the null sender `<>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from . import mime
from .mapi import tags as T
from .mapi.entryid import one_off_entry_id, search_key
from .mapi.flags import MAPI_P1, MAPI_SUBMITTED, RecipientType
from .mapi.message import MessageData, Recipient

__all__ = ["SubmissionSource", "envelope_message"]

_MAPI_MAILUSER = 6


class SubmissionSource(StrEnum):
    """Who handed a message over with an envelope (PR_POSTROOM_SUBMISSION_SOURCE)."""

    SMTP = "smtp"  # the SMTP submission listener
    SENDMAIL = "sendmail"  # the sendmail-compatible command


def _envelope_row(address: str, row_id: int) -> Recipient:
    return Recipient(
        props={
            T.PR_DISPLAY_NAME: address,
            T.PR_ADDRTYPE: "SMTP",
            T.PR_EMAIL_ADDRESS: address,
            T.PR_RECIPIENT_TYPE: int(RecipientType.BCC) | MAPI_P1,
            T.PR_ENTRYID: one_off_entry_id(address, "SMTP", address),
            T.PR_SEARCH_KEY: search_key("SMTP", address),
            T.PR_OBJECT_TYPE: _MAPI_MAILUSER,
        },
        row_id=row_id,
    )


def envelope_message(raw: bytes, mail_from: str, rcpt_to: Sequence[str], source: SubmissionSource | str) -> MessageData:
    """The MAPI message for `raw` sent to the envelope's forward paths, keeping `raw` as its
    original: header recipients become MAPI_SUBMITTED rows, each forward path a MAPI_P1 row."""
    md = mime.from_mime(raw, submission=True)
    for row in md.recipients:
        row[T.PR_RECIPIENT_TYPE] = int(row.get(T.PR_RECIPIENT_TYPE) or RecipientType.TO) | MAPI_SUBMITTED
    for address in dict.fromkeys(rcpt_to):
        md.recipients.append(_envelope_row(address, len(md.recipients)))
    md.props[T.PR_POSTROOM_SUBMISSION_SOURCE] = str(SubmissionSource(source))
    md.props[T.PR_POSTROOM_ENVELOPE_FROM] = mail_from
    return md
