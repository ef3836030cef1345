"""The pipe transport, driven directly through the transport SPI with real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import gc
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import postroom
from postroom.mapi import tags as T
from postroom.mapi.codes import HResult, MAPIError
from postroom.mapi.flags import LogonFlags, NDRDiag, NDRReason, RecipientType, StatusCode
from postroom.mapi.message import MessageData, Recipient
from postroom.profile import Profile
from postroom.store import RecipientState
from postroom.transports.pipe import PipeLogon, PipeProvider
from postroom.transports.spi import OutboundMessage, OutboundRecipient, Registration, SubmitResult

from support.spi import provider_context

PY = sys.executable

CAPTURE = """\
import json, sys
out = sys.argv[1]
data = sys.stdin.buffer.read()
with open(out + "/stdin.eml", "wb") as f:
    f.write(data)
with open(out + "/args.json", "w") as f:
    json.dump(sys.argv[2:], f)
"""

EXIT_WITH = """\
import sys
sys.stdin.buffer.read()
sys.stderr.write(sys.argv[2])
sys.exit(int(sys.argv[1]))
"""


def make_logon(tmp_path: Path, **options: Any) -> PipeLogon:
    options.setdefault("address_types", ["FAX"])
    logon = PipeProvider(provider_context("pipe", "faxgate", options, tmp_path)).logon(LogonFlags.NONE)
    assert isinstance(logon, PipeLogon)
    return logon


def script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def capture_logon(tmp_path: Path, **options: Any) -> tuple[PipeLogon, Path]:
    out = tmp_path / "out"
    out.mkdir()
    logon = make_logon(tmp_path, command=[PY, str(script(tmp_path, "capture.py", CAPTURE)), str(out)], **options)
    return logon, out


def exit_logon(tmp_path: Path, rc: int, stderr: str, **options: Any) -> PipeLogon:
    command = [PY, str(script(tmp_path, "exit_with.py", EXIT_WITH)), str(rc), stderr]
    return make_logon(tmp_path, command=command, **options)


def rcpt(address: str, *, adrtype: str = "FAX", kind: RecipientType = RecipientType.TO) -> Recipient:
    return Recipient(
        props={
            T.PR_DISPLAY_NAME: f"Recipient {address}",
            T.PR_ADDRTYPE: adrtype,
            T.PR_EMAIL_ADDRESS: address,
            T.PR_RECIPIENT_TYPE: int(kind),
        }
    )


def make_message(
    *recipients: Recipient | tuple[Recipient, bool], subject: str = "Fax cover", body: str = "Hi\n"
) -> OutboundMessage:
    rows: list[Recipient] = []
    views: list[OutboundRecipient] = []
    for i, item in enumerate(recipients):
        row, responsibility = item if isinstance(item, tuple) else (item, False)
        row.row_id = i
        rows.append(row)
        views.append(OutboundRecipient(row, responsibility=responsibility))
    data = MessageData(
        props={
            T.PR_MESSAGE_CLASS: "IPM.Note",
            T.PR_SUBJECT: subject,
            T.PR_BODY: body,
            T.PR_SENDER_NAME: "Sam Sender",
            T.PR_SENDER_ADDRTYPE: "SMTP",
            T.PR_SENDER_EMAIL_ADDRESS: "sam@sender.test",
        },
        recipients=rows,
    )
    return OutboundMessage(data, views, ref=1, deferred=False)


def submit(logon: PipeLogon, msg: OutboundMessage) -> SubmitResult:
    result = asyncio.run(logon.submit_message(msg, 0))
    assert isinstance(result, SubmitResult)
    return result


# --- options --------------------------------------------------------------------------------------


def test_validate_options_normalises() -> None:
    opts = PipeProvider.validate_options(
        {"command": "/usr/bin/faxsend -q 'two words'", "address_types": "fax, x-pager"}
    )
    assert opts == {
        "command": ["/usr/bin/faxsend", "-q", "two words"],
        "address_types": ["FAX", "X-PAGER"],
        "timeout": 60.0,
    }
    opts = PipeProvider.validate_options({"command": ["prog", "a b"], "address_types": ["*"], "timeout": "2.5"})
    assert opts == {"command": ["prog", "a b"], "address_types": ["*"], "timeout": 2.5}
    assert PipeProvider.validate_options({"command": ["p"], "address_types": "*", "timeout": 5})["timeout"] == 5.0
    opts = PipeProvider.validate_options({"command": ["p"], "address_types": "*", "environment": "FAX_DEVICE, _X,"})
    assert opts["environment"] == ["FAX_DEVICE", "_X"]


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"address_types": ["FAX"]}, "'command' is required"),
        ({"command": [], "address_types": ["FAX"]}, "names no program"),
        ({"command": "", "address_types": ["FAX"]}, "names no program"),
        ({"command": ["prog", 3], "address_types": ["FAX"]}, "must be a string"),
        ({"command": 42, "address_types": ["FAX"]}, "'command'"),
        ({"command": "prog 'unclosed", "address_types": ["FAX"]}, "cannot be split"),
        ({"command": ["prog"]}, "'address_types' is required"),
        ({"command": ["prog"], "address_types": []}, "at least one"),
        ({"command": ["prog"], "address_types": ["FAX", 7]}, "string"),
        ({"command": ["prog"], "address_types": ["FAX"], "timeout": -1}, "positive"),
        ({"command": ["prog"], "address_types": ["FAX"], "timeout": 0}, "positive"),
        ({"command": ["prog"], "address_types": ["FAX"], "timeout": True}, "'timeout'"),
        ({"command": ["prog"], "address_types": ["FAX"], "timeout": "soon"}, "'timeout'"),
        ({"command": ["prog"], "address_types": ["FAX"], "timeout": [1]}, "'timeout'"),
        ({"command": ["prog"], "address_types": ["FAX"], "shell": True}, "unknown option 'shell'"),
        ({"command": ["prog"], "address_types": ["FAX"], "environment": ["FAX DEVICE"]}, "not an environment"),
        ({"command": ["prog"], "address_types": ["FAX"], "environment": ["A=b"]}, "not an environment"),
        ({"command": ["prog"], "address_types": ["FAX"], "environment": {"A": "b"}}, "'environment'"),
        ({"command": ["prog"], "address_types": ["FAX"], "environment": []}, "at least one"),
        ({"command": ["prog"], "address_types": ["FAX"], "max_processes": 0}, "must be positive"),
        ({"command": ["prog"], "address_types": ["FAX"], "max_processes": True}, "'max_processes'"),
        ({"command": ["prog"], "address_types": ["FAX"], "max_processes": "many"}, "'max_processes'"),
    ],
)
def test_validate_options_errors(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(MAPIError) as err:
        PipeProvider.validate_options(options)
    assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER
    assert needle in err.value.message


def test_provider_metadata() -> None:
    assert PipeProvider.display_name == "Pipe to command"
    assert set(PipeProvider.option_help) == {
        "command",
        "address_types",
        "timeout",
        "environment",
        "addresses",
        "max_processes",
    }


def test_registration(tmp_path: Path) -> None:
    assert make_logon(tmp_path, command=[PY], address_types=["fax", "pager"]).address_types() == Registration.of(
        "FAX", "PAGER"
    )
    wildcard = make_logon(tmp_path, command=[PY], address_types="*").address_types()
    assert wildcard == Registration.any()
    assert wildcard.is_wildcard


def test_logon_flags_missing_program_in_status(tmp_path: Path) -> None:
    logon = make_logon(tmp_path, command=[str(tmp_path / "no-such-program")])
    assert logon.status.status_code & StatusCode.FAILURE
    assert "not found" in logon.status.last_error


# --- delivery -------------------------------------------------------------------------------------


def test_exit_0_delivers_with_args_and_stdin(tmp_path: Path) -> None:
    logon, out = capture_logon(tmp_path)
    msg = make_message(rcpt("+15551234"), rcpt("+15559876", kind=RecipientType.CC), subject="Invoice 42")
    result = submit(logon, msg)
    assert result.code == HResult.S_OK
    assert all(r.mark is not None and r.mark.delivered for r in msg.recipients)
    assert json.loads((out / "args.json").read_text()) == ["+15551234", "+15559876"]
    raw = (out / "stdin.eml").read_bytes()
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")  # every line ends in CRLF
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "Invoice 42"


def test_string_command_is_split_not_shell(tmp_path: Path) -> None:
    out = tmp_path / "out dir"
    out.mkdir()
    capture = script(tmp_path, "capture.py", CAPTURE)
    # `;` and `$HOME` would mean something to a shell; here they are plain arguments.
    command = shlex.join([PY, str(capture), str(out), ";", "$HOME"])
    logon = make_logon(tmp_path, command=command)
    assert submit(logon, make_message(rcpt("+1"))).code == HResult.S_OK
    assert json.loads((out / "args.json").read_text()) == [";", "$HOME", "+1"]


def test_only_registered_types_are_taken(tmp_path: Path) -> None:
    logon, out = capture_logon(tmp_path)
    msg = make_message(rcpt("+1"), rcpt("bob@example.test", adrtype="SMTP"), rcpt("+2", adrtype="fax"))
    assert submit(logon, msg).code == HResult.S_OK
    fax1, smtp, fax2 = msg.recipients
    assert json.loads((out / "args.json").read_text()) == ["+1", "+2"]
    assert fax1.mark is not None and fax1.mark.delivered
    assert fax2.mark is not None and fax2.mark.delivered
    assert smtp.mark is None and not smtp.responsibility


def test_wildcard_takes_every_type(tmp_path: Path) -> None:
    logon, out = capture_logon(tmp_path, address_types="*")
    msg = make_message(rcpt("+1"), rcpt("bob@example.test", adrtype="SMTP"))
    assert submit(logon, msg).code == HResult.S_OK
    assert json.loads((out / "args.json").read_text()) == ["+1", "bob@example.test"]
    assert all(r.mark is not None and r.mark.delivered for r in msg.recipients)


def test_not_me_without_running(tmp_path: Path) -> None:
    logon, out = capture_logon(tmp_path)
    msg = make_message(rcpt("bob@example.test", adrtype="SMTP"), (rcpt("+1"), True))
    result = submit(logon, msg)
    assert result.code == HResult.MAPI_E_NOT_ME
    assert all(r.mark is None for r in msg.recipients)
    assert not (out / "args.json").exists()


def test_recipients_with_responsibility_are_never_touched(tmp_path: Path) -> None:
    logon, out = capture_logon(tmp_path)
    msg = make_message((rcpt("+1"), True), rcpt("+2"))
    assert submit(logon, msg).code == HResult.S_OK
    done, mine = msg.recipients
    assert done.mark is None
    assert mine.mark is not None and mine.mark.delivered
    assert json.loads((out / "args.json").read_text()) == ["+2"]


def test_option_like_address_is_refused(tmp_path: Path) -> None:
    logon, out = capture_logon(tmp_path)
    msg = make_message(rcpt("--output=/etc/passwd"), rcpt("+2"))
    assert submit(logon, msg).code == HResult.S_OK
    bad, good = msg.recipients
    assert bad.mark is not None and not bad.mark.delivered
    assert bad.mark.reason == NDRReason.TRANSFER_IMPOSSIBLE
    assert bad.mark.diag == NDRDiag.MAIL_ADDRESS_INCORRECT
    assert good.mark is not None and good.mark.delivered
    assert json.loads((out / "args.json").read_text()) == ["+2"]


def test_exit_75_waits_with_the_spoolers_backoff(tmp_path: Path) -> None:
    logon = exit_logon(tmp_path, 75, "  line busy, try later \n")
    msg = make_message(rcpt("+1"), rcpt("+2"))
    result = submit(logon, msg)
    assert result.code == HResult.MAPI_E_WAIT
    assert result.wait_seconds == 0  # no fixed wait of its own: 300 s doubling, not a try a minute
    assert result.reason == "line busy, try later"
    assert all(r.mark is None for r in msg.recipients)


def test_other_exit_code_fails_every_recipient_with_stderr(tmp_path: Path) -> None:
    logon = exit_logon(tmp_path, 1, "no such fax line\n")
    msg = make_message(rcpt("+1"), rcpt("+2"), rcpt("x@example.test", adrtype="SMTP"))
    result = submit(logon, msg)
    assert result.code == HResult.S_OK
    one, two, other = msg.recipients
    for r in (one, two):
        assert r.mark is not None and not r.mark.delivered
        assert r.mark.text == "no such fax line"
        assert r.mark.reason == NDRReason.TRANSFER_FAILED
        assert r.mark.diag == NDRDiag.NO_DIAGNOSTIC
    assert other.mark is None


def test_exit_code_text_when_stderr_is_empty(tmp_path: Path) -> None:
    logon = exit_logon(tmp_path, 3, "")
    msg = make_message(rcpt("+1"))
    assert submit(logon, msg).code == HResult.S_OK
    mark = msg.recipients[0].mark
    assert mark is not None and not mark.delivered
    assert mark.text == "exit code 3"


def test_long_stderr_is_cut(tmp_path: Path) -> None:
    noisy = script(tmp_path, "noisy.py", "import sys\nsys.stderr.write('e' * 100000)\nsys.exit(2)\n")
    logon = make_logon(tmp_path, command=[PY, str(noisy)])
    msg = make_message(rcpt("+1"))
    assert submit(logon, msg).code == HResult.S_OK
    mark = msg.recipients[0].mark
    assert mark is not None and mark.text == "e" * 2000


def test_command_ignoring_large_stdin(tmp_path: Path) -> None:
    logon = make_logon(tmp_path, command=[PY, "-c", "import sys; sys.exit(0)"])
    msg = make_message(rcpt("+1"), body="x" * 2_000_000)
    assert submit(logon, msg).code == HResult.S_OK
    mark = msg.recipients[0].mark
    assert mark is not None and mark.delivered


def test_a_command_that_times_out_fails_its_recipients_outcome_unknown(tmp_path: Path) -> None:
    sleeper = script(tmp_path, "sleeper.py", "import time\ntime.sleep(30)\n")
    logon = make_logon(tmp_path, command=[PY, str(sleeper)], timeout=0.5)
    msg = make_message(rcpt("+1"), rcpt("+2"))
    started = time.monotonic()
    result = submit(logon, msg)
    assert time.monotonic() - started < 10  # killed, not waited for
    # It had the message and may have sent it: failed for good, never run again at a retry.
    assert result.code == HResult.S_OK
    for r in msg.recipients:
        assert r.mark is not None and not r.mark.delivered
        assert r.mark.text.startswith("Outcome unknown: the command ")
        assert "did not finish within 0.5 s" in r.mark.text and "not run again" in r.mark.text
    assert "outcome unknown" in logon.status.last_error


def _kill_leftover(pidfile: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell")
@pytest.mark.parametrize("reads_stdin", [True, False])
def test_the_exit_status_counts_even_when_a_background_process_holds_the_pipes(
    tmp_path: Path, reads_stdin: bool
) -> None:
    # The command exits 0 at once; the process it leaves behind keeps its stderr (and stdin)
    # open. Waiting for their end made this a timeout, run again at every retry.
    pidfile = tmp_path / "leftover.pid"
    body = "cat >/dev/null; " if reads_stdin else ""
    command = ["/bin/sh", "-c", body + f'sleep 30 & echo $! > "{pidfile}"; exit 0']
    logon = make_logon(tmp_path, command=command, timeout=5)
    unraisable: list[Any] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        # More than a pipe holds, so writing it waits for a reader when the command reads nothing.
        msg = make_message(rcpt("+1"), body="x" * 1_000_000)
        result = submit(logon, msg)
        gc.collect()  # a pipe left open would now be closed on the closed loop: "Event loop is closed"
    finally:
        sys.unraisablehook = old_hook
        _kill_leftover(pidfile)
    assert result.code == HResult.S_OK
    mark = msg.recipients[0].mark
    assert mark is not None and mark.delivered
    assert unraisable == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell")
def test_stderr_written_before_exit_is_the_ndr_text_despite_a_background_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "leftover.pid"
    command = ["/bin/sh", "-c", f'cat >/dev/null; sleep 30 & echo $! > "{pidfile}"; echo "line busy" >&2; exit 3']
    logon = make_logon(tmp_path, command=command, timeout=5)
    try:
        msg = make_message(rcpt("+1"))
        assert submit(logon, msg).code == HResult.S_OK
    finally:
        _kill_leftover(pidfile)
    mark = msg.recipients[0].mark
    assert mark is not None and not mark.delivered and mark.text == "line busy"


ENV_DUMP = """\
import json, os, sys
sys.stdin.buffer.read()
with open(sys.argv[1], "w") as f:
    json.dump(dict(os.environ), f)
