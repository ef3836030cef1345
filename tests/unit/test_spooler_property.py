"""Property: for any transports, registrations, order and recipients, every recipient ends with
exactly one outcome and is never marked handled by two transports."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import postroom
from postroom.mapi.entryid import MAPIUID, make_entry_id

from support.profiles import make_profile
from support.recording import CALLS

ADDRESS_TYPES = ["SMTP", "FAX", "X400"]
UIDS = [MAPIUID(bytes([n]) * 16) for n in range(1, 4)]
LOCALS = ["ann", "bob", "cy", "dee"]
_counter = itertools.count()

transport_st = st.fixed_dictionaries(
    {
        "address_types": st.one_of(
            st.just("*"), st.just([""]), st.lists(st.sampled_from(ADDRESS_TYPES), min_size=1, max_size=3, unique=True)
        ),
        "uids": st.lists(st.sampled_from([bytes(u).hex() for u in UIDS]), max_size=2, unique=True),
        "take": st.one_of(st.just("all"), st.just("none"), st.lists(st.sampled_from(LOCALS), max_size=3)),
        "fail": st.lists(st.sampled_from(LOCALS), max_size=2),
        "answer": st.sampled_from(["ok", "ok", "ok", "not_me", "cancel", "raise"]),
    }
)
recipient_st = st.tuples(
    st.sampled_from([*ADDRESS_TYPES, "PAGER"]),
    st.sampled_from(LOCALS),
    st.one_of(st.none(), st.sampled_from(UIDS)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    transports=st.lists(transport_st, min_size=0, max_size=4),
    recipients=st.lists(recipient_st, min_size=1, max_size=6),
    shuffle=st.randoms(use_true_random=False),
)
def test_every_recipient_ends_with_exactly_one_outcome(
    transports: list[dict[str, Any]], recipients: list[tuple[str, str, MAPIUID | None]], shuffle: Any
) -> None:
    CALLS.clear()
    with tempfile.TemporaryDirectory() as tmp:
        services = [(f"t{n}", opts) for n, opts in enumerate(transports)]
        profile = make_profile(Path(tmp) / f"p{next(_counter)}", *services)
        if len(services) > 1:
            names = [name for name, _ in services]
            shuffle.shuffle(names)
            profile.set_transport_order(names)
            profile.save()
        with postroom.logon(profile) as s:
            draft = s.create_message("property")
            for adrtype, local, uid in recipients:
                address = f"{local}@x.test" if adrtype == "SMTP" else f"{local}-number"
                entry_id = make_entry_id(uid, b"private") if uid else None
                draft.add_recipient(f"{adrtype}:{address}", entry_id=entry_id)
            mid = draft.submit()
            s.deliver()

            final = s.recipient_states(mid)
            assert len(final) == len(recipients)
            assert all(r.state.final for r in final), final  # exactly one outcome each: no answer here waits
            assert s.queue() == []

            # Each recipient is marked by at most one transport, and the recorded transport is the one that marked it.
            markers: dict[int, list[str]] = {}
            for name, kind, detail in CALLS:
                if kind == "marked":
                    for row in detail:
                        markers.setdefault(row, []).append(name)
            for row in final:
                assert len(markers.get(row.row_id, [])) <= 1
                if markers.get(row.row_id):
                    assert row.transport == markers[row.row_id][0]
                else:
                    assert row.state.value == "failed" and row.transport == ""

            # A transport only ever saw its own recipients as pending, and each at most once.
            offered: dict[tuple[str, int], int] = {}
            for name, kind, detail in CALLS:
                if kind == "submit_message":
                    for row, (_, responsibility) in detail.items():
                        if not responsibility:
                            offered[(name, row)] = offered.get((name, row), 0) + 1
            assert all(n == 1 for n in offered.values())
