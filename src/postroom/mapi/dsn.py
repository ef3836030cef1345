"""Delivery status notification requests (RFC 3461): what a sender asked to be told, and when.

A client of the SMTP listener or of `postroom-sendmail -bs` says it with MAIL and RCPT parameters
(`RET=FULL|HDRS`, `ENVID=xtext`; `NOTIFY=NEVER|SUCCESS,FAILURE,DELAY`, `ORCPT=type;xtext`), a
sendmail caller with `-R`, `-V` and `-N`, a caller of `Session.submit_mime` with those and
`recipient_dsn` (RecipientDsnRequest). All land here, are checked here, and are kept on the message as four
provider-defined properties: PR_POSTROOM_DSN_RET and PR_POSTROOM_DSN_ENVID on the message,
PR_POSTROOM_DSN_NOTIFY and PR_POSTROOM_DSN_ORCPT on each envelope recipient row. The reports to
the envelope sender (spooler/sender_reports.py) obey them through `wants_report`.

The values are kept decoded (xtext undone): the report echoes them as RFC 3464 says. The smtp
transport encodes them again (`xtext_encode`) when it passes the request on to a server that
offers DSN; the next hop then reports, and postroom says `relayed` only for a recipient whose
request it could not pass on (RFC 3461 §6.2.2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict

from . import tags as T

__all__ = [
    "DsnParameterError",
    "DsnReturn",
    "DsnUnknownParameter",
    "MessageDsn",
    "Notify",
    "RecipientDsn",
    "RecipientDsnRequest",
    "parse_envid",
    "parse_notify",
    "parse_orcpt",
    "parse_ret",
    "read_mail_parameters",
    "read_rcpt_parameters",
    "read_recipient_request",
    "split_dsn_parameters",
    "wants_report",
    "xtext_decode",
    "xtext_encode",
]

#: RFC 3461 §4.4: an ENVID is at most 100 characters (as xtext); §4.2: an ORCPT at most 500.
MAX_ENVID = 100
MAX_ORCPT = 500


class Notify(StrEnum):
    """When a recipient's sender wants a report (RFC 3461 §4.1 NOTIFY)."""

    NEVER = "NEVER"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


class DsnReturn(StrEnum):
    """How much of the message a failure report carries (RFC 3461 §4.3 RET)."""

    FULL = "FULL"
    HDRS = "HDRS"


class DsnParameterError(ValueError):
    """A DSN parameter with a bad value, or given twice: `501 5.5.4` at the listener and from
    `postroom-sendmail -bs`, EX_USAGE from postroom-sendmail's command line."""

    reply_code = 501

    @property
    def smtp_reply(self) -> str:
        """The SMTP reply refusing the MAIL or RCPT that gave the parameter (one wording for every
        SMTP server of postroom)."""
        return f"{self.reply_code} 5.5.4 {self}"


class DsnUnknownParameter(DsnParameterError):
    """A DSN parameter on the wrong verb (NOTIFY on MAIL, RET on RCPT): `555 5.5.4`."""

    reply_code = 555


@dataclass(frozen=True)
class MessageDsn:
    """What MAIL FROM asked: RET and ENVID (each None when not given)."""

    ret: DsnReturn | None = None
    envid: str | None = None

    def props(self) -> dict[int, object]:
        out: dict[int, object] = {}
        if self.ret is not None:
            out[T.PR_POSTROOM_DSN_RET] = str(self.ret)
        if self.envid is not None:
            out[T.PR_POSTROOM_DSN_ENVID] = self.envid
        return out