"""


def test_a_command_gets_only_the_allowed_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIL_PASSWORD", "mail-secret")
    monkeypatch.setenv("PGPASSWORD", "pg-secret")
    monkeypatch.setenv("FAX_DEVICE", "/dev/ttyS1")
    monkeypatch.setenv("UNLISTED", "no")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("TZ", "Europe/Paris")
    out = tmp_path / "env.json"
    command = [PY, str(script(tmp_path, "env_dump.py", ENV_DUMP)), str(out)]
    logon = make_logon(tmp_path, command=command, environment=["FAX_DEVICE", "NOT_SET_AT_ALL"])
    msg = make_message(rcpt("+1"))
    assert submit(logon, msg).code == HResult.S_OK
    env = json.loads(out.read_text())
    assert "MAIL_PASSWORD" not in env and "PGPASSWORD" not in env and "UNLISTED" not in env
    assert "NOT_SET_AT_ALL" not in env
    assert env["FAX_DEVICE"] == "/dev/ttyS1"
    assert env["PATH"] == os.environ["PATH"]
    assert env["LC_TIME"] == "C" and env["TZ"] == "Europe/Paris"
    assert env["POSTROOM_PROFILE"] == str(tmp_path)
    assert not [name for name in env if "PASSWORD" in name]


def test_missing_command_is_a_configuration_error_not_a_network_error(tmp_path: Path) -> None:
    """Retrying every few minutes for days cannot bring a program into being: the messages wait,
    and the transport's status row says why, until the profile changes."""
    logon = make_logon(tmp_path, command=[str(tmp_path / "no-such-program"), "--flag"])
    msg = make_message(rcpt("+1"))
    result = submit(logon, msg)
    assert result.code == HResult.MAPI_E_UNCONFIGURED
    assert result.reason.startswith("cannot run ")
    assert logon.status.last_error == result.reason
    assert "no-such-program" in result.reason
    assert msg.recipients[0].mark is None


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_non_executable_command_is_a_configuration_error(tmp_path: Path) -> None:
    prog = script(tmp_path, "not-executable.sh", "#!/bin/sh\nexit 0\n")
    prog.chmod(0o644)
    logon = make_logon(tmp_path, command=[str(prog)])
    result = submit(logon, make_message(rcpt("+1")))
    assert result.code == HResult.MAPI_E_UNCONFIGURED
    assert result.reason.startswith("cannot run ")


