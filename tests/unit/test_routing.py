"""Routing is a pure function: UID registrations first, then address types, each in transport order."""

from __future__ import annotations

from postroom.mapi.entryid import MAPIUID
from postroom.spooler.routing import ADDRTYPE_PASS, UID_PASS, Router, route
from postroom.transports.spi import Registration

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