@dataclass(frozen=True)
class RecipientDsn:
    """What one RCPT TO asked: NOTIFY and ORCPT (each None when not given)."""

    notify: frozenset[Notify] | None = None
    orcpt: str | None = None  # "rfc822;user@example.org", decoded

    def props(self) -> dict[int, object]:
        out: dict[int, object] = {}
        if self.notify is not None:
            out[T.PR_POSTROOM_DSN_NOTIFY] = ",".join(n for n in Notify if n in self.notify)
        if self.orcpt is not None:
            out[T.PR_POSTROOM_DSN_ORCPT] = self.orcpt
        return out

    def request(self) -> RecipientDsnRequest:
        """The same, as `Session.submit_mime(recipient_dsn=…)` and the submit socket take it."""
        out: RecipientDsnRequest = {}
        if self.notify is not None:
            out["notify"] = ",".join(n for n in Notify if n in self.notify)
        if self.orcpt is not None:
            out["orcpt"] = self.orcpt
        return out


class RecipientDsnRequest(TypedDict, total=False):
    """One recipient's DSN request as plain text, for the face and the submit socket's JSON:
    `notify` as sendmail's -N ("never", or some of "success,failure,delay"), `orcpt` decoded
    ("rfc822;user@example.org")."""

    notify: str
    orcpt: str


def read_recipient_request(request: Mapping[str, object]) -> RecipientDsn:
    """The RecipientDsn a RecipientDsnRequest stands for; DsnParameterError when it is malformed."""
    unknown = set(request) - {"notify", "orcpt"}
    if unknown:
        raise DsnParameterError(f"only notify and orcpt, not {', '.join(sorted(map(str, unknown)))}")
    notify, orcpt = request.get("notify"), request.get("orcpt")
    for value, what in ((notify, "notify"), (orcpt, "orcpt")):
        if value is not None and not isinstance(value, str):
            raise DsnParameterError(f"{what} must be text")
    return RecipientDsn(
        notify=parse_notify(notify) if isinstance(notify, str) else None,
        orcpt=parse_orcpt(orcpt) if isinstance(orcpt, str) else None,
    )


_XTEXT = re.compile(r"(?:[\x21-\x2A\x2C-\x3C\x3E-\x7E]|\+[0-9A-Fa-f]{2})*\Z")  # lower-case hex too: be liberal


