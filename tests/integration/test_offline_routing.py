"""Issue 13's scenarios, end to end: offline routing follows the one rule, and Send/Receive sends
everything of its group in one flush.

The README's "Mail accounts" example offline, through the command line (real processes, an SMTP
server on 127.0.0.1); KB 317412's call-when-offline fax gateway in every position of the transport
order, beside transports that declare their domains; a call-when-offline transport behind a
transport of the same address type, with and without a declared scope; a recipient declined in
one flush; and recipients whose transport is removed, rescoped, moved in the order or reconfigured
while they wait: they go at once to the transport routing now gives them (spooler/reroute.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import postroom
from postroom.engine.groups import SendReceiveGroup, save_group
from postroom.engine.results import SendReceiveSummary
from postroom.profile import Profile
from postroom.spooler.outbound import NOT_CALLED_OFFLINE
from postroom.store import RecipientState, WaitKind

from support import recording  # registers the "recording" kind
from support.pipes import logged, logging_pipe
from support.smtp_sink import RecordingHandler, running_sink

pytestmark = pytest.mark.integration

ENV = {**os.environ, "POSTROOM_DEBUG": ""}


@pytest.fixture
def sink() -> Iterator[tuple[RecordingHandler, int]]:
    with running_sink() as running:
        yield running


@pytest.fixture
def corp_sink() -> Iterator[tuple[RecordingHandler, int]]:
    with running_sink() as running:
        yield running


def smtp_options(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "security": "none", "helo_name": "client.test", "timeout": 10, **extra}


def lines_of(summary: SendReceiveSummary) -> dict[str, tuple[int, int, int, int]]:
    """{transport: (sent, failed, deferred, waiting)} for the lines that counted someone."""
    out = {t.transport: (t.sent, t.failed, t.deferred, t.waiting) for t in summary.transports}
    return {name: counts for name, counts in out.items() if any(counts)}


def assert_adds_up(data: dict[str, Any]) -> None:
    """A summary (as `--json` prints it): each total is the sum of the per-transport lines."""
    for key in ("sent", "failed", "deferred", "waiting", "received"):
        assert data[key] == sum(t[key] for t in data["transports"]), (key, data)


# --- the README's "Mail accounts" example, offline, through the command line ----------------------


def postroom_cli(profile: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "postroom", "--profile", str(profile), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def maildir_count(profile: Path, user: str) -> int:
    new = profile / "maildir" / "localhost" / user / "new"
    return sum(1 for _ in new.iterdir()) if new.is_dir() else 0


@pytest.fixture
def accounts(tmp_path: Path, sink: tuple[RecordingHandler, int]) -> Path:
    """The default profile (`local` for localhost, first in the order) plus the `work` SMTP account."""
    profile = tmp_path / "profile"
    ok(postroom_cli(profile, "init", profile))
    _, port = sink
    ok(
        postroom_cli(
            profile, "service", "add", "smtp", "work", "--set", "host=127.0.0.1", "--set", f"port={port}",
            "--set", "security=none", "--set", "sender=alice@example.test",
        )
    )  # fmt: skip
    assert [s.name for s in Profile.load(profile).transport_order()] == ["local", "work"]
    ok(postroom_cli(profile, "offline"))
    return profile


def queue_of(profile: Path) -> list[dict[str, Any]]:
    return list(json.loads(ok(postroom_cli(profile, "queue", "--json")).stdout))


def waiting_transports(profile: Path) -> list[tuple[str, ...]]:
    """Each queued message's `waiting_transports`, read in this process (cheaper than `queue --json`)."""
    with postroom.logon(profile) as session:
        return [q.waiting_transports for q in session.queue()]