@pytest.mark.skipif(sys.platform == "win32", reason="shell script")
def test_shell_script_command(tmp_path: Path) -> None:
    out = tmp_path / "stdin.eml"
    prog = script(tmp_path, "deliver.sh", f'#!/bin/sh\ncat > "{out}"\necho "$@" > "{out}.args"\nexit 0\n')
    prog.chmod(0o755)
    logon = make_logon(tmp_path, command=[str(prog)])
    msg = make_message(rcpt("+1"), rcpt("+2"), subject="Shell")
    assert submit(logon, msg).code == HResult.S_OK
    assert email.message_from_bytes(out.read_bytes(), policy=email.policy.default)["Subject"] == "Shell"
    assert Path(f"{out}.args").read_text() == "+1 +2\n"


def test_service_add_refuses_a_command_that_is_missing_or_not_executable(tmp_path: Path) -> None:
    missing = PipeProvider.setup_problems({"command": [str(tmp_path / "nope")], "address_types": "FAX"}, tmp_path)
    assert missing == [f"the command {str(tmp_path / 'nope')!r} was not found"]
    prog = script(tmp_path, "plain.sh", "#!/bin/sh\nexit 0\n")
    prog.chmod(0o644)
    assert PipeProvider.setup_problems({"command": [str(prog)], "address_types": "FAX"}, tmp_path) == [
        f"the command {str(prog)!r} is not executable"
    ]
    prog.chmod(0o755)
    assert PipeProvider.setup_problems({"command": [str(prog)], "address_types": "FAX"}, tmp_path) == []


