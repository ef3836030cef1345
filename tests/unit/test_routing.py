"""Routing is a pure function: UID registrations first, then address types, each in transport order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import postroom
from postroom.mapi import tags as T
from postroom.mapi.entryid import MAPIUID, encode_one_off, make_entry_id
from postroom.mapi.flags import SpoolerNotifyFlags
from postroom.mapi.message import Recipient
from postroom.spooler import routing
from postroom.spooler.routing import ADDRTYPE_PASS, UID_PASS, Router, route
from postroom.transports.spi import Registration

from support.profiles import make_profile

UID_A = MAPIUID(bytes(range(16)))
UID_B = MAPIUID(bytes(range(16, 32)))


def names(offers: tuple) -> list[str]:  # type: ignore[type-arg]
    return [o.transport for o in offers]


def test_address_type_in_transport_order() -> None:
    router = Router([("one", Registration.of("SMTP")), ("two", Registration.of("SMTP", "FAX"))])
    assert names(router.offers("SMTP", None)) == ["one", "two"]
    assert names(router.offers("FAX", None)) == ["two"]
    assert names(router.offers("X400", None)) == []


def test_address_types_compare_case_insensitively() -> None:
    router = Router([("one", Registration.of("smtp"))])
    assert names(router.offers("Smtp", None)) == ["one"]


def test_uid_pass_comes_before_address_type_pass_whatever_the_order() -> None:
    # "late" is last in transport order but registered the recipient's UID: it gets the first chance.
    router = Router([("early", Registration.of("SMTP")), ("late", Registration.none(uids=[UID_A]))])
    offers = router.offers("SMTP", UID_A)
    assert names(offers) == ["late", "early"]
    assert [o.pass_kind for o in offers] == [UID_PASS, ADDRTYPE_PASS]
    assert offers[0].matched_by == "UID"


def test_wildcard_matches_every_type_at_its_place_in_the_order() -> None:
    router = Router([("any", Registration.any()), ("smtp", Registration.of("SMTP")), ("fax", Registration.of("FAX"))])
    assert names(router.offers("SMTP", None)) == ["any", "smtp"]
    assert names(router.offers("WHATEVER", None)) == ["any"]


def test_empty_string_registration_takes_nothing_by_address_type() -> None:
    router = Router([("pre", Registration.none()), ("smtp", Registration.of("SMTP"))])
    assert names(router.offers("SMTP", None)) == ["smtp"]
    assert names(router.offers("", None)) == []


def test_transport_matching_by_uid_and_type_is_offered_once() -> None:
    router = Router([("both", Registration.of("SMTP", uids=[UID_A])), ("other", Registration.of("SMTP"))])
    assert names(router.offers("SMTP", UID_A)) == ["both", "other"]


def test_several_transports_share_a_uid_in_order() -> None:
    router = Router([("x", Registration.of("FAX", uids=[UID_B])), ("y", Registration.none(uids=[UID_B]))])
    assert names(router.offers("SMTP", UID_B)) == ["x", "y"]


def test_route_function_agrees_with_router() -> None:
    transports = [("a", Registration.of("SMTP")), ("b", Registration.any())]
    assert [names(o) for o in route([("SMTP", None), ("FAX", None)], transports)] == [["a", "b"], ["b"]]


def test_steps_are_a_common_order_for_all_recipients() -> None:
    router = Router([("a", Registration.of("SMTP", uids=[UID_A])), ("b", Registration.any(uids=[UID_B]))])
    for adrtype, uid in [("SMTP", UID_A), ("SMTP", UID_B), ("FAX", None), ("SMTP", None)]:
        steps = [o.step for o in router.offers(adrtype, uid)]
        assert steps == sorted(steps)


def test_offers_sort_in_routing_order_the_uid_pass_first() -> None:
    router = Router([("early", Registration.of("SMTP")), ("late", Registration.none(uids=[UID_A]))])
    offers = router.offers("SMTP", UID_A)
    assert sorted(reversed(offers)) == list(offers)
    assert [o.step for o in offers] == [(0, 1), (1, 0)]


def test_a_recipient_is_routed_by_the_uid_in_its_entry_id_however_the_uid_is_spelled() -> None:
    # The router keeps answers by the (address type, UID) as asked: every spelling of one question
    # (case, MAPIUID or bytes or bytearray, no UID as None or b"") gets the same answer.
    router = Router([("smtp", Registration.of("SMTP")), ("book", Registration.none(uids=[UID_A]))])
    by_entry_id = Recipient(props={T.PR_ADDRTYPE: "smtp", T.PR_ENTRYID: make_entry_id(UID_A, b"alice")})
    one_off = Recipient(props={T.PR_ADDRTYPE: "SMTP", T.PR_ENTRYID: encode_one_off("Bob", "SMTP", "bob@x.test")})
    assert by_entry_id.provider_uid == UID_A and isinstance(by_entry_id.provider_uid, MAPIUID)
    for _ in range(2):  # the second round answers from what the first one computed
        assert names(router.offers(by_entry_id.address_type, by_entry_id.provider_uid)) == ["book", "smtp"]
        for uid in (UID_A, bytes(UID_A), bytearray(UID_A), memoryview(bytes(UID_A))):
            assert names(router.offers("Smtp", uid)) == ["book", "smtp"]
        assert names(router.offers(one_off.address_type, one_off.provider_uid)) == ["smtp"]
        for no_uid in (None, b""):
            assert names(router.offers("smtp", no_uid)) == ["smtp"]
    assert Recipient(props={T.PR_ADDRTYPE: "SMTP"}).provider_uid is None
    assert Recipient(props={T.PR_ENTRYID: b"\0" * 19}).provider_uid is None


def test_a_router_full_of_answers_drops_them_and_still_routes_by_the_rule(monkeypatch: Any) -> None:
    monkeypatch.setattr(routing, "ANSWERS_KEPT", 8)
    router = Router([("smtp", Registration.of("SMTP")), ("book", Registration.none(uids=[UID_A]))])
    for n in range(50):
        assert names(router.offers("SMTP", n.to_bytes(16, "little"))) == ["smtp"]
        assert names(router.offers("SMTP", UID_A)) == ["book", "smtp"]
    assert sum(len(by_type) for by_type in router._answers.values()) <= 8


def test_routing_answers_follow_a_change_of_transport_order_and_of_registrations(tmp_path: Path) -> None:
    profile = make_profile(
        tmp_path / "p", ("first", {"address_types": ["SMTP"]}), ("second", {"address_types": ["SMTP", "FAX"]})
    )
    with postroom.logon(profile) as s:

        def offered(address: str) -> list[str]:
            (answer,) = s.route([address])
            return [o.transport for o in answer.offers]

        assert offered("SMTP:bob@x.test") == ["first", "second"]
        assert offered("FAX:+1555") == ["second"]
        s.set_transport_order(["second", "first"])
        assert offered("SMTP:bob@x.test") == ["second", "first"]
        # A transport says its registration changed (NOTIFY_CONFIG_CHANGE): AddressTypes is asked again.
        t = s.engine.transports.by_name("first")
        t.service.options["address_types"] = ["FAX"]
        assert t.provider is not None
        t.provider.context.support.spooler_notify(SpoolerNotifyFlags.CONFIG_CHANGE)
        assert offered("SMTP:bob@x.test") == ["second"]
        assert offered("FAX:+1555") == ["second", "first"]