def test_offline_mail_to_an_smtp_account_goes_out_in_one_send_receive(
    accounts: Path, sink: tuple[RecordingHandler, int]
) -> None:
    handler, _ = sink
    sent = ok(
        postroom_cli(accounts, "send", "--to", "bob@example.test", "--to", "me@localhost", "-s", "Hello", "-b", "Hi")
    )
    # Offline each recipient waits for the transport online routing gives it: bob for work (local
    # declares it serves only localhost, so it is not offered bob), me for local.
    assert "waiting for work" in sent.stdout and "waiting for local" in sent.stdout, sent.stdout
    route = ok(postroom_cli(accounts, "route", "bob@example.test")).stdout
    assert "local: skipped, serves only localhost" in route, route
    (entry,) = queue_of(accounts)
    assert entry["waiting_for"] == "send_receive" and entry["waiting_transports"] == ["work", "local"], entry
    shown = ok(postroom_cli(accounts, "show", str(entry["id"]))).stdout
    bob_row = next(line for line in shown.splitlines() if "SMTP:bob@example.test" in line)
    assert "waiting for work" in bob_row, shown
    assert handler.accepted == []

    result = ok(postroom_cli(accounts, "sendreceive"))

    summary_line = result.stdout.strip().splitlines()[-1]
    assert summary_line.startswith("Send/Receive 'All Accounts' (offline): 2 sent, 0 failed, 0 deferred"), result.stdout
    assert "  local: 1 sent, 0 failed, 0 deferred, 0 waiting" in result.stdout, result.stdout
    assert "  work: 1 sent, 0 failed, 0 deferred, 0 waiting" in result.stdout, result.stdout
    assert handler.counts() == {"bob@example.test": 1}
    assert maildir_count(accounts, "me") == 1
    assert waiting_transports(accounts) == []


def test_flush_and_a_group_of_one_transport_leave_the_other_recipients_waiting(
    accounts: Path, sink: tuple[RecordingHandler, int]
) -> None:
    handler, _ = sink
    ok(postroom_cli(accounts, "send", "--to", "bob@example.test", "--to", "me@localhost", "-s", "One", "-b", "1"))

    flushed = json.loads(ok(postroom_cli(accounts, "flush", "--transport", "work", "--json")).stdout)

    assert_adds_up(flushed)
    lines = {t["transport"]: (t["sent"], t["failed"], t["deferred"], t["waiting"]) for t in flushed["transports"]}
    assert lines == {"work": (1, 0, 0, 0), "local": (0, 0, 0, 1)}, flushed
    assert handler.counts() == {"bob@example.test": 1}
    assert maildir_count(accounts, "me") == 0
    assert waiting_transports(accounts) == [("local",)]

    added = ok(postroom_cli(accounts, "group", "add", "outgoing", "--transports", "work"))
    assert "outgoing" in added.stdout
    ok(postroom_cli(accounts, "send", "--to", "carol@example.test", "--to", "you@localhost", "-s", "Two", "-b", "2"))

    text = ok(postroom_cli(accounts, "sendreceive", "--group", "outgoing"))

    # Message one waits only for local: outside the group, untouched (not even counted). Message two's
    # carol goes out; its you@localhost is counted once, as still waiting for local.
    assert "Send/Receive 'outgoing' (offline): 1 sent, 0 failed, 0 deferred, 1 waiting" in text.stdout, text.stdout
    assert handler.counts() == {"bob@example.test": 1, "carol@example.test": 1}
    assert waiting_transports(accounts) == [("local",), ("local",)]

    everything = json.loads(ok(postroom_cli(accounts, "sendreceive", "--json")).stdout)

    assert_adds_up(everything)
    assert (everything["sent"], everything["failed"], everything["deferred"], everything["waiting"]) == (2, 0, 0, 0)
    assert maildir_count(accounts, "me") == 1 and maildir_count(accounts, "you") == 1
    assert handler.counts() == {"bob@example.test": 1, "carol@example.test": 1}
    assert waiting_transports(accounts) == []


# --- KB 317412: the call-when-offline fax gateway, in every position of the transport order ---------


