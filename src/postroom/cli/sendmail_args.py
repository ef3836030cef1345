"""The command line of `postroom-sendmail`, read the way sendmail reads it.

Its callers (cron, git send-email, mailx, PHP's mail(), mutt) pass sendmail's own flags, which
are not POSIX getopt's nor click's: `-oi` and `-odi` are one word, `-fADDR` and `-f ADDR` are the
same, `-B8BITMIME` and `-B 8BITMIME` too. So this is a small parser of its own, a pure function
that the tests drive directly; what it refuses is a `UsageProblem` (exit EX_USAGE, 64).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ..mapi.dsn import DsnParameterError, parse_envid, parse_notify, parse_ret


class Mode(StrEnum):
    """What the command is asked to do (sendmail's `-b` letter)."""

    DELIVER = "deliver"  # -bm, the default: read a message from stdin
    QUEUE = "queue"  # -bp, or invoked as `mailq`
    SMTP = "smtp"  # -bs: speak SMTP on stdin/stdout


class UsageProblem(Exception):
    """A command line sendmail would refuse: EX_USAGE."""


@dataclass
class Invocation:
    """What the command line asks for."""

    mode: Mode = Mode.DELIVER
    recipients: list[str] = field(default_factory=list)
    extract: bool = False  # -t
    ignore_dots: bool = False  # -i / -oi: a line with a single dot does not end the message
    sender: str | None = None  # -f / -r
    full_name: str | None = None  # -F
    verbose: bool = False  # -v
    notify: str | None = None  # -N: DSN NOTIFY for every recipient ("never", "success,failure", …)
    ret: str | None = None  # -R: DSN RET ("full" or "hdrs")
    envid: str | None = None  # -V: DSN ENVID


#: Flags that take a value (in the same word or the next one) and are accepted and ignored:
#: -B body type, -L syslog label, -h hop count, -C config file, -X log file, -O option=value,
#: -p protocol, -q queue interval.
_IGNORED_WITH_VALUE = frozenset("BLhCXOpq")
#: The -b modes: -bm delivers (the default), -bp lists the queue, -bs speaks SMTP.
_MODES = {"m": Mode.DELIVER, "p": Mode.QUEUE, "s": Mode.SMTP}


def parse(argv: list[str], program: str = "sendmail") -> Invocation:
    """Read `argv` (without the program name); `program` is the name it was invoked as."""
    inv = Invocation(mode=Mode.QUEUE if program == "mailq" else Mode.DELIVER)
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            inv.recipients.extend(args)
            break
        if not arg.startswith("-") or arg == "-":
            inv.recipients.append(arg)
            continue
        if arg.startswith("--"):
            raise UsageProblem(f"unknown option {arg!r}")
        letter, rest = arg[1], arg[2:]
        if letter == "t" and not rest:
            inv.extract = True
        elif letter == "i" and not rest:
            inv.ignore_dots = True
        elif letter == "v" and not rest:
            inv.verbose = True
        elif letter in ("f", "r"):
            inv.sender = _value(letter, rest, args)
        elif letter == "F":
            inv.full_name = _value(letter, rest, args)
        elif letter in ("N", "R", "V"):
            _dsn_flag(inv, letter, _value(letter, rest, args))
        elif letter == "o":
            # -oi is -i; -odi, -odb, -oem, -oee, -oep, -om, -oQ… and every other -oXvalue is sendmail
            # configuration that means nothing here, so it is accepted and ignored, as Postfix does.
            if not rest:
                raise UsageProblem("option -o needs a letter (e.g. -oi)")
            if rest == "i":
                inv.ignore_dots = True
        elif letter == "e":
            pass  # -em, -ep, -eq, -ew, -ee: how errors are reported; they are reported by exit code
        elif letter == "b":
            if rest not in _MODES:
                raise UsageProblem(f"unsupported mode -b{rest} (only -bm, -bp and -bs)")
            inv.mode = _MODES[rest]
        elif letter in _IGNORED_WITH_VALUE:
            _value(letter, rest, args)
        else:
            raise UsageProblem(f"unknown option {arg!r}")
    return inv


def _dsn_flag(inv: Invocation, letter: str, value: str) -> None:
    """-N, -R, -V: the DSN requests (RFC 3461) of the message, checked here (EX_USAGE when bad)."""
    try:
        if letter == "N":
            parse_notify(value)
            inv.notify = value
        elif letter == "R":
            inv.ret = str(parse_ret(value))
        else:
            inv.envid = parse_envid(value)
    except DsnParameterError as exc:
        raise UsageProblem(f"-{letter}: {exc}") from None


def _value(letter: str, rest: str, args: list[str]) -> str:
    """The value of `-X`: the rest of its word (`-fADDR`), else the next word (`-f ADDR`)."""
    if rest:
        return rest
    if not args:
        raise UsageProblem(f"option -{letter} needs a value")
    return args.pop(0)


def message_from_stdin(data: bytes, ignore_dots: bool) -> bytes:
    """The message in `data`: without -i a line holding a single dot ends it, as in sendmail."""
    if ignore_dots:
        return data
    if data.startswith((b".\n", b".\r\n")) or data in (b".", b".\r"):
        return b""
    ends = [at for at in (data.find(b"\n.\n"), data.find(b"\n.\r\n")) if at >= 0]
    if data.endswith((b"\n.", b"\n.\r")):
        ends.append(data.rfind(b"\n."))
    return data[: min(ends) + 1] if ends else data
