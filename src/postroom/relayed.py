"""What becomes of relayed mail once it is handled (`relayed_mail` in [profile]).

Mail handed over with an envelope (the SMTP listener, postroom-sendmail and the system profile's
submit socket) is the machine's mail: cron's, an application's. Nobody reads it in Sent Items, and
on a machine that relays mail all day the store would grow without bound. So, as Postfix removes a
queue file once every recipient has an outcome, such a message is deleted once handled
(PR_DELETE_AFTER_SUBMIT), unless the profile says `relayed_mail = "keep"`: then it moves to Sent
Items, as a message composed here does.

Deleting it loses nothing still needed: the reports (the profile's NDR, the RFC 3464 copy to the
envelope sender, with the whole message under RET=FULL) are made in the pass that finishes it,
before it is deleted; each recipient's log line is written as its outcome is recorded; and the
history /metrics counts (the events table) is not tied to the message's row, so no counter drops.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from enum import StrEnum
from typing import Any

from .mapi import tags as T
from .mapi.codes import HResult, MAPIError

__all__ = ["RELAYED_MAIL", "RelayedMail", "mark_relayed", "relayed_mail"]

#: The [profile] key.
RELAYED_MAIL = "relayed_mail"


class RelayedMail(StrEnum):
    """What becomes of a relayed message once every recipient has an outcome."""

    DELETE = "delete"  # the default: gone, as from Postfix's queue
    KEEP = "keep"  # moved to Sent Items


def relayed_mail(settings: Mapping[str, Any]) -> RelayedMail:
    """The profile's `relayed_mail`; MAPI_E_INVALID_PARAMETER naming the two words for any other value."""
    value = settings.get(RELAYED_MAIL, RelayedMail.DELETE)
    if isinstance(value, str) and value in {m.value for m in RelayedMail}:
        return RelayedMail(value)
    raise MAPIError(
        HResult.MAPI_E_INVALID_PARAMETER,
        f"{RELAYED_MAIL} in [profile] of profile.toml is 'delete' or 'keep', not {value!r}",
    )


def mark_relayed(props: MutableMapping[int, Any], policy: RelayedMail, sent_items: bytes) -> None:
    """Mark a relayed message's properties for `policy`: PR_DELETE_AFTER_SUBMIT (and no Sent Items
    to move to), or PR_SENTMAIL_ENTRYID naming `sent_items`."""
    if policy is RelayedMail.DELETE:
        props.pop(T.PR_SENTMAIL_ENTRYID, None)
        props[T.PR_DELETE_AFTER_SUBMIT] = True
    else:
        props.pop(T.PR_DELETE_AFTER_SUBMIT, None)
        props[T.PR_SENTMAIL_ENTRYID] = sent_items