@pytest.mark.parametrize("position", [0, 2, 3], ids=["fax-first", "fax-in-the-middle", "fax-last"])
def test_call_when_offline_fax_is_delivered_at_once_wherever_it_is_in_the_order(
    tmp_path: Path, position: int, sink: tuple[RecordingHandler, int], corp_sink: tuple[RecordingHandler, int]
) -> None:
    work, work_port = sink
    corp, corp_port = corp_sink
    fax_command, fax_log = logging_pipe(tmp_path, "fax")
    profile = Profile.create(tmp_path / "profile")  # `local`: maildir for localhost
    profile.add_service("smtp", "corp", smtp_options(corp_port, domains=["corp.test"]))
    profile.add_service("smtp", "work", smtp_options(work_port))
    profile.add_service("pipe", "fax", {"command": fax_command, "address_types": ["FAX"]}, call_when_offline=True)
    order = ["local", "corp", "work"]
    order.insert(position, "fax")
    profile.set_transport_order(order)
    profile.set_mode("offline")
    profile.save()

    with postroom.logon(profile) as session:
        draft = session.create_message("Report", "…").to("me@localhost", "bob@example.test", "ann@corp.test")
        draft.add_recipient("FAX:+15551234")
        mid = draft.submit()
        session.deliver()

        assert logged(fax_log) == {"+15551234": 1}, "the fax gateway is called at once, offline"
        report = {r.address: r for r in session.recipient_report(mid)}
        assert (report["FAX:+15551234"].state, report["FAX:+15551234"].transport) == ("delivered", "fax")
        waits = {a: (r.state, r.waiting_for, r.why) for a, r in report.items() if a != "FAX:+15551234"}
        assert waits == {
            "SMTP:me@localhost": ("waiting", "local", NOT_CALLED_OFFLINE),
            "SMTP:bob@example.test": ("waiting", "work", NOT_CALLED_OFFLINE),
            "SMTP:ann@corp.test": ("waiting", "corp", NOT_CALLED_OFFLINE),
        }
        (entry,) = session.queue()
        assert entry.waiting_for is WaitKind.SEND_RECEIVE
        assert entry.waiting_transports == ("local", "work", "corp")
        assert work.accepted == [] and corp.accepted == []

        save_group(session.profile, SendReceiveGroup("smtp-out", transports=["work"]))
        session.save_profile()
        first = session.send_receive("smtp-out")

        assert lines_of(first) == {"work": (1, 0, 0, 0), "local": (0, 0, 0, 1), "corp": (0, 0, 0, 1)}
        assert work.counts() == {"bob@example.test": 1} and corp.accepted == []

        rest = session.send_receive()

        assert lines_of(rest) == {"local": (1, 0, 0, 0), "corp": (1, 0, 0, 0)}
        assert (rest.sent, rest.failed, rest.deferred, rest.waiting) == (2, 0, 0, 0)
        assert corp.counts() == {"ann@corp.test": 1} and work.counts() == {"bob@example.test": 1}
        assert logged(fax_log) == {"+15551234": 1}, "nothing is sent twice"
        assert maildir_count(tmp_path / "profile", "me") == 1
        assert session.queue() == []


# --- a call-when-offline transport behind another transport of the same address type -----------------


def relay_profile(tmp_path: Path, first: tuple[str, str, dict[str, Any]]) -> tuple[Profile, Path]:
    """`first` (kind, name, options), then `relay`: a call-when-offline pipe for SMTP; offline."""
    command, log = logging_pipe(tmp_path, "relay")
    profile = Profile.create(tmp_path / "profile", with_defaults=False)
    kind, name, options = first
    profile.add_service(kind, name, options)
    profile.add_service("pipe", "relay", {"command": command, "address_types": ["SMTP"]}, call_when_offline=True)
    profile.set_transport_order([name, "relay"])
    profile.set_mode("offline")
    profile.save()
    return profile, log


@pytest.mark.parametrize(
    "first",
    [
        ("smtp", "corp", {"domains": ["corp.test"]}),
        ("recording", "corp", {"address_types": ["SMTP"], "scope": ["@corp.test"]}),
    ],
    ids=["smtp-domains", "third-party-scope"],
)
def test_call_when_offline_transport_behind_a_scope_that_excludes_the_recipient_is_called_at_once(
    tmp_path: Path, first: tuple[str, str, dict[str, Any]], sink: tuple[RecordingHandler, int], calls: list[Any]
) -> None:
    """`corp` declares up front that it serves only corp.test, so bob@example.test is never offered
    to it: offline, the call-when-offline `relay` behind it is the transport online routing gives
    bob, and it is called at once. `route` shows the skip."""
    kind, name, options = first
    if kind == "smtp":
        options = smtp_options(sink[1], **options)
    profile, relay_log = relay_profile(tmp_path, (kind, name, options))

    with postroom.logon(profile) as session:
        (answer,) = session.route(["bob@example.test"])
        assert [o.transport for o in answer.offers] == ["relay"]
        assert [k.offer.transport for k in answer.skipped] == ["corp"]
        assert answer.skipped[0].reason.startswith("serves only"), answer.skipped
        mid = session.create_message("At once", "…").to("bob@example.test").submit()
        summary = session.deliver()

        (state,) = session.recipient_states(mid)
        assert (state.state, state.transport) == (RecipientState.DELIVERED, "relay")
        assert summary.delivered_by == {"relay": 1}
        assert logged(relay_log) == {"bob@example.test": 1}
        assert session.queue() == []
    assert sink[0].accepted == [] and not any(c[0] == "corp" and c[1] == "submit_message" for c in calls)


