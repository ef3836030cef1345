"""The `pipe` transport: hands each message to a command, as a mail filter or fax gateway would.

For every message the command runs once, directly (never through a shell), with the
pending recipients' e-mail addresses appended to its arguments and the RFC 5322 form of
the message (CRLF line ends) on its standard input. Its exit status decides:

* 0: every recipient delivered;
* 75 (EX_TEMPFAIL): try the whole message again later;
* anything else: every recipient failed, with the command's standard error as the NDR text.

A command that cannot be started at all is a configuration problem: `service add` refuses it,
and at delivery the transport goes into failure and its messages wait (MAPI_E_UNCONFIGURED)
until the profile changes or the program appears, so mail is not lost while someone fixes it.

Options:

* `command`: the command, as a list of arguments or a string split like a shell would (required).
* `address_types`: the address types taken, e.g. `["FAX"]`; `"*"` takes every type (required).
* `timeout`: seconds the command may run before it is killed (default 60).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
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
from .options import string_list as _string_list
from .spi import (
    OutboundMessage,
    OutboundRecipient,
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

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PipeConfig:
        opts = PipeProvider.validate_options(options)
        types = opts["address_types"]
        return cls(tuple(opts["command"]), None if types == ["*"] else tuple(types), opts["timeout"])


@dataclass
class _Outcome:
    returncode: int
    stderr: str


class PipeLogon(TransportLogon):
    def __init__(self, provider: PipeProvider, flags: LogonFlags, config: PipeConfig) -> None:
        super().__init__(provider, flags)
        self.config = config
        if config.address_types is None:
            self.registration = Registration.any()
        else:
            self.registration = Registration.of(*config.address_types)
        self.status.identity = shlex.join(config.command)
        if shutil.which(config.command[0]) is None:
            # Only a hint in the status table: the program may be installed before the first message.
            self.status.failed(f"command not found: {config.command[0]}")

    def address_types(self) -> Registration:
        return self.registration

    def _is_mine(self, rcpt: OutboundRecipient) -> bool:
        types = self.config.address_types
        return types is None or rcpt.address_type.upper() in types

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
            outcome = await self._run(argv, data)
        except TimeoutError:
            self.status.failed(f"{self.config.command[0]}: command timed out")
            return SubmitResult.wait(RETRY_SECONDS, "command timed out")
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
            return SubmitResult.wait(RETRY_SECONDS, outcome.stderr or f"exit code {rc} (temporary failure)")
        text = outcome.stderr or (f"exit code {rc}" if rc >= 0 else f"exit code {rc} (killed by signal {-rc})")
        for rcpt in recipients:
            rcpt.mark_failed(text, reason=NDRReason.TRANSFER_FAILED, diag=NDRDiag.NO_DIAGNOSTIC)
        return SubmitResult.ok()

    async def _run(self, argv: list[str], data: bytes) -> _Outcome:
        """Run `argv` with `data` on stdin; TimeoutError after the configured timeout."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group, so a timeout also ends whatever the command started.
            start_new_session=_POSIX,
        )
        assert proc.stdin is not None and proc.stderr is not None
        stdin, stderr = proc.stdin, proc.stderr

        async def feed() -> None:
            try:
                stdin.write(data)
                await stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the command did not read all of its input; its exit status tells
            finally:
                stdin.close()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    await stdin.wait_closed()

        async def collect() -> bytes:
            kept = bytearray()
            while chunk := await stderr.read(65536):
                if len(kept) < _MAX_STDERR_BYTES:
                    kept += chunk[: _MAX_STDERR_BYTES - len(kept)]
            return bytes(kept)

        try:
            async with asyncio.timeout(self.config.timeout):
                _, err, rc = await asyncio.gather(feed(), collect(), proc.wait())
        finally:
            if proc.returncode is None:  # timed out or cancelled: end it and reap it
                _kill(proc)
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()
        text = err.decode("utf-8", errors="replace").strip()[:MAX_ERROR_TEXT]
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
        "timeout": f"seconds the command may run before it is killed (default {DEFAULT_TIMEOUT:g})",
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
        return {"command": command, "address_types": address_types, "timeout": timeout}

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
