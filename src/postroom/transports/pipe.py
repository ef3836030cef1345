"""The `pipe` transport: hands each message to a command, as a mail filter or fax gateway would.

For every message the command runs once, directly (never through a shell), with the
pending recipients' e-mail addresses appended to its arguments and the RFC 5322 form of
the message (CRLF line ends) on its standard input. Its exit status decides:

* 0: every recipient delivered;
* 75 (EX_TEMPFAIL): try the whole message again later;
* anything else: every recipient failed, with the command's standard error as the NDR text.

The exit status is what counts. The standard error is read while the command runs and, once it
has exited, for at most `STDERR_GRACE_SECONDS` more: a background process the command left
behind holding standard error open (or its standard input) does not hold up the answer.

A command that does not exit within `timeout` is killed, with everything it started (its
process group). Its outcome is unknown: it had the message and may have delivered it. Running
it again at every retry could deliver it again and again, so its recipients fail for good with
an NDR that says so ("outcome unknown"), as Postfix's pipe(8) bounces on its time limit. (The
SPI has no per-recipient "outcome unknown" answer; the spooler's own one is for a spooler that
died holding a message.) A command that may legitimately take long needs a longer `timeout`;
one that knows it failed and wants a retry exits 75.

A command that cannot be started at all is a configuration problem: `service add` refuses it,
and at delivery the transport goes into failure and its messages wait (MAPI_E_UNCONFIGURED)
until the profile changes or the program appears, so mail is not lost while someone fixes it.

The command does not inherit postroom's environment, which may hold secrets (MAIL_PASSWORD,
PGPASSWORD, …). It gets only `PATH`, `HOME`, `LANG`, the `LC_*` locale variables and `TZ` (when
set), `POSTROOM_DEBUG` (when set), `POSTROOM_PROFILE` (the profile directory, so a command that
runs `postroom` works on the same profile), and the variables its service names in `environment`.

Options:

* `command`: the command, as a list of arguments or a string split like a shell would (required).
* `address_types`: the address types taken, e.g. `["FAX"]`; `"*"` takes every type (required).
* `timeout`: seconds the command may run before it is killed (default 60).
* `max_processes`: how many commands run at once in one spooler process (default: the number of
  CPUs). A spooler works on many messages at once (`spooler_concurrency`); the others wait for a
  free slot before their command starts, so a batch does not fork a process per message at once.
  The timeout counts from the start of the command, not from the wait.
* `addresses`: a regular expression that every address the transport takes matches in full
  (case-insensitive); the others are never offered to it (its scope), online or offline.
* `environment`: names of further environment variables passed to the command when set, as a
  list or a comma-separated string, e.g. `["FAX_DEVICE"]`. Only names: values stay in the
  environment (or wherever they come from), never in the profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import mime
from ..mapi.codes import MAPIError
from ..mapi.flags import LogonFlags, NDRDiag, NDRReason
from .options import invalid as _invalid
from .options import number as _number
from .options import string_list as _string_list
from .spi import (
    OutboundMessage,
    OutboundRecipient,
    RecipientScope,
    Registration,
    SubmitResult,
    TransportLogon,
    TransportProvider,
    usable_recipients,
)

DEFAULT_TIMEOUT = 60.0
EX_TEMPFAIL = 75
RETRY_SECONDS = 60
#: At most this many characters of the command's standard error go into an NDR.
MAX_ERROR_TEXT = 2000
#: At most this many bytes of standard error are kept; the rest is read and dropped.
_MAX_STDERR_BYTES = 64 * 1024
#: How long standard error is still read after the command exited (a background process it left
#: behind may hold it open for ever).
STDERR_GRACE_SECONDS = 0.5
#: The variables a command inherits from postroom's environment, when set (module docstring).
INHERITED_ENVIRONMENT = ("PATH", "HOME", "LANG", "TZ", "POSTROOM_DEBUG")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_POSIX = sys.platform != "win32"


def _parse_command(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise _invalid(f"option 'command' cannot be split into arguments: {exc}") from exc
    elif isinstance(value, list | tuple):
        argv = list(value)
        for arg in argv:
            if not isinstance(arg, str):
                raise _invalid(f"option 'command': every argument must be a string, not {arg!r}")
    else:
        raise _invalid(f"option 'command' must be a list of arguments or a string, not {value!r}")
    if not argv or not argv[0]:
        raise _invalid("option 'command' names no program")
    if any("\0" in arg for arg in argv):
        raise _invalid("option 'command' contains a NUL character")
    return argv


def _parse_timeout(value: Any) -> float:
    if isinstance(value, bool):
        raise _invalid(f"option 'timeout' must be a number of seconds, not {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _invalid(f"option 'timeout' must be a number of seconds, not {value!r}") from None
    if not isinstance(value, int | float):
        raise _invalid(f"option 'timeout' must be a number of seconds, not {value!r}")
    timeout = float(value)
    if not math.isfinite(timeout) or timeout <= 0:
        raise _invalid(f"option 'timeout' must be a positive number of seconds, not {value!r}")
    return timeout


def default_max_processes() -> int:
    """The number of CPUs: more commands at once than cores only queue for them."""
    return os.cpu_count() or 1


def _parse_environment(value: Any) -> list[str]:
    names = list(dict.fromkeys(_string_list("environment", value)))
    for name in names:
        if not _ENV_NAME.fullmatch(name):
            raise _invalid(f"option 'environment': {name!r} is not an environment variable name")
    return names


def command_environment(extra: tuple[str, ...], profile_dir: Path) -> dict[str, str]:
    """The environment a command runs with: the allow-list, the service's own names, POSTROOM_PROFILE."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name in INHERITED_ENVIRONMENT or name.startswith("LC_") or name in extra
    }
    env["POSTROOM_PROFILE"] = str(profile_dir)
    return env