def test_call_when_offline_transport_behind_a_transport_that_cannot_say_up_front_waits_for_it(
    tmp_path: Path, calls: list[Any]
) -> None:
    """`gate` registers SMTP without a scope: it cannot say up front which recipients it would leave
    "not mine", so by the one rule bob@example.test is offered to gate first. Offline, gate may not
    be called, so bob waits for gate, even though gate would decline him and the call-when-offline
    `relay` behind it would take him; relay is not called. Send/Receive of a group holding only
    gate calls it; it declines bob, and relay, callable anyway, takes him in that same Send/Receive."""
    profile, relay_log = relay_profile(tmp_path, ("recording", "gate", {"address_types": ["SMTP"], "take": "none"}))

    with postroom.logon(profile) as session:
        mid = session.create_message("Wait", "…").to("bob@example.test").submit()
        session.deliver()

        (report,) = session.recipient_report(mid)
        assert (report.state, report.waiting_for, report.why) == ("waiting", "gate", NOT_CALLED_OFFLINE)
        (entry,) = session.queue()
        assert entry.waiting_transports == ("gate",)
        assert logged(relay_log) == {}
        assert not any(c[1] == "submit_message" for c in calls)

        save_group(session.profile, SendReceiveGroup("gate-only", transports=["gate"]))
        session.save_profile()
        summary = session.send_receive("gate-only")

        assert lines_of(summary) == {"relay": (1, 0, 0, 0)}
        assert (summary.sent, summary.failed, summary.deferred, summary.waiting) == (1, 0, 0, 0)
        (state,) = session.recipient_states(mid)
        assert (state.state, state.transport) == (RecipientState.DELIVERED, "relay")
        assert logged(relay_log) == {"bob@example.test": 1}
        assert [c[0] for c in calls if c[1] == "submit_message"] == ["gate"]


def test_a_recipient_declined_in_one_flush_waits_for_the_next_transport_and_is_not_offered_again(
    tmp_path: Path, sink: tuple[RecordingHandler, int], calls: list[Any]
) -> None:
    """Neither transport is called offline. `flush --transport gate`: gate declines bob; work, the
    next transport, is outside the flush, so bob now waits for work (counted once, as waiting).
    `flush --transport work` delivers him, without offering him to gate again."""
    handler, port = sink
    profile = Profile.create(tmp_path / "profile", with_defaults=False)
    profile.add_service("recording", "gate", {"address_types": ["SMTP"], "take": "none"})
    profile.add_service("smtp", "work", smtp_options(port))
    profile.set_transport_order(["gate", "work"])
    profile.set_mode("offline")
    profile.save()

    with postroom.logon(profile) as session:
        mid = session.create_message("Declined", "…").to("bob@example.test").submit()
        session.deliver()
        assert [s.waiting_for for s in session.recipient_states(mid)] == ["gate"]

        first = session.flush("gate")

        assert lines_of(first) == {"work": (0, 0, 0, 1)}
        (report,) = session.recipient_report(mid)
        assert (report.state, report.waiting_for, report.why) == ("waiting", "work", NOT_CALLED_OFFLINE)
        assert session.queue()[0].waiting_transports == ("work",)

        second = session.flush("work")

        assert lines_of(second) == {"work": (1, 0, 0, 0)}
        (state,) = session.recipient_states(mid)
        assert (state.state, state.transport) == (RecipientState.DELIVERED, "work")
        assert handler.counts() == {"bob@example.test": 1}
        assert [c[0] for c in calls if c[1] == "submit_message"] == ["gate"], "gate is not asked twice"


