"""A test transport that records every call and answers as a script tells it.

Registered as kind "recording"; its options say what it registers and how it answers:
  address_types: list (or "*" for the wildcard), uids: list of hex UIDs,
  take: "all" | "none" | list of address substrings it handles,
  scope: list of address substrings it declares up front (a RecipientScope predicate): it is
         never offered other recipients (and takes exactly these; "take" is then ignored),
  fail: list of address substrings it marks failed,
  answer: "ok" | "not_me" | "busy" | "wait:N" | "network:N" | "cancel" | "raise",
  end: "none" | "resend_later" | "resend_now" | "dont_resend",
  sleep: seconds each submit_message takes (a slow transport; it runs in a worker thread),
  script: a list of "ANSWER" or "ANSWER/END" for its successive submit_message calls (the n-th
      call in CALLS, counted over every logon of that service name); past its end, answer and end.
Calls are appended to CALLS as (service name, method, details), and every recipient it marks to
MARKS as (service name, address, delivered?). Every function in ON_SUBMIT is called with the
service name at the start of each submit_message (in the transport's thread), for tests that line
up concurrent spoolers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from postroom import register_transport_kind
from postroom.mapi import tags as T
from postroom.mapi.entryid import MAPIUID
from postroom.mapi.flags import EndMessageFlags, FlushFlags, LogonFlags, LogonResultFlags, NotifyFlags
from postroom.transports.spi import (
    InboundMessage,
    OutboundMessage,
    RecipientScope,
    Registration,
    SubmitResult,
    TransportLogon,
    TransportProvider,
)

CALLS: list[tuple[str, str, Any]] = []
MARKS: list[tuple[str, str, bool]] = []
LOGON_FAILS: dict[str, Exception] = {}
#: Inbound mail waiting at each transport (by service name): (message class, subject).
INBOUND: dict[str, list[tuple[str, str]]] = {}
ON_SUBMIT: list[Callable[[str], None]] = []
ENDS = {
    "none": EndMessageFlags.NONE,
    "resend_later": EndMessageFlags.RESEND_LATER,
    "resend_now": EndMessageFlags.RESEND_NOW,
    "dont_resend": EndMessageFlags.DONT_RESEND,
}


def scripted(options: dict[str, Any], call: int) -> tuple[str, str]:
    """(answer, end) for a transport's `call`-th submit_message (0-based)."""
    script = options.get("script", [])
    if call < len(script):
        answer, _, end = str(script[call]).partition("/")
        return answer, end or "none"
    return str(options.get("answer", "ok")), str(options.get("end", "none"))


class RecordingLogon(TransportLogon):
    def __init__(self, provider: TransportProvider, flags: LogonFlags) -> None:
        super().__init__(provider, flags)
        self._end = "none"  # what end_message answers after the last submit_message
        if self.options.get("poll"):
            self.result_flags = LogonResultFlags.SP_POLL

    def poll(self) -> bool:
        CALLS.append((self.name, "poll", None))
        return bool(INBOUND.get(self.name))

    def start_message(self, message: InboundMessage) -> None:
        CALLS.append((self.name, "start_message", message.ref))
        waiting = INBOUND.get(self.name)
        if not waiting:
            return  # nothing: leave the message unsaved
        message_class, subject = waiting.pop(0)
        message.props[T.PR_MESSAGE_CLASS] = message_class
        message.props[T.PR_SUBJECT] = subject
        message.save()

    def flush_queues(self, flags: FlushFlags) -> None:
        CALLS.append((self.name, "flush_queues", int(flags)))
        super().flush_queues(flags)

    def transport_notify(self, flags: NotifyFlags, data: Any = None) -> None:
        CALLS.append((self.name, "transport_notify", int(flags)))
        super().transport_notify(flags, data)

    def address_types(self) -> Registration:
        types = self.options.get("address_types", ["SMTP"])
        uids = [MAPIUID.from_hex(u) for u in self.options.get("uids", [])]
        scope = self._scope()
        if types == "*":
            return Registration.any(uids, scope=scope)
        return Registration.of(*types, uids=uids, scope=scope)

    def _scope(self) -> RecipientScope | None:
        declared = self.options.get("scope")
        if declared is None:
            return None
        parts = [str(p) for p in declared]
        return RecipientScope.custom(
            lambda _type, address: any(p in address for p in parts), f"serves only addresses with {', '.join(parts)}"
        )

    def submit_message(self, message: OutboundMessage, flags: int) -> SubmitResult:
        for hook in ON_SUBMIT:
            hook(self.name)
        seen = {r.row_id: (r.email_address, r.responsibility) for r in message.recipients}
        call = 0
        if "script" in self.options:
            call = sum(1 for name, method, _ in CALLS if name == self.name and method == "submit_message")
        CALLS.append((self.name, "submit_message", seen))
        time.sleep(float(self.options.get("sleep", 0)))
        answer, self._end = scripted(self.options, call)
        if answer == "raise":
            raise RuntimeError("transport plug-in bug")
        if answer == "not_me":
            return SubmitResult.not_me()
        if answer == "busy":
            return SubmitResult.busy()
        if answer == "cancel":
            return SubmitResult.cancel()
        if answer.startswith("wait:"):
            return SubmitResult.wait(float(answer[5:]), "try later")
        if answer.startswith("network:"):
            return SubmitResult.network_error(float(answer[8:]), "connection refused")
        take = self.options.get("scope", self.options.get("take", "all"))
        fail = self.options.get("fail", [])
        marked: dict[int, bool] = {}
        for r in message.pending():
            if any(f in r.email_address for f in fail):
                r.mark_failed("550 5.1.1 no such user", status_code=550)
                marked[r.row_id] = False
                MARKS.append((self.name, r.email_address, False))
            elif take == "all" or (isinstance(take, list) and any(t in r.email_address for t in take)):
                r.mark_delivered()
                marked[r.row_id] = True
                MARKS.append((self.name, r.email_address, True))
        CALLS.append((self.name, "marked", marked))
        return SubmitResult.ok()

    def end_message(self, ref: int) -> EndMessageFlags:
        CALLS.append((self.name, "end_message", ref))
        return ENDS[self._end]


class RecordingProvider(TransportProvider):
    display_name = "Recording test transport"

    def logon(self, flags: LogonFlags) -> TransportLogon:
        CALLS.append((self.context.service_name, "logon", int(flags)))
        if self.context.service_name in LOGON_FAILS:
            raise LOGON_FAILS[self.context.service_name]
        return RecordingLogon(self, flags)


register_transport_kind("recording", RecordingProvider)
