"""The spooler's outbound algorithm, reports and the message's fate, on a real SQLite store."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import postroom
from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.entryid import MAPIUID, make_entry_id
from postroom.mapi.flags import AttachMethod, MessageFlags, NDRDiag, NDRReason, StatusCode
from postroom.transports.spi import OutboundMessage

from support.profiles import make_profile
from support.recording import LOGON_FAILS, ON_SUBMIT

Calls = list[tuple[str, str, Any]]


def submissions(calls: Calls, name: str) -> list[dict[int, tuple[str, bool]]]:
    return [c[2] for c in calls if c[0] == name and c[1] == "submit_message"]


def states(session: postroom.Session, mid: int) -> dict[int, tuple[str, str | None]]:
    return {s.row_id: (s.state.value, s.transport) for s in session.recipient_states(mid)}


def test_each_transport_sees_only_its_recipients_pending(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(
        tmp_path / "p",
        ("smtp", {"address_types": ["SMTP"]}),
        ("fax", {"address_types": ["FAX"]}),
    )
    with postroom.logon(profile) as s:
        mid = s.create_message("hi").to("a@x.test", "FAX:+1555", "b@x.test").submit()
        s.deliver()
        assert submissions(calls, "smtp") == [{0: ("a@x.test", False), 1: ("+1555", True), 2: ("b@x.test", False)}]
        assert submissions(calls, "fax") == [{0: ("a@x.test", True), 1: ("+1555", False), 2: ("b@x.test", True)}]
        assert states(s, mid) == {0: ("delivered", "smtp"), 1: ("delivered", "fax"), 2: ("delivered", "smtp")}


def test_not_mine_goes_to_the_next_matching_transport(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(
        tmp_path / "p",
        ("first", {"address_types": ["SMTP"], "take": ["one"]}),
        ("second", {"address_types": ["SMTP"]}),
    )
    with postroom.logon(profile) as s:
        mid = s.create_message("hi").to("one@x.test", "two@x.test").submit()
        s.deliver()
        assert submissions(calls, "second") == [{0: ("one@x.test", True), 1: ("two@x.test", False)}]
        assert states(s, mid) == {0: ("delivered", "first"), 1: ("delivered", "second")}


def test_not_me_answer_falls_through(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(
        tmp_path / "p",
        ("picky", {"address_types": ["SMTP"], "answer": "not_me"}),
        ("backup", {"address_types": "*"}),
    )
    with postroom.logon(profile) as s:
        mid = s.create_message("hi").to("a@x.test").submit()
        s.deliver()
        assert states(s, mid) == {0: ("delivered", "backup")}
        assert [c[1] for c in calls if c[0] == "picky" and "message" in c[1]] == [
            "submit_message"
        ]  # no end_message after NOT_ME


def test_uid_registration_wins_over_earlier_address_type(tmp_path: Path, calls: Calls) -> None:
    uid = MAPIUID.new()
    profile = make_profile(
        tmp_path / "p",
        ("general", {"address_types": ["SMTP"]}),
        ("coupled", {"address_types": [""], "uids": [bytes(uid).hex()]}),
    )
    with postroom.logon(profile) as s:
        draft = s.create_message("hi")
        draft.add_recipient("a@x.test", entry_id=make_entry_id(uid, b"private"))
        draft.add_recipient("b@x.test")
        mid = draft.submit()
        s.deliver()
        assert states(s, mid) == {0: ("delivered", "coupled"), 1: ("delivered", "general")}


def test_leftovers_get_an_ndr_with_the_original_attached(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"], "fail": ["bad"]}))
    with postroom.logon(profile) as s:
        draft = s.create_message("Quarterly figures", "see attachment").to("good@x.test", "bad@x.test", "X400:c=gb")
        draft.attach_bytes("figures.csv", b"a,b\n1,2\n")
        mid = draft.submit()
        summary = s.deliver()
        assert (summary.delivered, summary.failed) == (1, 2)
        inbox = s.list_messages("Inbox")
        assert [m.message_class for m in inbox] == ["REPORT.IPM.Note.NDR"]
        ndr = s.open_message(inbox[0].id)
        assert ndr[T.PR_ORIGINAL_SUBJECT] == "Quarterly figures"
        assert ndr[T.PR_ORIG_MESSAGE_CLASS] == "IPM.Note"
        rows = {r.email_address: r for r in ndr.recipients}
        assert set(rows) == {"bad@x.test", "c=gb"}
        bad, x400 = rows["bad@x.test"], rows["c=gb"]
        assert bad[T.PR_NDR_REASON_CODE] == NDRReason.TRANSFER_FAILED
        assert bad[T.PR_REPORT_TEXT] == "550 5.1.1 no such user"
        assert bad[T.PR_NDR_STATUS_CODE] == 550
        assert x400[T.PR_NDR_REASON_CODE] == NDRReason.TRANSFER_IMPOSSIBLE
        assert x400[T.PR_NDR_DIAG_CODE] == NDRDiag.NO_DIAGNOSTIC
        assert "X400" in x400[T.PR_REPORT_TEXT]
        for row in ndr.recipients:
            assert T.PR_REPORT_TIME in row and T.PR_SEARCH_KEY in row and T.PR_DELIVER_TIME not in row
        (embedded,) = ndr.attachments
        assert embedded.method == AttachMethod.EMBEDDED_MSG
        assert embedded.embedded is not None
        original = embedded.embedded
        assert original.subject == "Quarterly figures"
        assert len(original.recipients) == 3
        assert all(T.PR_RESPONSIBILITY not in r for r in original.recipients)
        assert original.attachments[0].read_all() == b"a,b\n1,2\n"
        # The sent message itself went to Sent Items.
        assert s.engine.store.message_folder(mid) == s.sent_items.id


def test_no_ndr_when_the_originator_asked_for_none(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))
    with postroom.logon(profile) as s:
        draft = s.create_message("quiet").to("X400:c=gb")
        draft.set(T.PR_ORIGINATOR_NON_DELIVERY_REPORT_REQUESTED, False)
        mid = draft.submit()
        s.deliver()
        assert s.list_messages("Inbox") == []
        assert states(s, mid) == {0: ("failed", "")}
        assert s.queue() == []


def test_delivery_report_when_requested(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))
    with postroom.logon(profile) as s:
        draft = s.create_message("please confirm").to("a@x.test")
        draft.set(T.PR_ORIGINATOR_DELIVERY_REPORT_REQUESTED, True)
        draft.submit()
        s.deliver()
        (dr_summary,) = s.list_messages("Inbox")
        assert dr_summary.message_class == "REPORT.IPM.Note.DR"
        dr = s.open_message(dr_summary.id)
        (row,) = dr.recipients
        assert row.email_address == "a@x.test" and T.PR_DELIVER_TIME in row and T.PR_NDR_REASON_CODE not in row
        assert dr.attachments == []


def test_no_delivery_report_unless_requested(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))
    with postroom.logon(profile) as s:
        s.create_message("x").to("a@x.test").submit()
        s.deliver()
        assert s.list_messages("Inbox") == []


def test_report_goes_to_the_folder_named_by_pr_report_entryid(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))
    with postroom.logon(profile) as s:
        reports = s.create_folder("Reports")
        draft = s.create_message("x").to("FAX:1")
        draft.set(T.PR_REPORT_ENTRYID, reports.entry_id)
        draft.submit()
        s.deliver()
        assert [m.message_class for m in s.list_messages("Reports")] == ["REPORT.IPM.Note.NDR"]
        assert s.list_messages("Inbox") == []


@pytest.mark.parametrize(
    ("sentmail", "delete", "fate"),
    [(False, False, "outbox"), (True, False, "sentmail"), (False, True, "deleted"), (True, True, "deleted")],
)
def test_fate_after_sending(tmp_path: Path, calls: Calls, sentmail: bool, delete: bool, fate: str) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))
    with postroom.logon(profile) as s:
        draft = s.create_message("x").to("a@x.test")
        if not sentmail:
            del draft.data.props[T.PR_SENTMAIL_ENTRYID]
        if delete:
            draft.set(T.PR_DELETE_AFTER_SUBMIT, True)
        mid = draft.submit()
        s.deliver()
        if fate == "deleted":
            with pytest.raises(MAPIError) as err:
                s.open_message(mid)
            assert err.value.code == HResult.MAPI_E_NOT_FOUND
        else:
            folder = s.sent_items if fate == "sentmail" else s.outbox
            assert s.engine.store.message_folder(mid) == folder.id
            flags = s.open_message(mid)[T.PR_MESSAGE_FLAGS]
            assert not flags & (MessageFlags.SUBMIT | MessageFlags.UNSENT)
        assert s.queue() == []


def test_submit_rules(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))
    with postroom.logon(profile) as s:
        empty = s.create_message("nobody").save()
        with pytest.raises(MAPIError) as err:
            s.submit(empty)
        assert err.value.code == HResult.MAPI_E_NO_RECIPIENTS
        mid = s.create_message("x").to("a@x.test").submit()
        data = s.open_message(mid)
        assert data[T.PR_MESSAGE_FLAGS] & MessageFlags.SUBMIT
        assert all(r.responsibility is False for r in data.recipients)
        assert T.PR_CLIENT_SUBMIT_TIME in data and T.PR_INTERNET_MESSAGE_ID in data
        with pytest.raises(MAPIError) as err:
            s.engine.store.set_props(mid, {T.PR_SUBJECT: "changed"})
        assert err.value.code == HResult.MAPI_E_SUBMITTED


def test_abort_submit_answers(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))
    with postroom.logon(profile) as s:
        removed = s.create_message("undo me").to("a@x.test").submit()
        s.abort_submit(removed)  # removed
        assert s.queue() == [] and s.engine.store.message_folder(removed) == s.outbox.id
        assert not s.open_message(removed)[T.PR_MESSAGE_FLAGS] & MessageFlags.SUBMIT

        locked = s.create_message("in flight").to("a@x.test").submit()
        assert s.engine.store.claim("another-spooler", s.clock(), 60) == [locked]
        with pytest.raises(MAPIError) as err:
            s.abort_submit(locked)
        assert err.value.code == HResult.MAPI_E_UNABLE_TO_ABORT
        assert s.open_message(locked)[T.PR_SUBMIT_FLAGS] & 1  # SUBMITFLAG_LOCKED shown while held
        s.engine.store.release(locked, "another-spooler", s.clock(), None, None)

        s.deliver()
        with pytest.raises(MAPIError) as err:
            s.abort_submit(locked)
        assert err.value.code == HResult.MAPI_E_NOT_IN_QUEUE


def test_wait_holds_only_that_transports_recipients(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(
        tmp_path / "p",
        ("smtp", {"address_types": ["SMTP"], "answer": "wait:120"}),
        ("fax", {"address_types": ["FAX"]}),
    )
    with postroom.logon(profile) as s:
        first = s.create_message("mixed").to("a@x.test", "FAX:1").submit()
        second = s.create_message("fax only").to("FAX:2").submit()
        s.deliver()
        assert states(s, first) == {0: ("pending", None), 1: ("delivered", "fax")}
        assert states(s, second) == {0: ("delivered", "fax")}  # not blocked behind the waiting message
        (entry,) = s.queue()
        assert entry.id == first and entry.pending == 1 and not entry.locked
        assert entry.next_attempt is not None and 110 < (entry.next_attempt - s.clock()).total_seconds() <= 120
        assert "MAPI_E_WAIT" in (entry.last_error or "")
        # Not due yet: another pass does not call the transport again.
        before = len(submissions(calls, "smtp"))
        s.deliver()
        assert len(submissions(calls, "smtp")) == before
        assert s.engine.store.message_folder(first) == s.outbox.id


def test_busy_and_network_error_wait(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(
        tmp_path / "p",
        ("busy", {"address_types": ["SMTP"], "answer": "busy"}),
        ("net", {"address_types": ["FAX"], "answer": "network:300"}),
    )
    with postroom.logon(profile) as s:
        mid = s.create_message("x").to("a@x.test", "FAX:1").submit()
        s.deliver()
        assert states(s, mid) == {0: ("pending", None), 1: ("pending", None)}
        (entry,) = s.queue()
        assert "MAPI_E_BUSY" in (entry.last_error or "") and "MAPI_E_NETWORK_ERROR" in (entry.last_error or "")
        status = {row.display_name: row for row in s.status()}
        assert status["net"].status_code & StatusCode.FAILURE
        assert [c[1] for c in calls if c[0] == "busy" and "message" in c[1]] == ["submit_message"]  # no end_message


def test_a_crashing_transport_fails_for_itself_alone(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(
        tmp_path / "p",
        ("buggy", {"address_types": ["SMTP"], "answer": "raise"}),
        ("fax", {"address_types": ["FAX"]}),
    )
    with postroom.logon(profile) as s:
        poison = s.create_message("poison").to("a@x.test").submit()
        fine = s.create_message("fine").to("FAX:1").submit()
        s.deliver()
        assert states(s, poison) == {0: ("failed", "")}
        assert states(s, fine) == {0: ("delivered", "fax")}
        ndr = s.open_message(s.list_messages("Inbox")[0].id)
        assert "RuntimeError: transport plug-in bug" in ndr.recipients[0][T.PR_REPORT_TEXT]
        assert any(e.kind == "transport-error" for e in s.events(poison))


def test_resend_later_keeps_the_recipients_for_that_transport(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"], "take": "none", "end": "resend_later"}))
    with postroom.logon(profile) as s:
        mid = s.create_message("x").to("a@x.test").submit()
        s.deliver()
        assert states(s, mid) == {0: ("pending", None)}
        assert s.list_messages("Inbox") == []  # no NDR: a resend is not a failure


def test_failed_logon_disables_the_service_and_its_address_types(tmp_path: Path, calls: Calls) -> None:
    LOGON_FAILS["broken"] = MAPIError(HResult.MAPI_E_LOGON_FAILED, "bad credentials")
    LOGON_FAILS["skipped"] = MAPIError(HResult.MAPI_E_FAILONEPROVIDER, "not today")
    profile = make_profile(
        tmp_path / "p",
        ("broken", {"address_types": ["X400"]}),
        ("skipped", {"address_types": ["FAX"]}),
        ("smtp", {"address_types": ["SMTP"]}),
    )
    with postroom.logon(profile) as s:
        assert s.enum_adr_types() == ["SMTP"]
        rows = {r.display_name: r for r in s.status()}
        assert rows["broken"].status_code & StatusCode.FAILURE
        assert "message service disabled" in rows["broken"].status_string
        assert "MAPI_E_LOGON_FAILED" in rows["broken"].last_error
        assert "skipped" in rows["skipped"].status_string
        mid = s.create_message("x").to("X400:c=gb", "a@x.test").submit()
        s.deliver()
        assert states(s, mid) == {0: ("failed", ""), 1: ("delivered", "smtp")}


def test_preprocessors_run_only_for_their_transports_messages_in_order(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}), ("fax", {"address_types": ["FAX"]}))
    seen: list[tuple[str, str]] = []
    with postroom.logon(profile) as s:
        s.enum_adr_types()  # log on
        fax = s.engine.transports.by_name("fax")

        def cover_page(msg: OutboundMessage) -> None:
            seen.append(("cover", msg.data.subject))

        def stamp(msg: OutboundMessage) -> None:
            seen.append(("stamp", msg.data.subject))

        support = fax.provider.context.support  # type: ignore[union-attr]
        support.register_preprocessor(cover_page, address_type="FAX")
        support.register_preprocessor(stamp)
        s.create_message("mail only").to("a@x.test").submit()
        s.create_message("fax too").to("a@x.test", "FAX:1").submit()
        s.deliver()
        assert seen == [("cover", "fax too"), ("stamp", "fax too")]


def test_oldest_message_first(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))
    with postroom.logon(profile) as s:
        s.engine.spooler.concurrency = 1
        for n in range(5):
            s.create_message(f"m{n}").to(f"r{n}@x.test").submit()
        s.deliver()
        order = [next(iter(c[2].values()))[0] for c in calls if c[1] == "submit_message"]
        assert order == [f"r{n}@x.test" for n in range(5)]


def test_two_sessions_never_process_one_message_twice(tmp_path: Path, calls: Calls) -> None:
    profile = make_profile(tmp_path / "p", ("smtp", {"address_types": ["SMTP"]}))
    # The first two submit_message calls wait for each other. Each session has one worker, so the
    # two calls come from the two sessions: both are in the middle of a pass over the same queue.
    meeting = threading.Barrier(2, timeout=30)
    arrivals = itertools.count()
    met: list[bool] = []

    def meet(name: str) -> None:
        if next(arrivals) < 2:
            try:
                meeting.wait()
                met.append(True)
            except threading.BrokenBarrierError:
                met.append(False)

    ON_SUBMIT.append(meet)
    with postroom.logon(profile) as a, postroom.logon(profile) as b:
        a.engine.spooler.concurrency = b.engine.spooler.concurrency = 1
        ids = [a.create_message(f"m{n}").to(f"r{n}@x.test").submit() for n in range(20)]
        a.engine.store.claim("a-spooler-that-died", a.clock(), 3600, 3)  # three are held by someone else
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_a = pool.submit(a.deliver)
            rb = b.deliver()
            ra = in_a.result(timeout=60)
        assert met == [True, True]  # the two passes did overlap
        processed = [m.message_id for m in ra.messages] + [m.message_id for m in rb.messages]
        assert ra.messages and rb.messages
        assert len(processed) == len(set(processed)) == 17
        delivered_by = [c for c in calls if c[1] == "marked"]
        assert len(delivered_by) == 17
        assert {m.id for m in a.queue()} == set(ids[:3])
