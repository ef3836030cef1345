"""The NOTIFY an SMTP relay passes on for a recipient (RFC 3461 §4.1): the sender's own words in
the order postroom writes them (mapi/dsn.py), else the MAPI report request's, else none."""

from __future__ import annotations

from postroom.mapi import tags as T
from postroom.mapi.message import Recipient
from postroom.transports.smtp import SMTPLogon
from postroom.transports.spi import OutboundRecipient


def _rcpt(notify: str | None) -> OutboundRecipient:
    props: dict[int, object] = {T.PR_ADDRTYPE: "SMTP", T.PR_EMAIL_ADDRESS: "alice@example.test"}
    if notify is not None:
        props[T.PR_POSTROOM_DSN_NOTIFY] = notify
    return OutboundRecipient(Recipient(props=props), responsibility=False)


def test_the_senders_notify_is_passed_on_in_rfc_order_whatever_its_case_and_order() -> None:
    assert SMTPLogon._recipient_notify(_rcpt("delay, success"), None, True) == "SUCCESS,DELAY"
    assert SMTPLogon._recipient_notify(_rcpt("NEVER"), "SUCCESS,FAILURE", True) == "NEVER"


def test_without_the_senders_own_notify_the_mapi_request_decides() -> None:
    assert SMTPLogon._recipient_notify(_rcpt("FAILURE"), "SUCCESS,FAILURE", False) == "SUCCESS,FAILURE"
    assert SMTPLogon._recipient_notify(_rcpt(None), None, True) is None
    assert SMTPLogon._recipient_notify(_rcpt("bogus"), "SUCCESS,FAILURE", True) == "SUCCESS,FAILURE"
