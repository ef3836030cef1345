"""`postroom-sendmail`: the sendmail interface, for every program that hands mail to /usr/sbin/sendmail.

Linked as /usr/sbin/sendmail and /usr/bin/mailq (README, "postroom as the machine's mailer").
It reads a message on stdin and submits it, with the envelope its command line gives
(cli/sendmail_args.py), into one of two places:

* a profile of your own: $POSTROOM_PROFILE, else your default profile (as `postroom send`);
  the message is durable in its store before the command exits 0, and then delivered at once,
  unless a spooler daemon runs on the profile, which delivers it;
* the system profile, through its submit socket ($POSTROOM_SOCKET, else /run/postroom/submit.sock
  when it exists and POSTROOM_PROFILE is not set): `postroom serve submit` owns the store and
  learns who you are from the socket (SO_PEERCRED), so you can submit but neither read nor cancel
  anyone else's mail (cli/submit_socket.py).

Exit codes are sendmail's (cli/sysexits.py). Start-up is kept short: the face, the store and
asyncio are imported only on the path that needs them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..mapi.dsn import RecipientDsnRequest
from ..mapi.flags import MAPI_SUBMITTED
from . import sysexits as X
from .sendmail_args import Invocation, Mode, UsageProblem, message_from_stdin, parse
from .sendmail_smtp import Transaction, serve_stdio
from .submit_socket import queue_remote, submit_remote

if TYPE_CHECKING:
    from .. import Session

#: Where the system profile's submit socket is when $POSTROOM_SOCKET does not say.
SYSTEM_SOCKET = Path("/run/postroom/submit.sock")


USAGE = "postroom-sendmail [-t] [-i] [-f sender] [-F name] [-N dsn] [-R full|hdrs] [-V id] [-v] [-bp|-bs] [--] rcpt …"


def _say(text: str) -> None:
    print(f"postroom-sendmail: {' '.join(text.split())}", file=sys.stderr)


def socket_path() -> Path | None:
    """The submit socket to use, or None for a profile of one's own (see the module docstring)."""
    named = os.environ.get("POSTROOM_SOCKET")
    if named:
        return Path(named)
    if os.environ.get("POSTROOM_PROFILE"):
        return None
    return SYSTEM_SOCKET if SYSTEM_SOCKET.exists() else None


def run(argv: Sequence[str], program: str = "sendmail") -> int:
    """Run the command; returns its sysexits code."""
    try:
        inv = parse(list(argv), program)
    except UsageProblem as exc:
        _say(f"{exc} (usage: {USAGE})")
        return X.EX_USAGE
    where = socket_path()
    try:
        if inv.mode is Mode.SMTP:
            return serve_stdio(lambda raw, transaction: _submit_transaction(where, raw, transaction, inv))
        if inv.mode is Mode.QUEUE:
            return _queue(where)
        raw = message_from_stdin(sys.stdin.buffer.read(), inv.ignore_dots)
        code, text = _submit(where, raw, inv.recipients, inv.sender, inv)
        if code != X.EX_OK or inv.verbose:
            _say(text)
        return code
    except KeyboardInterrupt:
        _say("interrupted")
        return X.EX_TEMPFAIL
    except Exception as exc:
        if os.environ.get("POSTROOM_DEBUG"):
            raise
        _say(f"error: {type(exc).__name__}: {exc}")
        return X.exit_code(exc)


def _submit_transaction(where: Path | None, raw: bytes, transaction: Transaction, inv: Invocation) -> tuple[int, str]:
    """Submit what one `-bs` transaction gave: its MAIL's RET and ENVID in place of -R and -V, each
    RCPT's NOTIFY and ORCPT for that recipient (its NOTIFY in place of -N)."""
    dsn = transaction.dsn
    inv = replace(
        inv,
        ret=str(dsn.ret) if dsn.ret is not None else inv.ret,
        envid=dsn.envid if dsn.envid is not None else inv.envid,
    )
    own = {address: request for address, d in transaction.rcpt_dsn.items() if (request := d.request())}
    return _submit(where, raw, transaction.recipients, transaction.sender, inv, own)