def test_a_command_that_timed_out_is_not_run_again_and_its_sender_learns_why(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    slow = script(tmp_path, "slow.py", f"import time\nopen({str(runs)!r}, 'a').write('run\\n')\ntime.sleep(30)\n")
    profile = Profile.create(tmp_path / "p")
    profile.add_service("pipe", "fax", {"command": [PY, str(slow)], "address_types": ["FAX"], "timeout": 0.5})
    profile.save()
    with postroom.logon(profile) as session:
        mid = session.create_message("Cover", "page").to("FAX:+15551234").submit()
        summary = session.deliver()
        assert (summary.delivered, summary.failed, summary.waiting) == (0, 1, 0)
        assert session.retry() == 0  # nothing left to retry
        session.deliver()
        assert [s.state for s in session.recipient_states(mid)] == [RecipientState.FAILED]
        (ndr,) = session.list_messages("Inbox")
        text = str(session.open_message(ndr.id).recipients[0].get(T.PR_REPORT_TEXT))
        assert text.startswith("Outcome unknown: the command ")
    assert runs.read_text() == "run\n"


OVERLAP = """\
import os, sys, time
running = sys.argv[1]
sys.stdin.buffer.read()
mine = os.path.join(running, str(os.getpid()))
open(mine, "w").close()
time.sleep(0.5)
with open(running + ".seen", "a") as f:
    f.write(f"{len(os.listdir(running))}\\n")
os.remove(mine)
"""


def test_max_processes_bounds_how_many_commands_run_at_once(tmp_path: Path) -> None:
    running = tmp_path / "running"
    running.mkdir()
    command = [PY, str(script(tmp_path, "overlap.py", OVERLAP)), str(running)]
    logon = make_logon(tmp_path, command=command, max_processes=2)
    messages = [make_message(rcpt(f"+1555000{i}")) for i in range(6)]

    async def all_at_once() -> list[SubmitResult]:
        return await asyncio.gather(*(logon.submit_message(m, 0) for m in messages))

    assert all(r.code == HResult.S_OK for r in asyncio.run(all_at_once()))
    assert all(r.mark is not None and r.mark.delivered for m in messages for r in m.recipients)
    seen = [int(n) for n in (tmp_path / "running.seen").read_text().split()]
    assert len(seen) == 6 and max(seen) <= 2, seen
    assert (
        PipeProvider.validate_options({"command": ["p"], "address_types": "*", "max_processes": "3"})["max_processes"]
        == 3
    )
    assert logon.config.max_processes == 2 and make_logon(tmp_path, command=command).config.max_processes >= 1


def test_an_addresses_pattern_is_the_transports_scope(tmp_path: Path) -> None:
    logon = make_logon(tmp_path, command=["true"], address_types=["FAX"], addresses=r"\+1[0-9]+")
    scope = logon.address_types().scope
    assert scope is not None and scope.takes("FAX", "+15551234") and not scope.takes("FAX", "+4930123")
    with pytest.raises(MAPIError) as err:
        PipeProvider.validate_options({"command": "true", "address_types": "FAX", "addresses": "(["})
    assert err.value.code == HResult.MAPI_E_INVALID_PARAMETER and "regular expression" in err.value.message
