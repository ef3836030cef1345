"""Model-based test of issue 13: one rule for routing, whatever the mode; Send/Receive calls every
transport of its group in one flush; the summary adds up.

A hypothesis state machine builds a random profile from real transports (a `maildir` for
localhost; `smtp` with and without `domains`, each to its own SMTP server on 127.0.0.1; two
`pipe` fax gateways that append their arguments to a file; third-party transports that register
a provider UID, one of which declares its scope up front; a wildcard transport that declines most
recipients "not mine"; a PAGER transport that always asks to be tried again in an hour), and then
submits messages to random recipients, changes the transport order, switches online and offline,
toggles call-when-offline, makes Send/Receive groups and runs Send/Receive and `flush` for them,
changes the declared scope of `corp`, removes a transport, and logs on again.

Beside the real session runs a tiny reference model of the rule, computed independently of
postroom's router: a recipient is offered first to the transports registering its UID, in
transport order, then to those registering its address type (or any), in transport order,
leaving out transports whose declared scope excludes it; the first one that accepts takes it.
A transport may be called when the session is online, when it is call-when-offline, or while a
Send/Receive (or flush) of a group holding it runs. After every step each recipient is either
delivered or failed by exactly the transport the reference model gives it, or waits for exactly
the transport the model says (`RecipientStatus.waiting_for`, `recipient_report()`, the queue's
`waiting_transports`), or has an NDR that says no transport took it; every delivery is counted at
its sink (the Maildir, the SMTP servers, the fax logs, the test transports' marks) and none
arrives twice. Each pass's and each Send/Receive's per-transport lines count every recipient it
processed exactly once, and the totals are the sums of the lines.

The transport order changes, a scope changes and a transport is removed while recipients wait: a waiting
recipient remembers the transports that declined it, and a change of routing moves it at once to
the first transport of the new routing that has not (spooler/reroute.py). Its message waits on
quietly if it waited for Send/Receive and that transport may not be called now either; otherwise
it is due at once, and the next pass offers the recipient to its new transport.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import postroom
from postroom.engine.groups import DEFAULT_GROUP, SendReceiveGroup, save_group
from postroom.engine.results import SendReceiveSummary
from postroom.mapi.entryid import MAPIUID, make_entry_id
from postroom.profile import Profile
from postroom.spooler import PassSummary
from postroom.spooler.outbound import NOT_CALLED_OFFLINE
from postroom.spooler.reroute import ROUTED_AGAIN
from postroom.store import RecipientState, WaitKind

from support import recording
from support.pipes import logged, logging_pipe
from support.smtp_sink import RecordingHandler, running_sink

pytestmark = pytest.mark.integration

UID = MAPIUID(bytes([0x13]) * 16)
NAMES = ("local", "corp", "work", "fax", "fax2", "dir", "vip", "gw", "slow")
TRY_LATER = "try later"  # what `slow` says when it asks to be tried again in an hour
_numbers = itertools.count(1)


# --- the reference model of the rule ---------------------------------------------------------------


@dataclass
class ModelTransport:
    """What the test knows of a transport: what it registers, its declared scope, what it accepts."""

    name: str
    types: tuple[str, ...] | None  # None: any address type
    uid: bool  # registers UID
    scope: Callable[[str, str], bool] | None  # (address type, address) -> in scope; None: cannot say
    accepts: Callable[[str], str | None]  # address -> "delivered" / "failed" / "deferred" / None ("not mine")
    cwo: bool = False


def _smtp_answer(address: str) -> str:
    return "failed" if address.startswith("reject-") else "delivered"


def _domain_scope(domain: str) -> Callable[[str, str], bool]:
    return lambda _type, address: address.rpartition("@")[2].lower() == domain


def _catalogue() -> dict[str, ModelTransport]:
    """Every transport the machine may add, as the reference model sees it."""
    return {
        "local": ModelTransport("local", ("SMTP",), False, _domain_scope("localhost"), lambda a: "delivered"),
        "corp": ModelTransport("corp", ("SMTP",), False, _domain_scope("corp.test"), _smtp_answer),
        "work": ModelTransport("work", ("SMTP",), False, None, _smtp_answer),
        "fax": ModelTransport("fax", ("FAX",), False, None, lambda a: "delivered"),
        "fax2": ModelTransport("fax2", ("FAX",), False, None, lambda a: "delivered"),
        "dir": ModelTransport("dir", (), True, None, lambda a: "delivered" if "dir-" in a else None),
        "vip": ModelTransport("vip", (), True, lambda _t, a: "vip-" in a, lambda a: "delivered"),
        "gw": ModelTransport("gw", None, False, None, lambda a: "delivered" if "gw-" in a else None),
        "slow": ModelTransport("slow", ("PAGER",), False, None, lambda a: "deferred"),
    }


@dataclass
class ModelRecipient:
    address_type: str
    address: str
    uid: bool
    state: str = "pending"  # pending (waiting) / delivered / failed / ndr
    transport: str | None = None  # who delivered or failed it; or the one it waits for (None: no transport left)
    detail: str = ""  # pending: why it waits (not called offline, or the transport's words)
    declined: set[str] = field(default_factory=set)  # transports that said "not mine" when called

    @property
    def text(self) -> str:
        return f"{self.address_type}:{self.address}" + (" (UID)" if self.uid else "")


@dataclass
class ModelMessage:
    message_id: int
    recipients: list[ModelRecipient]
    parked: bool = False  # not due: waits for a Send/Receive, or a retry an hour away (else due now)
    retry: bool = False  # parked with a retry time (a transport asked to try again later)

    @property
    def pending(self) -> list[ModelRecipient]:
        return [r for r in self.recipients if r.state == "pending"]


def offers(r: ModelRecipient, order: list[ModelTransport]) -> list[ModelTransport]:
    """UID registrations first, then address types (or any), each in transport order, out of scope left out."""

    def in_scope(t: ModelTransport) -> bool:
        return t.scope is None or t.scope(r.address_type, r.address)

    out = [t for t in order if r.uid and t.uid and in_scope(t)]
    out += [
        t
        for t in order
        if t not in out and (t.types is None or r.address_type in t.types) and in_scope(t) and not (t.uid and r.uid)
    ]
    return out


def online_transport(r: ModelRecipient, order: list[ModelTransport]) -> tuple[str, str] | None:
    """What online routing gives the recipient: (transport, "delivered"/"failed"), or None for an NDR."""
    for t in offers(r, order):
        answer = t.accepts(r.address)
        if answer is not None:
            return t.name, answer
    return None


# Recipients: a template and whether its entry ID carries the third-party UID.
RECIPIENT_KINDS: tuple[tuple[str, bool], ...] = (
    ("SMTP:u{n}@localhost", False),
    ("SMTP:u{n}@corp.test", False),
    ("SMTP:u{n}@example.test", False),
    ("SMTP:reject-{n}@example.test", False),
    ("SMTP:reject-{n}@corp.test", False),
    ("SMTP:gw-{n}@example.test", False),
    ("FAX:+1555{n:04d}", False),
    ("X400:c=gb;s=u{n}", False),
    ("X400:gw-{n}", False),
    ("SMTP:dir-{n}@example.test", True),
    ("SMTP:vip-{n}@corp.test", True),
    ("SMTP:u{n}@corp.test", True),
    ("SMTP:vip-{n}@localhost", True),
    ("PAGER:{n}", False),
)

# --- the machine -----------------------------------------------------------------------------------


class RoutingMachine(RuleBasedStateMachine):
    """A real session beside the reference model; see the module docstring."""

    sinks: ClassVar[dict[str, tuple[RecordingHandler, int]]] = {}
    examples: ClassVar[int] = 0
    steps: ClassVar[int] = 0
    seen: ClassVar[Counter[str]] = Counter()  # what became of recipients, over the whole run

    def __init__(self) -> None:
        super().__init__()
        RoutingMachine.examples += 1
        self.tmp = Path(tempfile.mkdtemp(prefix="routing-model-"))
        self.session: postroom.Session | None = None
        self.catalogue = _catalogue()
        self.present: list[str] = []
        self.order: list[str] = []
        self.online = True
        self.groups: dict[str, list[str]] = {}
        self.messages: list[ModelMessage] = []
        #: The session logs its transports on again before its next pass (a new session, or the
        #: profile changed); online, that sends what waited for Send/Receive (ProtocolManager.start).
        self.relogon = True
        self.seen_here: Counter[str] = Counter()  # steps of each rule in this example
        recording.CALLS.clear()
        recording.MARKS.clear()

    # Setup ------------------------------------------------------------------------------------------
    @initialize(
        chosen=st.fixed_dictionaries({name: st.sampled_from([True, True, False]) for name in NAMES}),
        cwo=st.dictionaries(st.sampled_from(NAMES), st.booleans()),
        online=st.sampled_from([False, False, True]),
        data=st.data(),
    )
    def build_profile(self, chosen: dict[str, bool], cwo: dict[str, bool], online: bool, data: st.DataObject) -> None:
        present = [name for name in NAMES if chosen[name]] or ["work"]
        profile = Profile.create(self.tmp / "profile", with_defaults=False)
        for name in present:
            kind, options = self._service(name)
            profile.add_service(kind, name, options, call_when_offline=cwo.get(name, False))
            self.catalogue[name].cwo = cwo.get(name, False)
        self.order = data.draw(st.permutations(present), label="order")
        profile.set_transport_order(self.order)
        profile.set_mode("online" if online else "offline")
        profile.save()
        self.present = list(present)
        self.online = online
        self.session = postroom.logon(self.tmp / "profile")

    def _service(self, name: str) -> tuple[str, dict[str, Any]]:
        if name == "local":
            return "maildir", {"domains": ["localhost"]}
        if name in ("corp", "work"):
            _, port = self.sinks[name]
            options: dict[str, Any] = {
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "helo_name": "client.test",
                "timeout": 10,
            }
            if name == "corp":
                options["domains"] = ["corp.test"]
            return "smtp", options
        if name in ("fax", "fax2"):
            command, _ = logging_pipe(self.tmp, name)
            return "pipe", {"command": command, "address_types": ["FAX"]}
        if name == "dir":
            return "recording", {"address_types": [], "uids": [bytes(UID).hex()], "take": ["dir-"]}
        if name == "vip":
            return "recording", {"address_types": [], "uids": [bytes(UID).hex()], "scope": ["vip-"]}
        if name == "slow":
            return "recording", {"address_types": ["PAGER"], "answer": "wait:3600"}
        assert name == "gw"
        return "recording", {"address_types": "*", "take": ["gw-"]}

    def teardown(self) -> None:
        try:
            if self.session is not None:
                self.session.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def s(self) -> postroom.Session:
        assert self.session is not None
        return self.session

    def _step(self, name: str) -> None:
        RoutingMachine.steps += 1
        RoutingMachine.seen[f"step {name}"] += 1
        self.seen_here[name] += 1

    def _order(self) -> list[ModelTransport]:
        return [self.catalogue[n] for n in self.order]

    def _callable(self, t: ModelTransport, flushing: set[str]) -> bool:
        return self.online or t.cwo or t.name in flushing

    def _logged_on(self) -> list[ModelMessage]:
        """The messages the next pass takes: those due already (a change of routing moved one of their
        recipients), and what a (re)logon makes due: online, every one that waits for Send/Receive."""
        due = [m for m in self.messages if m.pending and not m.parked]
        woken = [m for m in self.messages if m.parked and not m.retry] if self.relogon and self.online else []
        self.relogon = False
        return due + woken

    def _routing_changed(self) -> None:
        """What a change of routing does to the recipients that wait (spooler/reroute.py): each goes to
        the first transport of the new routing that has not declined it. Its message stays parked if
        it waited for Send/Receive and that transport may not be called now; otherwise it is due."""
        order = self._order()
        for m in self.messages:
            at_send_receive = m.parked and not m.retry  # as the message waited before the change
            for r in m.pending:
                target = next((t.name for t in offers(r, order) if t.name not in r.declined), None)
                if target == r.transport:
                    continue
                RoutingMachine.seen["recipient moved by a change of routing"] += 1
                quiet = at_send_receive and target is not None and not self._callable(self.catalogue[target], set())
                r.transport, r.detail = target, NOT_CALLED_OFFLINE if quiet else ROUTED_AGAIN
                if not quiet:
                    m.parked = False

    # The model's pass ---------------------------------------------------------------------------------
    def _process(self, due: list[ModelMessage], flushing: set[str]) -> Counter[tuple[str, str]]:
        """Run the reference model over the due messages; (transport, fate) -> recipients."""
        lines: Counter[tuple[str, str]] = Counter()
        order = self._order()
        for m in due:
            m.parked = False
            for r in m.pending:
                expected = online_transport(r, order)
                for t in offers(r, order):
                    if t.name in r.declined:
                        continue
                    if not self._callable(t, flushing):
                        r.transport, r.detail = t.name, NOT_CALLED_OFFLINE
                        lines[(t.name, "waiting")] += 1
                        break
                    answer = t.accepts(r.address)
                    if answer is None:
                        r.declined.add(t.name)
                        continue
                    if answer == "deferred":
                        r.transport, r.detail = t.name, TRY_LATER
                        lines[(t.name, "deferred")] += 1
                        break
                    r.state, r.transport = answer, t.name
                    lines[(t.name, answer)] += 1
                    break
                else:
                    r.state, r.transport = "ndr", None
                    lines[("", "failed")] += 1
                RoutingMachine.seen[
                    f"recipient {'deferred' if r.detail == TRY_LATER and r.state == 'pending' else r.state}"
                    + (" after a decline" if r.declined else "")
                    + (" in a flush" if flushing else "")
                ] += 1
                if r.state != "pending" or r.detail == TRY_LATER:  # the model's answer is online routing's
                    got = None if r.state == "ndr" else (r.transport, "deferred" if r.detail == TRY_LATER else r.state)
                    assert got == expected, (r.text, got, expected)
            m.parked = bool(m.pending)
            m.retry = any(r.detail == TRY_LATER for r in m.pending)
        return lines

    @staticmethod
    def _lines_of_pass(summary: PassSummary) -> Counter[tuple[str, str]]:
        lines: Counter[tuple[str, str]] = Counter()
        for name, counts in summary.tally:
            for fate in ("delivered", "failed", "deferred", "waiting"):
                if getattr(counts, fate):
                    lines[(name, fate)] += getattr(counts, fate)
        return lines

    @staticmethod
    def _lines_of_flush(summary: SendReceiveSummary) -> Counter[tuple[str, str]]:
        lines: Counter[tuple[str, str]] = Counter()
        for t in summary.transports:
            for fate, n in (
                ("delivered", t.sent),
                ("failed", t.failed),
                ("deferred", t.deferred),
                ("waiting", t.waiting),
            ):
                if n:
                    lines[(t.transport, fate)] += n
        totals = (summary.sent, summary.failed, summary.deferred, summary.waiting)
        assert totals == tuple(
            sum(getattr(t, f) for t in summary.transports) for f in ("sent", "failed", "deferred", "waiting")
        )
        return lines

    # Rules ------------------------------------------------------------------------------------------
    @rule(kinds=st.lists(st.sampled_from(RECIPIENT_KINDS), min_size=1, max_size=5))
    def send(self, kinds: list[tuple[str, bool]]) -> None:
        """`postroom send`: submit, then one spooler pass."""
        self._step("send")
        draft = self.s.create_message(f"model {next(_numbers)}", "body")
        recipients = []
        for template, uid in kinds:
            text = template.format(n=next(_numbers))
            draft.add_recipient(text, entry_id=make_entry_id(UID, b"dir-entry") if uid else None)
            address_type, _, address = text.partition(":")
            recipients.append(ModelRecipient(address_type, address, uid))
        mid = draft.submit()
        message = ModelMessage(mid, recipients)
        woken = self._logged_on()
        self.messages.append(message)
        summary = self.s.deliver()
        expected = self._process([*woken, message], set())
        assert self._lines_of_pass(summary) == expected, (summary.tally, expected)

    @rule(online=st.booleans())
    def set_mode(self, online: bool) -> None:
        """Online or offline: nothing is sent or failed by the switch itself."""
        self._step("set_mode")
        self.s.set_mode("online" if online else "offline")
        self.online = online

    @precondition(lambda self: len(self.groups) < 3)
    @rule(data=st.data())
    def add_group(self, data: st.DataObject) -> None:
        self._step("add_group")
        members = data.draw(
            st.lists(st.sampled_from(self.present), min_size=1, max_size=3, unique=True), label="members"
        )
        name = f"g{len(self.groups) + 1}"
        save_group(self.s.profile, SendReceiveGroup(name, transports=members))
        self.s.save_profile()
        self.groups[name] = members
        self.relogon = True

    @rule(data=st.data())
    def send_receive(self, data: st.DataObject) -> None:
        """Send/Receive of a group: every transport of the group callable in one flush."""
        self._step("send_receive")
        name = data.draw(st.sampled_from([DEFAULT_GROUP, *self.groups]), label="group")
        members = set(self.present) if name == DEFAULT_GROUP else set(self.groups[name])
        woken = self._logged_on()
        summary = self.s.send_receive(name)
        assert {t.transport for t in summary.transports} >= members
        self._check_flush(summary, members, woken)

    @precondition(lambda self: any(m.pending for m in self.messages))
    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        """`postroom flush --transport X`: the same for X alone."""
        self._step("flush")
        waited_for = sorted({r.transport for m in self.messages for r in m.pending} & set(self.present))
        name = data.draw(st.sampled_from(waited_for or self.present), label="transport")  # what a user flushes
        woken = self._logged_on()
        summary = self.s.flush(name)
        self._check_flush(summary, {name}, woken)

    def _check_flush(self, summary: SendReceiveSummary, members: set[str], woken: list[ModelMessage]) -> None:
        assert summary.errors == [], summary.errors
        members &= set(self.present)
        if members:
            woken += [
                m
                for m in self.messages
                if m.parked and m not in woken and any(r.transport in members for r in m.pending)
            ]
        untouched = [m for m in self.messages if m.parked and m not in woken]
        expected = self._process(woken, members)
        assert self._lines_of_flush(summary) == expected, (summary.transports, expected)
        assert all(m.parked for m in untouched)

    @precondition(lambda self: self.seen_here["reorder"] < 3)
    @rule(data=st.data())
    def reorder(self, data: st.DataObject) -> None:
        """`postroom order set`, also while recipients wait: they go where the new order sends them."""
        self._step("reorder")
        self.order = data.draw(st.permutations(self.present), label="order")
        self.s.set_transport_order(self.order)
        self._routing_changed()
        self.relogon = True

    @precondition(lambda self: self.seen_here["rescope"] < 2 and "corp" in self.present)
    @rule(domain=st.sampled_from(["corp.test", "example.test"]))
    def rescope(self, domain: str) -> None:
        """`postroom service set corp --set domains=[...]`: corp's declared scope changes, also while
        recipients wait; they go where routing with the new scope sends them."""
        self._step("rescope")
        _, options = self._service("corp")
        self.s.configure_service("corp", options={**options, "domains": [domain]})
        self.catalogue["corp"].scope = _domain_scope(domain)
        for m in self.messages:  # a decline was corp's answer as configured then (corp never declines)
            for r in m.pending:
                r.declined.discard("corp")
        self._routing_changed()
        self.relogon = True

    @precondition(lambda self: self.seen_here["toggle_call_when_offline"] < 2)
    @rule(data=st.data(), on=st.booleans())
    def toggle_call_when_offline(self, data: st.DataObject, on: bool) -> None:
        self._step("toggle_call_when_offline")
        name = data.draw(st.sampled_from(self.present), label="transport")
        self.s.configure_service(name, call_when_offline=on)
        self.catalogue[name].cwo = on
        self.relogon = True

    @precondition(lambda self: self.seen_here["remove_transport"] < 1 and len(self.present) > 1)
    @rule(data=st.data())
    def remove_transport(self, data: st.DataObject) -> None:
        """`postroom service remove`: what waited for it goes to the transport routing now gives it."""
        self._step("remove_transport")
        waited_for = sorted({r.transport for m in self.messages for r in m.pending} & set(self.present))
        name = data.draw(st.sampled_from(waited_for or self.present), label="transport")
        self.s.remove_service(name)
        self.present.remove(name)
        self.order.remove(name)
        for members in self.groups.values():
            if name in members:
                members.remove(name)
        self._routing_changed()
        self.relogon = True

    @precondition(lambda self: self.seen_here["log_on_again"] < 2 and any(m.parked for m in self.messages))
    @rule()
    def log_on_again(self) -> None:
        """A new session (`postroom spooler --once`): online, it sends what waited for Send/Receive."""
        self._step("log_on_again")
        self.s.close()
        self.session = postroom.logon(self.tmp / "profile")
        self.relogon = True
        woken = self._logged_on()
        summary = self.s.deliver()
        expected = self._process(woken, set())
        assert self._lines_of_pass(summary) == expected, (summary.tally, expected)

    # What the user sees, after every step ----------------------------------------------------------------
    def _deliveries(self) -> dict[str, Counter[str]]:
        """Every delivery each transport made, by address, as its sink saw it."""
        seen: dict[str, Counter[str]] = {name: Counter() for name in NAMES}
        local = self.tmp / "profile" / "maildir" / "localhost"
        if local.is_dir():
            for box in local.iterdir():
                seen["local"][f"{box.name}@localhost"] += sum(1 for _ in (box / "new").iterdir())
        for name in ("corp", "work"):
            seen[name] = self.sinks[name][0].counts()
        for name in ("fax", "fax2"):
            seen[name] = logged(logging_pipe(self.tmp, name)[1])
        for name, address, delivered in recording.MARKS:
            if delivered:
                seen[name][address] += 1
        return seen

    @invariant()
    def every_recipient_is_where_the_rule_puts_it(self) -> None:
        if self.session is None:
            return
        deliveries = self._deliveries()
        queue = {q.id: q for q in self.s.queue()}
        for m in self.messages:
            states = self.s.recipient_states(m.message_id)
            reports = self.s.recipient_report(m.message_id)
            assert len(states) == len(m.recipients)
            for r, st_, rep in zip(m.recipients, states, reports, strict=True):
                where = f"{r.text} of message {m.message_id}"
                got = {
                    name: deliveries[name][r.address.lower()] for name in NAMES if deliveries[name][r.address.lower()]
                }
                if r.state == "delivered":
                    assert st_.state is RecipientState.DELIVERED and st_.transport == r.transport, (where, st_, r)
                    assert got == {r.transport: 1}, (where, "delivered once, by its transport", got)
                    continue
                assert got == {}, (where, "nothing delivered", got)
                if r.state == "failed":
                    assert st_.state is RecipientState.FAILED and st_.transport == r.transport, (where, st_, r)
                elif r.state == "ndr":
                    assert st_.state is RecipientState.FAILED and not st_.transport, (where, st_)
                    assert (rep.report_text or "").startswith("No transport"), (where, rep.report_text)
                else:
                    assert st_.state is RecipientState.PENDING, (where, st_, r)
                    assert st_.waiting_for == r.transport, (where, "waits for", st_.waiting_for, r.transport)
                    assert st_.detail == r.detail, (where, st_.detail, r.detail)
                    assert (rep.state, rep.waiting_for, rep.why) == ("waiting", r.transport, r.detail), (where, rep)
                    assert rep.at_send_receive is (m.parked and not m.retry), (where, rep)
            entry = queue.pop(m.message_id, None)
            if not m.pending:
                assert entry is None, (m.message_id, "left the queue", entry)
                continue
            kind = (WaitKind.RETRY if m.retry else WaitKind.SEND_RECEIVE) if m.parked else None
            assert entry is not None and entry.waiting_for is kind, (m.message_id, entry)
            waits = tuple(dict.fromkeys(r.transport for r in m.pending if r.transport is not None))
            assert entry.waiting_transports == waits, entry
        assert queue == {}, queue


@pytest.fixture(scope="module")
def sinks() -> Iterator[dict[str, tuple[RecordingHandler, int]]]:
    with running_sink() as corp, running_sink() as work:
        yield {"corp": corp, "work": work}


def test_every_recipient_ends_with_the_transport_online_routing_gives_it(
    sinks: dict[str, tuple[RecordingHandler, int]],
) -> None:
    RoutingMachine.sinks = sinks
    RoutingMachine.examples = RoutingMachine.steps = 0
    run_state_machine_as_test(
        RoutingMachine,
        settings=settings(
            max_examples=20,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    assert RoutingMachine.examples >= 20
    print(f"{RoutingMachine.examples} examples, {RoutingMachine.steps} steps;", dict(RoutingMachine.seen))