def _parse_pattern(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid(f"option 'addresses' must be a regular expression, not {value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise _invalid(f"option 'addresses': {value!r} is not a regular expression ({exc})") from None
    return value


def argument_problem(address: str) -> str | None:
    """Why `address` cannot be passed to the command as an argument, or None when it can."""
    if not address:
        return "the recipient has no address"
    if address.startswith("-"):
        # The command would take it for an option (argument injection).
        return f"the address {address!r} starts with '-'"
    if "\0" in address:
        return "the address contains a NUL character"
    return None


@dataclass(frozen=True)
class PipeConfig:
    """The validated options of one pipe service."""

    command: tuple[str, ...]
    address_types: tuple[str, ...] | None  # None: every address type
    timeout: float
    environment: tuple[str, ...] = ()
    addresses: str | None = None  # a pattern every taken address matches (the transport's scope)
    max_processes: int = 1  # commands at once in this process

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PipeConfig:
        opts = PipeProvider.validate_options(options)
        types = opts["address_types"]
        return cls(
            tuple(opts["command"]),
            None if types == ["*"] else tuple(types),
            opts["timeout"],
            tuple(opts.get("environment", ())),
            opts.get("addresses"),
            opts.get("max_processes", default_max_processes()),
        )


@dataclass
class _Outcome:
    returncode: int
    stderr: str


class PipeLogon(TransportLogon):
    def __init__(self, provider: PipeProvider, flags: LogonFlags, config: PipeConfig) -> None:
        super().__init__(provider, flags)
        self.config = config
        scope = None if config.addresses is None else RecipientScope.matching(config.addresses)
        if config.address_types is None:
            self.registration = Registration.any(scope=scope)
        else:
            self.registration = Registration.of(*config.address_types, scope=scope)
        self.status.identity = shlex.join(config.command)
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        if shutil.which(config.command[0]) is None:
            # Only a hint in the status table: the program may be installed before the first message.
            self.status.failed(f"command not found: {config.command[0]}")

    def address_types(self) -> Registration:
        return self.registration

    def _is_mine(self, rcpt: OutboundRecipient) -> bool:
        types = self.config.address_types
        in_types = types is None or rcpt.address_type.upper() in types
        return in_types and self.registration.takes(rcpt.address_type, rcpt.email_address)

    async def submit_message(self, message: OutboundMessage, flags: int) -> SubmitResult:
        taken = [r for r in message.pending() if self._is_mine(r)]
        if not taken:
            return SubmitResult.not_me()
        recipients = usable_recipients(taken, argument_problem, "Cannot pass {address} to the command")
        if not recipients:
            return SubmitResult.ok()

        try:
            data = mime.to_bytes(message.data)
        except MAPIError as exc:  # the message itself is malformed: no retry can help
            for rcpt in recipients:
                rcpt.mark_failed(
                    f"The message cannot be converted to Internet format: {exc.message}",
                    reason=NDRReason.CONVERSION_NOT_PERFORMED,
                    diag=NDRDiag.CONTENT_SYNTAX_IN_ERROR,
                )
            return SubmitResult.ok()
        except OSError as exc:  # an attachment could not be read
            return SubmitResult.wait(RETRY_SECONDS, f"cannot read the message: {exc}")
        argv = [*self.config.command, *(r.email_address for r in recipients)]
        try:
            async with self._slot():
                outcome = await self._run(argv, data)
        except TimeoutError:
            # Outcome unknown: failed for good rather than run again (module docstring).
            text = (
                f"Outcome unknown: the command {self.config.command[0]!r} did not finish within "
                f"{self.config.timeout:g} s and was stopped. It may have delivered the message already, "
                "so it is not run again (that could deliver it twice)."
            )
            self.status.failed(f"{self.config.command[0]}: command timed out (outcome unknown)")
            for rcpt in recipients:
                rcpt.mark_failed(text, reason=NDRReason.TRANSFER_FAILED, diag=NDRDiag.NO_DIAGNOSTIC)
            return SubmitResult.ok()
        except OSError as exc:  # no such program, or not executable: waiting until it is fixed
            text = f"cannot run {self.config.command[0]!r}: {exc.strerror or exc}"
            self.status.failed(text)
            return SubmitResult.unconfigured(text)

        rc = outcome.returncode
        if rc == 0:
            for rcpt in recipients:
                rcpt.mark_delivered()
            return SubmitResult.ok()
        if rc == EX_TEMPFAIL:
            # No wait of our own: the spooler backs off (300 s doubling up to 4000 s by default).
            return SubmitResult.wait(0, outcome.stderr or f"exit code {rc} (temporary failure)")
        text = outcome.stderr or (f"exit code {rc}" if rc >= 0 else f"exit code {rc} (killed by signal {-rc})")
        for rcpt in recipients:
            rcpt.mark_failed(text, reason=NDRReason.TRANSFER_FAILED, diag=NDRDiag.NO_DIAGNOSTIC)
        return SubmitResult.ok()

    def _slot(self) -> asyncio.Semaphore:
        """A slot among `max_processes` for one command, on the running event loop (a logon may
        outlive one loop: each Send/Receive of a session runs its own)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.config.max_processes))
        return self._slots[1]

    async def _run(self, argv: list[str], data: bytes) -> _Outcome:
        """Run `argv` with `data` on stdin; TimeoutError after the configured timeout.

        Every pipe is closed before this returns, whatever the command left running: a pipe
        left to the garbage collector would be closed after the event loop ("Event loop is
        closed"). Standard error is a pipe of our own, so that it can be closed at will."""
        env = command_environment(self.config.environment, self.provider.context.profile_dir)
        err_read, err_write = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=err_write,
                env=env,
                # Its own process group, so a timeout also ends whatever the command started.
                start_new_session=_POSIX,
            )
        except BaseException:
            os.close(err_read)
            raise
        finally:
            os.close(err_write)
        assert proc.stdin is not None
        stdin = proc.stdin
        stderr = asyncio.StreamReader()
        err_file = os.fdopen(err_read, "rb", buffering=0)
        try:
            err_pipe, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(stderr), err_file
            )
        except BaseException:
            err_file.close()
            _kill(proc)
            await proc.wait()
            raise

        async def feed() -> None:
            try:
                stdin.write(data)
                await stdin.drain()
                stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the command did not read all of its input; its exit status tells

        kept = bytearray()

        async def collect() -> None:
            while chunk := await stderr.read(65536):
                if len(kept) < _MAX_STDERR_BYTES:
                    kept.extend(chunk[: _MAX_STDERR_BYTES - len(kept)])

        feeding = asyncio.ensure_future(feed())
        collecting = asyncio.ensure_future(collect())
        try:
            async with asyncio.timeout(self.config.timeout):
                rc = await proc.wait()
            # Exited: what it wrote is in the pipe by now; a process it left behind may keep
            # the pipe open, so EOF is awaited only briefly.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(collecting), STDERR_GRACE_SECONDS)
        finally:
            if proc.returncode is None:  # timed out or cancelled: end it and reap it
                _kill(proc)
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()
            for task in (feeding, collecting):
                task.cancel()
            await asyncio.gather(feeding, collecting, return_exceptions=True)
            if not stdin.transport.is_closing():
                stdin.transport.abort()  # unread input a leftover process would keep us waiting for
            if not err_pipe.is_closing():
                err_pipe.close()
            await asyncio.sleep(0)  # the transports close their pipes in the next loop iteration
        text = bytes(kept).decode("utf-8", errors="replace").strip()[:MAX_ERROR_TEXT]
        return _Outcome(rc, text)


def _kill(proc: asyncio.subprocess.Process) -> None:
    if _POSIX:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            pass
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


class PipeProvider(TransportProvider):
    """Hands each message to a command, with the recipients as arguments."""

    display_name = "Pipe to command"
    option_help: Mapping[str, str] = {
        "command": "the command to run: a list of arguments, or a string split like a shell (required)",
        "address_types": "address types taken, e.g. ['FAX']; '*' takes every address type (required)",
        "timeout": f"seconds the command may run before it is killed; its recipients then fail, outcome unknown "
        f"(default {DEFAULT_TIMEOUT:g})",
        "environment": "names of further environment variables the command gets (it inherits only PATH, HOME, "
        "LANG, LC_*, TZ and POSTROOM_*), e.g. ['FAX_DEVICE']",
        "max_processes": "how many commands run at once in one spooler process; the other messages wait for a "
        "slot (default: the number of CPUs)",
        "addresses": "a regular expression every address it takes matches in full, case-insensitive, e.g. "
        "'\\+1[0-9]+' (default: every address of its types); the others go to the next transport",
    }

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        opts = super().validate_options(options)
        if "command" not in opts:
            raise _invalid("option 'command' is required: the command that takes the messages")
        command = _parse_command(opts["command"])
        if "address_types" not in opts:
            raise _invalid("option 'address_types' is required, e.g. ['FAX'] or '*' for every address type")
        types = [a.upper() for a in _string_list("address_types", opts["address_types"])]
        if "*" in types:
            address_types = ["*"]
        else:
            for adrtype in types:
                if any(c == ":" or c.isspace() or not c.isprintable() for c in adrtype):
                    raise _invalid(f"option 'address_types': {adrtype!r} is not an address type")
            address_types = list(dict.fromkeys(types))
        timeout = _parse_timeout(opts.get("timeout", DEFAULT_TIMEOUT))
        out: dict[str, Any] = {"command": command, "address_types": address_types, "timeout": timeout}
        if "environment" in opts:
            out["environment"] = _parse_environment(opts["environment"])
        if "addresses" in opts:
            out["addresses"] = _parse_pattern(opts["addresses"])
        if "max_processes" in opts:
            out["max_processes"] = int(_number("max_processes", opts["max_processes"], integer=True))
        return out

    @classmethod
    def setup_problems(cls, options: Mapping[str, Any], profile_dir: Path) -> list[str]:
        program = cls.validate_options(options)["command"][0]
        found = shutil.which(program)
        if found is None:
            exists = os.path.sep in program and os.path.exists(program)
            return [f"the command {program!r} " + ("is not executable" if exists else "was not found")]
        return []

    def logon(self, flags: LogonFlags) -> PipeLogon:
        return PipeLogon(self, flags, PipeConfig.from_options(self.context.options))
