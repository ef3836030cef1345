"""Profiles, message services and the transport order rules (MsgServiceTransportOrder)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from postroom.mapi.codes import HResult, MAPIError
from postroom.profile import Profile, default_profile_dir

from support import recording


class PreferLast(recording.RecordingProvider):
    prefer_last = True


recording.register_transport_kind("recording-last", PreferLast)


def names(profile: Profile) -> list[str]:
    return [s.name for s in profile.transport_order()]


def make(tmp_path: Path) -> Profile:
    p = Profile.create(tmp_path / "p", with_defaults=False)
    p.add_service("recording-last", "gateway")
    p.add_service("recording", "smtp")
    p.add_service("recording", "fax")
    p.save()
    return p


def test_default_order_is_order_of_addition_with_prefer_last_at_the_end(tmp_path: Path) -> None:
    assert names(make(tmp_path)) == ["smtp", "fax", "gateway"]


def test_explicit_order_is_persisted_and_overrides_prefer_last(tmp_path: Path) -> None:
    p = make(tmp_path)
    p.set_transport_order(["gateway", "fax", "smtp"])
    p.save()
    again = Profile.load(p.directory)
    assert names(again) == ["gateway", "fax", "smtp"]
    again.reset_transport_order()
    assert names(again) == ["smtp", "fax", "gateway"]


def test_order_accepts_provider_uids(tmp_path: Path) -> None:
    p = make(tmp_path)
    uids = [bytes(s.provider_uid) for s in reversed(p.services)]
    p.set_transport_order(uids)
    assert names(p) == ["fax", "smtp", "gateway"]


@pytest.mark.parametrize(
    ("order", "code", "named"),
    [
        (["smtp", "fax"], HResult.MAPI_E_BUSY, "gateway"),  # missing one: count mismatch
        (["smtp", "fax", "gateway", "smtp"], HResult.MAPI_E_BUSY, "smtp"),  # repeated
        (["smtp", "fax", "telex"], HResult.MAPI_E_NOT_FOUND, "telex"),  # unknown
    ],
)
def test_order_must_list_every_transport_exactly_once(
    tmp_path: Path, order: list[str], code: HResult, named: str
) -> None:
    p = make(tmp_path)
    with pytest.raises(MAPIError) as err:
        p.set_transport_order(order)
    assert err.value.code == code
    assert named in str(err.value) and code.name in str(err.value)
    assert names(p) == ["smtp", "fax", "gateway"]  # unchanged


def test_unknown_uid_is_not_found(tmp_path: Path) -> None:
    p = make(tmp_path)
    with pytest.raises(MAPIError) as err:
        p.set_transport_order([b"\x01" * 16, b"\x02" * 16, b"\x03" * 16])
    assert err.value.code == HResult.MAPI_E_NOT_FOUND


def test_provider_uids_are_stable_and_files_private(tmp_path: Path) -> None:
    p = make(tmp_path)
    before = {s.name: s.provider_uid for s in p.services}
    again = Profile.load(p.directory)
    assert {s.name: s.provider_uid for s in again.services} == before
    assert len(set(before.values())) == 3
    assert stat.S_IMODE(p.path.stat().st_mode) == 0o600


def test_new_service_joins_an_explicit_order_at_the_end(tmp_path: Path) -> None:
    p = make(tmp_path)
    p.set_transport_order(["gateway", "fax", "smtp"])
    p.add_service("recording", "pager")
    assert names(p) == ["gateway", "fax", "smtp", "pager"]
    p.remove_service("fax")
    assert names(p) == ["gateway", "smtp", "pager"]


def test_service_errors(tmp_path: Path) -> None:
    p = make(tmp_path)
    with pytest.raises(MAPIError) as err:
        p.add_service("telex", "t")
    assert err.value.code == HResult.MAPI_E_NOT_FOUND and "telex" in str(err.value)
    with pytest.raises(MAPIError):
        p.add_service("recording", "smtp")  # duplicate name
    with pytest.raises(MAPIError):
        p.add_service("recording", "bad name!")
    with pytest.raises(MAPIError) as err:
        p.remove_service("nope")
    assert err.value.code == HResult.MAPI_E_NOT_FOUND


def test_default_profile_is_created_on_first_use_with_a_maildir_transport(tmp_path: Path) -> None:
    p = Profile.open_or_create(None)
    assert p.directory == default_profile_dir() == tmp_path / "xdg" / "postroom" / "profiles" / "default"
    assert [(s.kind, s.name, s.options["domains"]) for s in p.services] == [("maildir", "local", ["localhost"])]
    with pytest.raises(MAPIError) as err:
        Profile.open_or_create(tmp_path / "nowhere")
    assert err.value.code == HResult.MAPI_E_NOT_FOUND


def test_corrupt_profile_file_is_a_clear_error(tmp_path: Path) -> None:
    d = tmp_path / "broken"
    d.mkdir()
    (d / "profile.toml").write_text("this is = = not toml")
    with pytest.raises(MAPIError) as err:
        Profile.load(d)
    assert err.value.code == HResult.MAPI_E_CORRUPT_DATA