def xtext_decode(value: str, what: str) -> str:
    """The text `value` (RFC 3461 §4 xtext) stands for; DsnParameterError when it is no xtext."""
    if not _XTEXT.match(value):
        raise DsnParameterError(f"{what} is not xtext (RFC 3461 §4)")
    raw = re.sub(rb"\+([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), value.encode("ascii"))
    return raw.decode("utf-8", "replace")


def xtext_encode(value: str) -> str:
    """RFC 3461 §4 xtext of `value` (its UTF-8 octets): printable ASCII except '+' and '=' as is,
    everything else as +HH; what a relay puts on MAIL and RCPT to pass a DSN request on."""
    out = []
    for byte in value.encode("utf-8"):
        if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def parse_notify(value: str) -> frozenset[Notify]:
    """`NEVER`, or a comma-separated list of SUCCESS, FAILURE and DELAY (any case)."""
    words = [w.strip().upper() for w in value.split(",")]
    try:
        chosen = frozenset(Notify(w) for w in words)
    except ValueError:
        raise DsnParameterError(f"NOTIFY={value}: only NEVER or SUCCESS, FAILURE, DELAY") from None
    if len(chosen) != len(words) or (Notify.NEVER in chosen and len(chosen) > 1):
        raise DsnParameterError(f"NOTIFY={value}: NEVER stands alone, and no word twice")
    return chosen


def parse_ret(value: str) -> DsnReturn:
    try:
        return DsnReturn(value.upper())
    except ValueError:
        raise DsnParameterError(f"RET={value}: only FULL or HDRS") from None


def parse_envid(value: str) -> str:
    """A sendmail -V envelope ID (plain text, not xtext): printable ASCII, at most 100 characters."""
    if not value or len(value) > MAX_ENVID or not all(0x20 < ord(c) < 0x7F for c in value):
        raise DsnParameterError(f"envelope ID {value!r}: 1 to {MAX_ENVID} printable ASCII characters")
    return value


def parse_orcpt(value: str) -> str:
    """A decoded ORCPT, `addr-type;address` (RFC 3461 §4.2), with its type in lower case. No
    control characters: the value is echoed in a report's header."""
    kind, semicolon, address = value.partition(";")
    if (
        not semicolon
        or not re.fullmatch(r"[A-Za-z0-9-]+", kind)
        or not address
        or len(value) > MAX_ORCPT
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        raise DsnParameterError("ORCPT must be addr-type;address (e.g. rfc822;user@example.org)")
    return f"{kind.lower()};{address}"


def _parameters(given: list[tuple[str, str | None]], allowed: frozenset[str], verb: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in given:
        name = key.upper()
        if name not in allowed:
            raise DsnUnknownParameter(f"{name} is not a {verb} parameter")
        if name in found:
            raise DsnParameterError(f"{name} given twice")
        if not value:
            raise DsnParameterError(f"{name} needs a value")
        found[name] = value
    return found


def read_mail_parameters(given: list[tuple[str, str | None]]) -> MessageDsn:
    """The DSN parameters of one MAIL FROM, as `split_dsn_parameters` took them out."""
    found = _parameters(given, frozenset({"RET", "ENVID"}), "MAIL")
    envid = found.get("ENVID")
    if envid is not None and len(envid) > MAX_ENVID:
        raise DsnParameterError(f"ENVID is longer than {MAX_ENVID} characters")
    return MessageDsn(
        ret=parse_ret(found["RET"]) if "RET" in found else None,
        envid=xtext_decode(envid, "ENVID") if envid is not None else None,
    )


def read_rcpt_parameters(given: list[tuple[str, str | None]]) -> RecipientDsn:
    """The DSN parameters of one RCPT TO, as `split_dsn_parameters` took them out."""
    found = _parameters(given, frozenset({"NOTIFY", "ORCPT"}), "RCPT")
    orcpt = found.get("ORCPT")
    if orcpt is not None:
        kind, semicolon, address = orcpt.partition(";")
        if not semicolon or not re.fullmatch(r"[A-Za-z0-9-]+", kind) or not address or len(orcpt) > MAX_ORCPT:
            raise DsnParameterError("ORCPT must be addr-type;xtext (e.g. rfc822;user@example.org)")
        orcpt = parse_orcpt(f"{kind};{xtext_decode(address, 'ORCPT')}")
    return RecipientDsn(notify=parse_notify(found["NOTIFY"]) if "NOTIFY" in found else None, orcpt=orcpt)


_DSN_KEYS = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT"})


def split_dsn_parameters(params: str) -> tuple[list[tuple[str, str | None]], str]:
    """The DSN parameters of a MAIL or RCPT parameter string, as written (case kept), and the
    others, for aiosmtpd (which upper-cases every value, and so would spoil ENVID and ORCPT)."""
    dsn: list[tuple[str, str | None]] = []
    rest: list[str] = []
    for word in params.split():
        key, eq, value = word.partition("=")
        if key.upper() in _DSN_KEYS:
            dsn.append((key, value if eq else None))
        else:
            rest.append(word)
    return dsn, " ".join(rest)


#: Which NOTIFY word lets a report of each kind go to the envelope sender.
_NEEDS = {"failed": Notify.FAILURE, "delayed": Notify.DELAY, "delivered": Notify.SUCCESS, "relayed": Notify.SUCCESS}


def wants_report(recipient: Mapping[int, object], action: str) -> bool | None:
    """Whether the sender asked (True) or refused (False) a report of `action` ("failed",
    "delayed", "delivered", "relayed") about this recipient; None when it said nothing (no NOTIFY:
    the MTA decides, RFC 3461 §4.1)."""
    notify = recipient.get(T.PR_POSTROOM_DSN_NOTIFY)
    if not isinstance(notify, str) or not notify:
        return None
    return _NEEDS[action].value in notify.split(",")