def test_a_recipient_waiting_for_a_removed_transport_goes_where_routing_sends_it_now_at_send_receive(
    tmp_path: Path, sink: tuple[RecordingHandler, int]
) -> None:
    """bob waits for `work`; then `work` is removed. Online routing now gives bob `backup`, so the
    next Send/Receive of every transport sends him through backup: no Send/Receive can call a
    transport that no longer exists, so waiting for it would leave him in the Outbox for good."""
    handler, port = sink
    profile = Profile.create(tmp_path / "profile")
    profile.add_service("smtp", "work", smtp_options(port, helo_name="work.test"))
    profile.add_service("smtp", "backup", smtp_options(port, helo_name="backup.test"))
    profile.set_mode("offline")
    profile.save()

    with postroom.logon(profile) as session:
        mid = session.create_message("Removed", "…").to("bob@example.test").submit()
        session.deliver()
        assert [s.waiting_for for s in session.recipient_states(mid)] == ["work"]
        session.remove_service("work")

        summary = session.send_receive()

        assert lines_of(summary) == {"backup": (1, 0, 0, 0)}
        (state,) = session.recipient_states(mid)
        assert (state.state, state.transport) == (RecipientState.DELIVERED, "backup")
        assert handler.counts() == {"bob@example.test": 1}
        assert session.queue() == []


def test_a_recipient_whose_transport_no_longer_takes_it_goes_with_the_flush_of_the_transport_routing_gives_it(
    tmp_path: Path, sink: tuple[RecordingHandler, int]
) -> None:
    """bob waits for `corp`, which served example.test; then corp is set to serve only corp.test.
    Online routing now gives bob `work`: from that change on he waits for work (queue and show say
    so), so `flush --transport work` sends him."""
    handler, port = sink
    profile = Profile.create(tmp_path / "profile", with_defaults=False)
    profile.add_service("smtp", "corp", smtp_options(port, domains=["example.test"]))
    profile.add_service("smtp", "work", smtp_options(port))
    profile.set_mode("offline")
    profile.save()

    with postroom.logon(profile) as session:
        mid = session.create_message("Rescoped", "…").to("bob@example.test").submit()
        session.deliver()
        assert [s.waiting_for for s in session.recipient_states(mid)] == ["corp"]
        session.configure_service("corp", options=smtp_options(port, domains=["corp.test"]))
        assert [o.transport for o in session.route(["bob@example.test"])[0].offers] == ["work"]
        (report,) = session.recipient_report(mid)
        assert (report.state, report.waiting_for, report.why) == ("waiting", "work", NOT_CALLED_OFFLINE)
        (entry,) = session.queue()
        assert (entry.waiting_for, entry.waiting_transports) == (WaitKind.SEND_RECEIVE, ("work",))

        summary = session.flush("work")

        assert lines_of(summary) == {"work": (1, 0, 0, 0)}
        assert handler.counts() == {"bob@example.test": 1}


def test_a_recipient_waiting_when_the_order_changes_goes_to_the_transport_the_new_order_gives_it(
    tmp_path: Path, sink: tuple[RecordingHandler, int], corp_sink: tuple[RecordingHandler, int], calls: list[Any]
) -> None:
    """Order gate, work, corp. `flush --transport gate`: gate declines ann@corp.test, so she waits for
    work. Then the order becomes gate, corp, work: online routing now gives her corp (gate declined
    her; corp, which serves corp.test, takes her), so she waits for corp from then on, and
    Send/Receive sends her through corp without asking gate again."""
    work, work_port = sink
    corp, corp_port = corp_sink
    profile = Profile.create(tmp_path / "profile", with_defaults=False)
    profile.add_service("recording", "gate", {"address_types": ["SMTP"], "take": "none"})
    profile.add_service("smtp", "work", smtp_options(work_port))
    profile.add_service("smtp", "corp", smtp_options(corp_port, domains=["corp.test"]))
    profile.set_transport_order(["gate", "work", "corp"])
    profile.set_mode("offline")
    profile.save()

    with postroom.logon(profile) as session:
        mid = session.create_message("Reordered", "…").to("ann@corp.test").submit()
        session.deliver()
        session.flush("gate")
        assert [s.waiting_for for s in session.recipient_states(mid)] == ["work"]
        session.set_transport_order(["gate", "corp", "work"])
        assert [s.waiting_for for s in session.recipient_states(mid)] == ["corp"]
        assert session.queue()[0].waiting_transports == ("corp",)

        session.send_receive()

        (state,) = session.recipient_states(mid)
        assert (state.state, state.transport) == (RecipientState.DELIVERED, "corp")
        assert corp.counts() == {"ann@corp.test": 1} and work.accepted == []
        assert [c[0] for c in calls if c[1] == "submit_message"] == ["gate"], "gate is not asked twice"
        assert any(e.kind == "rerouted" and "work -> corp" in e.detail for e in session.events(mid))