def _submit(
    where: Path | None,
    raw: bytes,
    recipients: Sequence[str],
    sender: str | None,
    inv: Invocation,
    recipient_dsn: Mapping[str, RecipientDsnRequest] | None = None,
) -> tuple[int, str]:
    """Submit one message; (sysexits code, what to say)."""
    if where is not None:
        return submit_remote(
            where,
            raw,
            recipients=recipients,
            extract=inv.extract,
            sender=sender,
            full_name=inv.full_name,
            dsn={"notify": inv.notify, "ret": inv.ret, "envid": inv.envid},
            recipient_dsn=recipient_dsn,
        )
    return submit_here(raw, recipients, sender, inv, uid=os.getuid(), recipient_dsn=recipient_dsn)


def submit_here(
    raw: bytes,
    recipients: Sequence[str],
    sender: str | None,
    inv: Invocation,
    *,
    uid: int,
    recipient_dsn: Mapping[str, RecipientDsnRequest] | None = None,
) -> tuple[int, str]:
    """Submit into a profile of one's own, then deliver at once unless a spooler daemon runs."""
    from .context import App  # start-up: click, only for a profile of one's own

    app = App(None)
    try:
        try:
            session = app.session()
            identity = session.identity()
            mid = session.submit_mime(
                raw,
                recipients=list(recipients),
                extract_recipients=inv.extract,
                envelope_sender=sender,
                default_from=sender if sender and "@" in sender else identity.address,
                full_name=inv.full_name if inv.full_name is not None else identity.name,
                submitter_uid=uid,
                dsn_notify=inv.notify,
                dsn_return=inv.ret,
                envelope_id=inv.envid,
                recipient_dsn=recipient_dsn,
            )
        except Exception as exc:
            return X.exit_code(exc), f"not submitted: {exc}"
        return X.EX_OK, deliver_after_submit(session, mid)
    finally:
        app.close()


def deliver_after_submit(session: Session, mid: int) -> str:
    """Deliver at once, unless a spooler daemon runs: then it delivers. The message is durable
    already, so a failure here is the spooler's to retry (or an NDR), never the caller's."""
    if session.daemon_pid() is not None:
        return f"message {mid} queued (the spooler daemon delivers it)"
    try:
        # The envelope as submitted: the pass deletes a relayed message once handled (postroom.relayed).
        sent_to = [r for r in session.open_message(mid).recipients if not r.recipient_type & MAPI_SUBMITTED]
        summary = session.deliver()
        states = [f"{r.address}: {r.state}" for r in session.delivery_report(mid, sent_to, summary)]
    except Exception as exc:
        return f"message {mid} queued; delivering it now failed ({exc}); the spooler retries it"
    return f"message {mid} submitted; " + ("; ".join(states) or "handled")


def _queue(where: Path | None) -> int:
    if where is not None:
        code, lines = queue_remote(where)
    else:
        from .context import App  # start-up: as in submit_here

        app = App(None)
        try:
            lines = queue_lines(app.session(), None)  # a profile of one's own: all of it is yours
            code = X.EX_OK
        finally:
            app.close()
    print("\n".join(lines) if lines else "Mail queue is empty")
    return code


def queue_lines(session: Session, uid: int | None) -> list[str]:
    """The queue as mailq shows it: only the messages `uid` submitted (all of them for root, or
    for None: a profile of one's own, where `postroom send` submits too)."""
    lines: list[str] = []
    for entry in session.queue():
        if uid not in (None, 0) and session.submitter_uid(entry.id) != uid:
            continue
        submitted = f"{entry.submit_time:%a %b %d %H:%M:%S}" if entry.submit_time else "-"
        why = f" ({entry.last_error})" if entry.last_error else ""
        lines.append(f"{entry.id:<10} {submitted}  {entry.subject}")
        lines.append(
            f"{'':10} {entry.display_to}  [{entry.state.value}, {entry.pending}/{entry.recipients} pending]{why}"
        )
    return lines


def main() -> None:
    """The console script `postroom-sendmail` (also run as `sendmail` or `mailq` through a link)."""
    sys.exit(run(sys.argv[1:], Path(sys.argv[0]).name))
