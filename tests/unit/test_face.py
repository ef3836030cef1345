"""What the face offers that the command line used to keep to itself: Send/Receive group editing, the
daemon's status and pid file, which status table to trust; and the words and errors it speaks in
(the mode, history kinds, MAPIError subclasses)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import postroom
from postroom import (
    DEFAULT_GROUP,
    EventKind,
    GroupChange,
    HResult,
    MAPIError,
    Mode,
    NotFound,
    ProviderFailed,
    Session,
    StatusSource,
    StoreDiskTrouble,
    StoreUnavailable,
    StoreUnreachable,
)
from postroom.addressing import FORBIDDEN_IN_EMAIL_ADDRESS
from postroom.engine.daemon import open_when_usable
from postroom.profile import Profile
from postroom.transports.smtp import envelope_address_problem

from support.profiles import make_profile


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}), ("fax", {"address_types": ["FAX"]}))
    with postroom.logon(profile) as s:
        yield s


# --- Send/Receive groups ---------------------------------------------------------------------------


def test_a_new_group_gets_the_transports_it_names_and_the_default_settings(session: Session) -> None:
    group, created = session.edit_group("Faxes", transports=["fax"], offline=GroupChange(every_minutes=30))
    assert created and group.transports == ["fax"] and group.members(session.profile) == ["fax"]
    assert (group.online.every_minutes, group.offline.every_minutes) == (5.0, 30.0)
    assert [g.name for g in session.groups()] == [DEFAULT_GROUP, "Faxes"]
    assert Profile.load(session.profile.directory).groups[0]["name"] == "Faxes"  # saved


def test_changing_a_group_keeps_what_is_not_given_and_all_means_every_transport(session: Session) -> None:
    session.edit_group("Faxes", transports=["fax"], online=GroupChange(send=False))
    group, created = session.edit_group("faxes", transports=["all"], offline=GroupChange(include=False))
    assert not created and group.name == "Faxes" and group.transports is None
    assert (group.online.send, group.offline.include, group.offline.send) == (False, False, True)
    assert session.group("FAXES").members(session.profile) == ["smtp", "fax"]


def test_a_group_naming_an_unknown_transport_is_refused_and_nothing_is_saved(session: Session) -> None:
    with pytest.raises(NotFound, match="telex"):
        session.edit_group("Telex", transports=["telex"])
    assert [g.name for g in session.groups()] == [DEFAULT_GROUP]


def test_all_accounts_cannot_be_removed_but_another_group_can(session: Session) -> None:
    session.edit_group("Faxes", transports=["fax"])
    with pytest.raises(MAPIError) as refused:
        session.remove_group(DEFAULT_GROUP)
    assert refused.value.code == HResult.MAPI_E_NO_ACCESS
    assert session.remove_group("faxes").name == "Faxes"
    assert [g.name for g in session.groups()] == [DEFAULT_GROUP]
    with pytest.raises(NotFound):
        session.group("Faxes")


# --- the daemon and the status table ------------------------------------------------------------------


def test_without_a_daemon_the_status_report_shows_this_sessions_own_rows(session: Session) -> None:
    report = session.status_report()
    assert report.source is StatusSource.HERE and report.daemon_pid is None and report.published is None
    assert [r.display_name for r in report.rows] == ["MAPI subsystem", "MAPI spooler", "smtp", "fax"]
    assert report.mode is Mode.ONLINE


def test_the_daemons_pid_file_names_this_process_while_it_is_held(session: Session) -> None:
    assert session.daemon_pid() is None
    with session.daemon_pid_file() as held:
        assert held.note is None
        assert (session.profile.directory / "spooler.pid").read_text().strip() == str(os.getpid())
    assert session.daemon_pid() is None and not (session.profile.directory / "spooler.pid").exists()


def test_a_daemon_start_stopped_while_the_disk_is_full_gives_up_without_a_session() -> None:
    def full() -> Session:
        raise MAPIError(HResult.MAPI_E_NOT_ENOUGH_DISK, "no space left on the device")

    stop = asyncio.Event()
    stop.set()
    assert open_when_usable(full, stop) is None


# --- words and errors ----------------------------------------------------------------------------------


def test_the_mode_is_one_of_two_words_and_anything_else_is_an_invalid_parameter(session: Session) -> None:
    session.set_mode("offline")
    assert session.mode is Mode.OFFLINE and session.mode == "offline"
    with pytest.raises(MAPIError) as refused:
        session.set_mode("sideways")
    assert refused.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert Profile.load(session.profile.directory).mode is Mode.OFFLINE


def test_history_kinds_are_words_and_a_kind_this_postroom_does_not_know_reads_back_as_text() -> None:
    assert EventKind.read("report") is EventKind.REPORT and EventKind.REPORT == "report"
    assert EventKind.read("written-by-a-newer-postroom") == "written-by-a-newer-postroom"


def test_a_mapi_error_is_made_as_the_subclass_of_its_code_and_keeps_the_code() -> None:
    made = {
        HResult.MAPI_E_NOT_FOUND: NotFound,
        HResult.MAPI_E_FAILONEPROVIDER: ProviderFailed,
        HResult.MAPI_E_NETWORK_ERROR: StoreUnreachable,
        HResult.MAPI_E_NOT_ENOUGH_DISK: StoreDiskTrouble,
        HResult.MAPI_E_DISK_ERROR: StoreDiskTrouble,
        HResult.MAPI_E_BUSY: MAPIError,
    }
    for code, cls in made.items():
        error = MAPIError(code, "why")
        assert type(error) is cls and error.code is code and str(error) == f"{code.name}: why"
    assert isinstance(MAPIError(HResult.MAPI_E_NETWORK_ERROR), StoreUnavailable)
    assert isinstance(MAPIError(HResult.MAPI_E_DISK_ERROR), StoreUnavailable)


def test_what_a_header_refuses_in_an_address_the_smtp_wire_refuses_too() -> None:
    for char in [" ", "\t", "\x01", "\x7f", "\x85", "\u2028", "\u2029", "\xa0"]:
        address = f"a{char}b@example.test"
        assert FORBIDDEN_IN_EMAIL_ADDRESS.search(address), repr(char)
        assert envelope_address_problem(address) is not None, repr(char)
    assert envelope_address_problem("ab@example.test") is None


def test_check_policy_gives_numbers_of_the_right_type_and_refuses_unknown_keys() -> None:
    assert postroom.check_policy({"retry_min_seconds": "60"}) == {"retry_min_seconds": 60.0}
    with pytest.raises(MAPIError, match="unknown policy setting 'retries'"):
        postroom.check_policy({"retries": 3})