def test_a_transport_reconfigured_after_it_declined_a_recipient_is_offered_it_again(
    tmp_path: Path, sink: tuple[RecordingHandler, int], calls: list[Any]
) -> None:
    """gate declines bob, so he waits for work. A decline is the answer of gate as it was then:
    once gate is set to take everyone, online routing gives bob gate again, so he waits for gate,
    and Send/Receive sends him through it (work gets nothing)."""
    handler, port = sink
    profile = Profile.create(tmp_path / "profile", with_defaults=False)
    profile.add_service("recording", "gate", {"address_types": ["SMTP"], "take": "none"})
    profile.add_service("smtp", "work", smtp_options(port))
    profile.set_transport_order(["gate", "work"])
    profile.set_mode("offline")
    profile.save()

    with postroom.logon(profile) as session:
        mid = session.create_message("Declined, then taken", "…").to("bob@example.test").submit()
        session.deliver()
        session.flush("gate")
        assert [s.waiting_for for s in session.recipient_states(mid)] == ["work"]
        session.configure_service("work", policy={"breaker_threshold": 7})  # not routing: nothing moves
        assert [s.waiting_for for s in session.recipient_states(mid)] == ["work"]

        session.configure_service("gate", options={"address_types": ["SMTP"], "take": "all"})

        assert [s.waiting_for for s in session.recipient_states(mid)] == ["gate"]
        summary = session.send_receive()
        assert lines_of(summary) == {"gate": (1, 0, 0, 0)}
        assert recording.MARKS == [("gate", "bob@example.test", True)] and handler.accepted == []
        assert [c[0] for c in calls if c[1] == "submit_message"] == ["gate", "gate"]


def test_a_change_of_order_from_the_command_line_moves_waiting_recipients_at_once(
    accounts: Path, corp_sink: tuple[RecordingHandler, int]
) -> None:
    """The README's accounts plus `corp` (smtp for corp.test) after `work`: offline, ann@corp.test
    waits for work, the first transport that takes her. `postroom order set local corp work`, in a
    process of its own, makes corp hers: `queue` and `show` say so at once, and
    `flush --transport corp` sends her."""
    corp, corp_port = corp_sink
    ok(
        postroom_cli(
            accounts, "service", "add", "smtp", "corp", "--set", "host=127.0.0.1", "--set", f"port={corp_port}",
            "--set", "security=none", "--set", "domains=[\"corp.test\"]",
        )
    )  # fmt: skip
    ok(postroom_cli(accounts, "send", "--to", "ann@corp.test", "-s", "Order", "-b", "…"))
    assert [e["waiting_transports"] for e in queue_of(accounts)] == [["work"]]

    ok(postroom_cli(accounts, "order", "set", "local", "corp", "work"))

    (entry,) = queue_of(accounts)
    assert (entry["waiting_for"], entry["waiting_transports"]) == ("send_receive", ["corp"]), entry
    shown = ok(postroom_cli(accounts, "show", str(entry["id"]))).stdout
    ann_row = next(line for line in shown.splitlines() if "SMTP:ann@corp.test" in line)
    assert "waiting for corp" in ann_row, shown
    flushed = json.loads(ok(postroom_cli(accounts, "flush", "--transport", "corp", "--json")).stdout)
    assert (flushed["sent"], flushed["waiting"]) == (1, 0), flushed
    assert corp.counts() == {"ann@corp.test": 1}
    assert queue_of(accounts) == []
