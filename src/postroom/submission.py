"""A message handed over as RFC 5322 bytes with an envelope of its own, as `sendmail` takes it.

`postroom-sendmail` (and the system profile's submit socket) get bytes on stdin plus an envelope
from the command line: recipients as arguments, or `-t` (from To/Cc/Bcc), and an envelope sender
(`-f`). This module turns that into one `MessageData` whose original bytes are still what is sent
(`postroom.original`), so the message arrives byte for byte as the caller wrote it:

* recipients named as arguments that the headers also name keep their header row;
* header rows the arguments do not name are marked MAPI_SUBMITTED: shown in the headers, not
  sent to (spec §6.5), so the fingerprint, which reads only To/Cc rows, does not change;
* recipients only the arguments name become envelope-only rows (MAPI_P1), never written into a
  header. With `-t` the header rows are the envelope, and arguments are added to them as Postfix
  does;
* the envelope sender becomes PR_SENDER_* (and, set by the face, PR_POSTROOM_ENVELOPE_FROM: the
  MAIL FROM an smtp transport passes on); the From, PR_SENT_REPRESENTING_*, stays the header's,
  and the original is kept again with the new fingerprint, since the bytes did not change;
* without `-f`, the From is the envelope sender; one that is a bare local part (cron writes
  `From: root (Cron Daemon)`) is qualified with the profile identity's domain in the envelope
  only, as Postfix appends `$myorigin`: no server takes `MAIL FROM:<root>`;
* a message without a From gets one (`Name <login@host>`), as every sendmail adds it: the one
  change to the caller's bytes, at the top of the header block.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.utils import formataddr

from . import mime
from . import original as _original
from .addressing import has_break, parse_address
from .mapi import tags as T
from .mapi.codes import HResult, MAPIError
from .mapi.entryid import one_off_entry_id, search_key
from .mapi.flags import MAPI_P1, MAPI_SUBMITTED, RecipientType
from .mapi.message import MessageData, Recipient


class UnknownRecipient(MAPIError):
    """MAPI_E_INVALID_PARAMETER for an envelope recipient that is no address (sendmail's EX_NOUSER)."""

    def __init__(self, message: str) -> None:
        super().__init__(HResult.MAPI_E_INVALID_PARAMETER, message)


def _smtp_row(address: str, kind: RecipientType, row_id: int) -> Recipient:
    try:
        parsed = parse_address(address)
    except MAPIError as exc:
        raise UnknownRecipient(exc.message) from None
    if parsed.address_type != "SMTP" or "@" not in parsed.email_address.strip("@"):
        raise UnknownRecipient(f"{address!r} is not an e-mail address (user@domain)")
    email = parsed.email_address
    name = parsed.display_name if parsed.display_name != email else ""
    return Recipient(
        props={
            T.PR_DISPLAY_NAME: name or email,
            T.PR_ADDRTYPE: "SMTP",
            T.PR_EMAIL_ADDRESS: email,
            T.PR_RECIPIENT_TYPE: int(kind) | MAPI_P1,
            T.PR_ENTRYID: one_off_entry_id(name or email, "SMTP", email),
            T.PR_SEARCH_KEY: search_key("SMTP", email),
        },
        row_id=row_id,
    )


def _has_from(raw: bytes) -> bool:
    block, _ = _original.split(raw)
    return any(name in ("from", "resent-from") for name, _ in _original.header_fields(block))


def with_from(raw: bytes, address: str, name: str | None) -> bytes:
    """`raw` with a From added at the top of its header block when it has none."""
    if _has_from(raw):
        return raw
    if has_break(address) or (name is not None and has_break(name)):
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "the sender's name or address contains a line break")
    field = b"From: " + formataddr((name or "", address)).encode("utf-8")
    first = raw.find(b"\n")
    end = b"\r\n" if first > 0 and raw[first - 1 : first] == b"\r" else b"\n"
    return field + end + (raw if raw.strip() else end)


def sendmail_message(
    raw: bytes,
    *,
    recipients: Sequence[str] = (),
    extract: bool = False,
    envelope_sender: str | None = None,
    domain: str | None = None,
) -> MessageData:
    """The message `raw` with the envelope a sendmail caller gave (see the module docstring);
    `domain` qualifies a From that is a bare local part when there is no `envelope_sender`.

    UnknownRecipient for a recipient that is no e-mail address; MAPI_E_NO_RECIPIENTS when there is
    none at all (no argument, and with `extract` no To/Cc/Bcc either); MAPI_E_INVALID_PARAMETER for
    a bad envelope sender."""
    md = mime.from_mime(raw, submission=True)
    wanted = [_smtp_row(a, RecipientType.TO, 0) for a in recipients]
    named = {r.email_address.lower() for r in wanted}
    if not extract:
        kept: list[Recipient] = []
        for row in md.recipients:
            kind = int(row.get(T.PR_RECIPIENT_TYPE) or RecipientType.TO)
            if kind & MAPI_P1:
                continue  # a Resent-To row: without -t the arguments alone are the envelope
            address = row.email_address.lower()
            if address in named:
                named.discard(address)  # sent to through its own header row
                row[T.PR_RECIPIENT_TYPE] = kind & ~MAPI_SUBMITTED
            else:
                row[T.PR_RECIPIENT_TYPE] = kind | MAPI_SUBMITTED  # in the headers, not in the envelope
            kept.append(row)
        md.recipients = kept
    else:
        named -= {r.email_address.lower() for r in md.recipients if not _submitted(r)}
    for row in wanted:
        if row.email_address.lower() in named:
            named.discard(row.email_address.lower())
            md.recipients.append(row)
    for number, row in enumerate(md.recipients):
        row.row_id = number
    if not any(not _submitted(r) for r in md.recipients):
        where = "in the To, Cc or Bcc header (-t)" if extract else "on the command line (or -t)"
        raise MAPIError(HResult.MAPI_E_NO_RECIPIENTS, f"no recipient addresses found {where}")
    if envelope_sender is None and domain:
        bare = str(md.props.get(T.PR_SENDER_EMAIL_ADDRESS) or "")
        if bare and "@" not in bare and md.props.get(T.PR_SENDER_ADDRTYPE, "SMTP") == "SMTP":
            envelope_sender = f"{bare}@{domain}"
    if envelope_sender is not None:
        _set_envelope_sender(md, envelope_sender)
        _original.keep(md, raw)  # the bytes are the same: only the envelope changed
    return md


def _submitted(row: Recipient) -> bool:
    return bool(int(row.get(T.PR_RECIPIENT_TYPE) or 0) & MAPI_SUBMITTED)


def _set_envelope_sender(md: MessageData, address: str) -> None:
    if address in ("", "<>"):
        for tag in (T.PR_SENDER_NAME, T.PR_SENDER_ADDRTYPE, T.PR_SENDER_EMAIL_ADDRESS):
            md.props.pop(tag, None)
        return
    try:
        parsed = parse_address(address)
    except MAPIError as exc:
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"envelope sender: {exc.message}") from None
    if parsed.address_type != "SMTP":
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"envelope sender {address!r} is not an e-mail address")
    email = parsed.email_address
    md.props[T.PR_SENDER_NAME] = parsed.display_name if parsed.display_name != email else ""
    md.props[T.PR_SENDER_ADDRTYPE] = "SMTP"
    md.props[T.PR_SENDER_EMAIL_ADDRESS] = email
    md.props[T.PR_SENDER_ENTRYID] = one_off_entry_id(email, "SMTP", email)
    md.props[T.PR_SENDER_SEARCH_KEY] = search_key("SMTP", email)
