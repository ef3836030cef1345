"""Property: for any transports, registrations, transport order, recipients and SPI answers, every
recipient ends with exactly one outcome, is offered in its routing order, and no transport is
called again for a recipient it already took.

Each transport follows a script of answers, one per submit_message call: every answer the SPI
has (ok, not-me, cancel, an exception, busy, wait, network error, and ok with the end flags
resend-later, resend-now and don't-resend). Past its script it answers something that does not
wait, so every message ends after a few passes; the test moves a hand clock to each retry.

What each pass must show, recipient by recipient (a pass is one `deliver()`; the routing the test
expects is worked out here, independently of `spooler.routing`):
* it is offered to transports in its routing order (UID registrations in transport order, then
  address-type registrations in transport order), each at most once, starting with the first;
  the only repeat is a transport that ended its call with resend-now, called again at once;
* it goes on to its next transport only after one that passed (not-me, cancel, an exception, or
  ok without taking it); after one that asked to wait (busy, wait, network error, resend later,
  don't resend) it waits for a later pass; when no transport is left it gets an NDR then;
* once a transport took it (marked delivered or failed) nobody is offered it again, in this pass
  or any later one, and its outcome names that transport.
And for the message as a whole: each call is one step of routing for every recipient it is given,
and the steps come in order, the whole UID pass before the address-type pass.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import postroom
from postroom.mapi.entryid import MAPIUID, make_entry_id
from postroom.spooler.outbound import MAX_RESEND_NOW

from support.clock import Clock
from support.profiles import make_profile
from support.recording import CALLS, scripted

ADDRESS_TYPES = ["SMTP", "FAX", "X400"]
UIDS = [MAPIUID(bytes([n]) * 16) for n in range(1, 4)]
LOCALS = ["ann", "bob", "cy", "dee"]
#: Every answer a transport can give (answer/end flag of end_message).
ANSWERS = [
    "ok",
    "not_me",
    "cancel",
    "raise",
    "busy",
    "wait:30",
    "network:45",
    "ok/resend_later",
    "ok/resend_now",
    "ok/dont_resend",
]
#: Past its script a transport answers one of these: none of them waits, so every message ends.
LAST_ANSWERS = ["ok", "ok", "not_me", "cancel", "raise"]
WAITS = ("busy", "wait:", "network:")
#: Scripts stay shorter than the circuit breaker's threshold (5 network errors): it never opens,
#: so no transport is held back without being called.
SCRIPT_LENGTH = MAX_RESEND_NOW + 1
#: A message ends within this many passes (each pass that waits uses up a scripted answer).
MAX_PASSES = 40
_counter = itertools.count()

transport_st = st.fixed_dictionaries(
    {
        "address_types": st.one_of(
            st.just("*"), st.just([""]), st.lists(st.sampled_from(ADDRESS_TYPES), min_size=1, max_size=3, unique=True)
        ),
        "uids": st.lists(st.sampled_from([bytes(u).hex() for u in UIDS]), max_size=2, unique=True),
        "take": st.one_of(
            st.just("all"), st.just("none"), st.lists(st.sampled_from(LOCALS), min_size=1, max_size=3, unique=True)
        ),
        "fail": st.lists(st.sampled_from(LOCALS), max_size=2),
        # Most scripts say something (an empty one is the plain case); one in eight asks to be
        # resent at once until the spooler gives up and waits.
        "script": st.integers(0, 7).flatmap(
            lambda n: (
                st.just(["ok/resend_now"] * SCRIPT_LENGTH)
                if n == 0
                else st.lists(st.sampled_from(ANSWERS), min_size=0 if n == 1 else 1, max_size=SCRIPT_LENGTH)
            )
        ),
        "answer": st.sampled_from(LAST_ANSWERS),
    }
)
recipient_st = st.tuples(
    st.sampled_from([*ADDRESS_TYPES, "PAGER"]),
    st.sampled_from(LOCALS),
    st.one_of(st.none(), st.sampled_from(UIDS)),
)


def expected_routing(
    order: list[tuple[str, dict[str, Any]]], address_type: str, uid: MAPIUID | None
) -> dict[str, tuple[int, int]]:
    """The transports a recipient is offered to, first chance first, each with its step: (0, its
    place in transport order) for a UID registration, (1, its place) for an address type (README:
    every UID registration in transport order, then every address-type registration)."""
    by_uid = {name: (0, n) for n, (name, o) in enumerate(order) if uid is not None and bytes(uid).hex() in o["uids"]}
    by_type = {
        name: (1, n)
        for n, (name, o) in enumerate(order)
        if name not in by_uid and (o["address_types"] == "*" or address_type in o["address_types"])
    }
    return by_uid | by_type


@dataclass
class Call:
    """One submit_message call: who was called, for which pending rows, what it answered and took."""

    transport: str
    pending: list[int]
    answer: str
    end: str
    marked: dict[int, bool] = field(default_factory=dict)

    def passes_on(self, row: int) -> bool:
        """The recipient goes on to its next transport (rather than waiting or being taken)."""
        if row in self.marked:
            return False
        return self.answer in ("not_me", "cancel", "raise") or (self.answer == "ok" and self.end == "none")

    def waits(self, row: int, run: int) -> bool:
        """The recipient waits for a later pass after this call (`run`: this transport's calls in a row)."""
        if row in self.marked:
            return False
        if self.answer.startswith(WAITS):
            return True
        if self.answer == "ok" and self.end in ("resend_later", "dont_resend"):
            return True
        return self.answer == "ok" and self.end == "resend_now" and run == MAX_RESEND_NOW + 1


def calls_of(
    entries: list[tuple[str, str, Any]], options: dict[str, dict[str, Any]], made: dict[str, int]
) -> list[Call]:
    """The submit_message calls among CALLS entries, with the answer each one's script gave."""
    calls: list[Call] = []
    for name, kind, detail in entries:
        if kind == "submit_message":
            answer, end = scripted(options[name], made[name])
            made[name] += 1
            pending = [row for row, (_, responsibility) in detail.items() if not responsibility]
            calls.append(Call(name, pending, answer, end))
        elif kind == "marked":
            assert calls and calls[-1].transport == name
            calls[-1].marked = dict(detail)
    return calls


def check_pass(
    calls: list[Call],
    routing: dict[int, dict[str, tuple[int, int]]],
    before: dict[int, str],
    after: dict[int, tuple[str, str]],
    resume: dict[int, str | None] | None = None,
) -> None:
    """One pass (see the module docstring). `before`: states before the pass; `after`: (state,
    transport) after it; `resume`: the transport each recipient waited for before the pass, where its
    routing resumes (the transports before it were offered it in an earlier pass already)."""
    # The message as a whole: each call is one step of routing for all the recipients it is given,
    # and the steps come in order (the UID pass, then the address-type pass); only a resend-now
    # repeats one.
    steps = []
    for call in calls:
        at = {routing[row].get(call.transport) for row in call.pending}
        assert len(at) == 1 and None not in at, (call, "offered recipients at different steps", at)
        steps.append(at.pop())
    for (call, step), (following, next_step) in itertools.pairwise(zip(calls, steps, strict=True)):
        assert step < next_step or (step == next_step and call.end == "resend_now"), (call, step, following, next_step)

    for row, routed in routing.items():
        offers = list(routed)
        waited = (resume or {}).get(row)
        if waited in offers:
            offers = offers[offers.index(waited) :]
        mine = [c for c in calls if row in c.pending]
        if before[row] != "pending":
            assert mine == [], f"recipient {row} already has an outcome, yet was offered again: {mine}"
            continue
        # In routing order, each transport once, from the first (a resend-now repeats one at once).
        runs = [(name, len(list(group))) for name, group in itertools.groupby(c.transport for c in mine)]
        assert [name for name, _ in runs] == offers[: len(runs)], (row, [c.transport for c in mine], offers)
        position = 0
        for name, length in runs:
            run = mine[position : position + length]
            position += length
            assert length <= MAX_RESEND_NOW + 1, (row, name, length)
            if length > 1:
                event("a transport called again at once (resend now)")
            for n, call in enumerate(run[:-1], start=1):
                assert row not in call.marked and call.answer == "ok" and call.end == "resend_now", (row, n, call)
        last = mine[-1] if mine else None
        run_of_last = runs[-1][1] if runs else 0
        state, transport = after[row]
        for call, following in itertools.pairwise(mine):
            if call.transport != following.transport:
                assert call.passes_on(row), (row, "went on to the next transport after", call)
                event("a recipient went on to its next transport")
        if last is not None and row in last.marked:
            expected = "delivered" if last.marked[row] else "failed"
            assert (state, transport) == (expected, last.transport), (row, state, transport, last)
            event("a recipient was taken")
        elif last is not None and last.waits(row, run_of_last):
            assert state == "pending", (row, "should wait after", last, state)
            event(f"a recipient waited after {last.answer}/{last.end}")
        elif last is not None:
            # It passed it on: only when no transport was left, and then it gets its NDR now.
            assert last.passes_on(row), (row, "stopped after", last)
            assert len(runs) == len(offers), (row, "not offered to", offers[len(runs) :])
            assert (state, transport) == ("failed", ""), (row, state, transport)
            event("a recipient passed on by every transport got an NDR")
        else:
            # Never offered: nobody registers it (NDR), or its time in the queue ran out.
            assert not offers or state == "expired", (row, offers, state)
            assert (state, transport) in (("failed", ""), ("expired", "")), (row, state, transport)
            event(f"a recipient never offered: {state}")


def transport(
    types: str | list[str],
    uids: tuple[MAPIUID, ...] = (),
    take: str | list[str] = "all",
    script: list[str] | None = None,
) -> dict[str, Any]:
    """A transport for the explicit examples (answers ok past its script)."""
    return {
        "address_types": types,
        "uids": [bytes(u).hex() for u in uids],
        "take": take,
        "fail": [],
        "script": script or [],
        "answer": "ok",
    }


@pytest.mark.timeout(600)  # passing takes seconds; a failing example is shrunk for up to 5 minutes
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    transports=st.lists(transport_st, min_size=1, max_size=4),
    recipients=st.lists(recipient_st, min_size=1, max_size=6),
    permutation=st.permutations(range(4)),
)
# Besides the generated examples, three that must always run:
# the UID pass comes first, for one recipient and for the message (t1 registers ann's UID, t0
# her address type and bob's, and comes first in transport order);
@example(
    transports=[transport(["SMTP"], take="none"), transport([""], uids=(UIDS[0],))],
    recipients=[("SMTP", "ann", UIDS[0]), ("SMTP", "bob", None)],
    permutation=[0, 1, 2, 3],
)
# a transport takes ann and asks to be called again later for bob: ann is never offered again;
@example(
    transports=[transport(["SMTP"], take=["ann"], script=["ok/resend_later"])],
    recipients=[("SMTP", "ann", None), ("SMTP", "bob", None)],
    permutation=[0, 1, 2, 3],
)
# one transport takes ann while another says "wait" for bob: ann's outcome is kept, she is not offered again.
@example(
    transports=[transport(["SMTP"]), transport(["FAX"], script=["wait:30"])],
    recipients=[("SMTP", "ann", None), ("FAX", "bob", None)],
    permutation=[1, 0, 2, 3],
)
def test_every_recipient_ends_with_one_outcome_in_routing_order(
    transports: list[dict[str, Any]], recipients: list[tuple[str, str, MAPIUID | None]], permutation: list[int]
) -> None:
    CALLS.clear()
    clock = Clock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    services = [(f"t{n}", opts) for n, opts in enumerate(transports)]
    options = dict(services)
    names = [f"t{n}" for n in permutation if n < len(services)]  # the transport order
    order = [(name, options[name]) for name in names]
    with tempfile.TemporaryDirectory() as tmp:
        profile = make_profile(Path(tmp) / f"p{next(_counter)}", *services)
        if len(services) > 1:
            profile.set_transport_order(names)
            profile.save()
        with postroom.logon(profile, clock=clock) as s:
            draft = s.create_message("property")
            for adrtype, local, uid in recipients:
                address = f"{local}@x.test" if adrtype == "SMTP" else f"{local}-number"
                entry_id = make_entry_id(uid, b"private") if uid else None
                draft.add_recipient(f"{adrtype}:{address}", entry_id=entry_id)
            mid = draft.submit()
            rows = [r.row_id for r in s.recipient_states(mid)]
            routing = {
                row: expected_routing(order, adrtype, uid)
                for row, (adrtype, _, uid) in zip(rows, recipients, strict=True)
            }

            made = dict.fromkeys(options, 0)
            taken: dict[int, str] = {}
            before = {row: "pending" for row in rows}
            resume: dict[int, str | None] = {}
            for passes in range(1, MAX_PASSES + 1):
                start = len(CALLS)
                s.deliver()
                calls = calls_of(CALLS[start:], options, made)
                states = s.recipient_states(mid)
                after = {r.row_id: (r.state.value, r.transport) for r in states}
                check_pass(calls, routing, before, after, resume)
                resume = {r.row_id: r.waiting_for for r in states}
                if any(c.marked for c in calls) and any(state == "pending" for state, _ in after.values()):
                    event("a pass took some recipients and left others waiting")
                for call in calls:
                    for row in call.marked:
                        assert row not in taken, f"recipient {row} taken by {taken[row]}, then by {call.transport}"
                        taken[row] = call.transport
                before = {row: state for row, (state, _) in after.items()}
                queue = s.queue()
                if not queue:
                    event(f"passes: {passes if passes < 4 else '4 or more'}")
                    break
                (entry,) = queue
                assert entry.next_attempt is not None and entry.next_attempt > clock()
                clock.now = entry.next_attempt
            else:
                raise AssertionError(f"the message still waits after {MAX_PASSES} passes")

            final = s.recipient_states(mid)
            assert len(final) == len(recipients)
            assert all(r.state.final for r in final), final
            for r in final:
                assert r.transport == taken.get(r.row_id, ""), (r, taken)
