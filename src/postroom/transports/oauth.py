"""OAuth2 for a transport's AUTH: where the access token comes from, and the SASL XOAUTH2 and
OAUTHBEARER (RFC 7628) initial responses that carry it.

Gmail and Microsoft 365 refuse passwords; they take an access token that lives about an hour.
postroom does not run the OAuth dance itself: like msmtp's `passwordeval`, it asks a command
that prints a fresh token (`token_command`, e.g. an oauth2 helper holding the refresh token), or
reads a file another program keeps fresh (`token_file`). The token is fetched for each new
connection, and once more when the server refuses it, since a refused token is most often an
expired one. It is a `Secret`: never in a log, a status row or a traceback's locals.

The smtp transport runs on the event loop (`TokenSource.token`); the imap and pop3 transports
run in a worker thread on blocking clients (`TokenSource.token_now`). Both read the token the
same way (`_first_line`) and build the same SASL messages (`sasl_message`).
"""

from __future__ import annotations

import asyncio
import base64
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..mapi.codes import HResult, MAPIError
from .options import Secret, resolve_path
from .options import invalid as _invalid
from .options import path as _path

#: How long a token command may take before the connection counts as failed.
TOKEN_COMMAND_TIMEOUT = 30.0


class Mechanism(StrEnum):
    """The SASL mechanisms that carry a bearer token."""

    XOAUTH2 = "XOAUTH2"
    OAUTHBEARER = "OAUTHBEARER"


OPTION_HELP = {
    "token_command": "OAuth2: a command (a list, or a string split like a shell) that prints a fresh access token",
    "token_file": "OAuth2: a file holding the access token; relative to the profile directory",
    "oauth_mechanism": "OAuth2: 'xoauth2' (default; Gmail, Microsoft 365) or 'oauthbearer' (RFC 7628)",
}


def token_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The checked OAuth2 options: a token source (one of two) and the mechanism."""
    out: dict[str, Any] = {}
    if "token_command" in options and "token_file" in options:
        raise _invalid("options 'token_command' and 'token_file' exclude each other: give one of them")
    if "token_command" in options:
        value = options["token_command"]
        argv = shlex.split(value) if isinstance(value, str) else value
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
            raise _invalid("option 'token_command' must be a command: a non-empty list of strings, or a string")
        out["token_command"] = argv
    if "token_file" in options:
        out["token_file"] = _path("token_file", options["token_file"])
    if "oauth_mechanism" in options:
        if not out:
            raise _invalid("option 'oauth_mechanism' needs 'token_command' or 'token_file'")
        name = str(options["oauth_mechanism"]).upper()
        if name not in tuple(Mechanism):
            raise _invalid(
                f"option 'oauth_mechanism' is 'xoauth2' or 'oauthbearer', not {options['oauth_mechanism']!r}"
            )
        out["oauth_mechanism"] = name.lower()
    return out


@dataclass(frozen=True)
class TokenSource:
    """Where a service's access token comes from, and the mechanism that sends it."""

    command: tuple[str, ...] | None
    file: Path | None
    mechanism: Mechanism

    @classmethod
    def from_options(cls, opts: Mapping[str, Any], profile_dir: Path) -> TokenSource | None:
        if "token_command" not in opts and "token_file" not in opts:
            return None
        command = opts.get("token_command")
        return cls(
            command=tuple(command) if command else None,
            file=resolve_path(opts.get("token_file"), profile_dir),
            mechanism=Mechanism(str(opts.get("oauth_mechanism", "xoauth2")).upper()),
        )

    async def token(self) -> Secret:
        """A token now: the command's first line of output, or the file's; MAPI_E_FAILONEPROVIDER
        (with the reason, never the token) when there is none."""
        text = await _run(self.command) if self.command is not None else self._read_file()
        return self._first_line(text)

    def token_now(self) -> Secret:
        """`token()` for a blocking caller (a transport on a worker thread, no event loop)."""
        text = _run_now(self.command) if self.command is not None else self._read_file()
        return self._first_line(text)

    def _read_file(self) -> str:
        assert self.file is not None
        try:
            return self.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise _no_token(f"cannot read the token file {self.file} (option 'token_file'): {why}") from None

    def _first_line(self, text: str) -> Secret:
        lines = text.strip().splitlines()
        value = lines[0].strip() if lines else ""
        if not value:
            where = "the token command printed" if self.command is not None else "the token file holds"
            raise _no_token(f"{where} no access token")
        return Secret(value)


async def _run(command: tuple[str, ...]) -> str:
    name = command[0]
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise _no_token(f"cannot run the token command {name!r}: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TOKEN_COMMAND_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise _no_token(f"the token command {name!r} did not finish in {TOKEN_COMMAND_TIMEOUT:g} s") from None
    return _command_output(name, proc.returncode, out, err)


def _run_now(command: tuple[str, ...]) -> str:
    name = command[0]
    try:
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, timeout=TOKEN_COMMAND_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise _no_token(f"the token command {name!r} did not finish in {TOKEN_COMMAND_TIMEOUT:g} s") from None
    except OSError as exc:
        raise _no_token(f"cannot run the token command {name!r}: {exc.strerror or exc}") from None
    return _command_output(name, done.returncode, done.stdout, done.stderr)


def _command_output(name: str, returncode: int | None, out: bytes, err: bytes) -> str:
    """What the token command printed; MAPI_E_FAILONEPROVIDER with its last word on stderr when it failed."""
    if returncode != 0:
        said = err.decode("utf-8", "replace").strip().splitlines()
        raise _no_token(f"the token command {name!r} exited {returncode}" + (f": {said[-1]}" if said else ""))
    return out.decode("utf-8", "replace")


def _no_token(text: str) -> MAPIError:
    return MAPIError(HResult.MAPI_E_FAILONEPROVIDER, text)


def sasl_message(mechanism: Mechanism, user: str, token: Secret, host: str, port: int) -> bytes:
    """The client's first SASL message of <mechanism> for `user` with `token` (not yet base64:
    imaplib encodes it itself)."""
    if mechanism is Mechanism.XOAUTH2:
        raw = f"user={user}\x01auth=Bearer {token.reveal()}\x01\x01"
    else:  # RFC 7628 §3.1: a GS2 header naming the user, then key=value pairs
        raw = f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token.reveal()}\x01\x01"
    return raw.encode("utf-8")


def initial_response(mechanism: Mechanism, user: str, token: Secret, host: str, port: int) -> bytes:
    """The base64 initial response of AUTH <mechanism> for `user` with `token`."""
    return base64.b64encode(sasl_message(mechanism, user, token, host, port))


#: What a client answers an error challenge with, to get the final failure reply: XOAUTH2 an
#: empty line, OAUTHBEARER a single %x01 (RFC 7628 §3.2.3). Not yet base64 here; `ABORT` is.
ABORT_MESSAGE = {Mechanism.XOAUTH2: b"", Mechanism.OAUTHBEARER: b"\x01"}
ABORT = {mechanism: base64.b64encode(raw) for mechanism, raw in ABORT_MESSAGE.items()}
