"""The protocol manager from the command line: online/offline, Send/Receive and its groups,
inbound mail (receive, receive folders) and watching for new mail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from .. import (
    DEFAULT_GROUP,
    GroupChange,
    GroupSettings,
    LoadedTransport,
    MessageSummary,
    Mode,
    SendReceiveGroup,
    Session,
    WaitKind,
)
from ..mapi.codes import HResult, MAPIError, NotFound
from .context import App, interruptible, json_option, pass_app, stop_on_signals
from .output import jsonable, when
from .queueops import flush_counts, flush_data, flush_lines

F = TypeVar("F", bound=Callable[..., Any])

# --- online / offline ----------------------------------------------------------------------------


def _mode_change(app: App, mode: Mode) -> None:
    session = app.session()
    previous = session.mode
    session.set_mode(mode)
    waiting = sum(1 for q in session.queue() if q.waiting_for is WaitKind.SEND_RECEIVE)
    callers = [s.name for s in session.services() if s.call_when_offline]
    daemon = session.daemon_pid()
    if app.json:
        app.out.document(
            {
                "mode": mode,
                "previous": previous,
                "waiting_for_send_receive": waiting,
                "call_when_offline": callers,
                "daemon_pid": daemon,
            }
        )
        return
    was = f" (was {previous})" if previous != mode else " (already)"
    if mode is Mode.OFFLINE:
        app.out.echo(f"Offline{was}.")
        text = "Submitted messages wait in the Outbox for `postroom sendreceive`"
        if callers:
            text += f", except for the transports called even offline (call-when-offline): {', '.join(callers)}"
        app.out.echo(text + ".")
        return
    app.out.echo(f"Online{was}. Submitted messages go out at once.")
    if waiting:
        if daemon is not None:
            app.out.echo(
                f"{waiting} message(s) wait for Send/Receive: the spooler daemon (pid {daemon}) sends them once "
                f"the connection has stayed up {session.online_stability_seconds:g} s."
            )
        else:
            app.out.echo(
                f"{waiting} message(s) wait for Send/Receive; no spooler daemon is running: "
                "`postroom sendreceive` sends them now."
            )


@click.command()
@json_option
@pass_app
def online(app: App) -> None:
    """Go online: submitted messages are passed to the transports at once.

    The mode is kept in the profile; a running spooler daemon follows it. Messages left
    waiting from an offline period are sent by the daemon once the connection has stayed up
    a few seconds (a short blip flushes nothing), or now by `postroom sendreceive`.
    """
    _mode_change(app, Mode.ONLINE)


@click.command()
@json_option
@pass_app
def offline(app: App) -> None:
    """Go offline: submitted messages wait in the Outbox for `postroom sendreceive`.

    Transports are logged on without connecting and nothing is passed to them, except
    those added with --call-when-offline (they are called at once, even offline). Waiting
    for Send/Receive is not a failure: nothing gets an NDR for it.
    """
    _mode_change(app, Mode.OFFLINE)


# --- Send/Receive --------------------------------------------------------------------------------

STAGES = {"start": "connecting", "send": "sending", "receive": "receiving", "done": "done"}
STAGE_STYLES = {"waiting": "dim", "connecting": "cyan", "sending": "yellow", "receiving": "yellow", "done": "green"}


class _Progress:
    """Send/Receive progress per transport: a live table on a terminal, plain lines otherwise."""

    def __init__(self, app: App, members: list[str]) -> None:
        self.app = app
        self.stages: dict[str, str] = {name: "waiting" for name in members}
        self.live: Any = None

    def __enter__(self) -> _Progress:
        if self.app.out.rich and self.stages:
            from rich.live import Live

            self.live = Live(self._render(), console=self.app.out.console, refresh_per_second=10)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(None, None, None)

    def _render(self) -> Any:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        table.add_column("TRANSPORT")
        table.add_column("STAGE")
        for name, stage in self.stages.items():
            style = "red" if stage.startswith("failed") else STAGE_STYLES.get(stage, "")
            table.add_row(Text(name), Text(stage, style=style))
        return table

    def __call__(self, stage: str, transport: LoadedTransport, text: str) -> None:
        label = STAGES.get(stage, stage) + (f": {text}" if text else "")
        self.set(transport.name, label)

    def set(self, name: str, label: str) -> None:
        self.stages[name] = label
        if self.live is not None:
            self.live.update(self._render())
        elif not self.app.json:
            self.app.out.echo(f"{name}: {label}")


@click.command()
@click.option("--group", "group_name", default=None, metavar="NAME", help=f'The group (default "{DEFAULT_GROUP}").')
@click.option("--send-only", is_flag=True, help="Only send what waits in the Outbox.")
@click.option("--receive-only", is_flag=True, help="Only fetch inbound mail.")
@json_option
@pass_app
@click.pass_context
def sendreceive(ctx: click.Context, app: App, group_name: str | None, send_only: bool, receive_only: bool) -> None:
    """Send/Receive: flush the queues of a group's transports, one by one in transport order.

    Every transport of the group sends what waits for it and fetches what waits for you,
    offline too: it is connected for the flush (F9 in Outlook). The group's settings for
    the current mode decide whether it sends, receives, or both (see `postroom group list`).
    A summary says how many messages were sent, failed, deferred and received; exit code 1
    when something failed, 2 for an unknown group.
    """
    if send_only and receive_only:
        raise click.UsageError("give --send-only or --receive-only, not both", ctx)
    session = app.session()
    group = session.group(group_name)
    mode = session.mode
    settings = group.settings(mode)
    members = group.members(session.profile)
    with _Progress(app, members) as progress:
        summary = interruptible(
            app,
            lambda stop: session.send_receive(
                group.name, upload=not receive_only, download=not send_only, progress=progress, stop=stop
            ),
        )
        for t in summary.transports:
            if t.error:
                progress.set(t.transport, f"failed: {t.error}")
    if app.json:
        app.out.document({"mode": mode, "included": settings.include, **flush_data(summary)})
    else:
        if not settings.include:
            app.out.echo(
                f"Group {group.name!r} does not take part in Send/Receive while {mode} "
                f"(`postroom group add {group.name!r} --{mode}-include` changes that)."
            )
        elif not members:
            app.out.echo(f"Group {group.name!r} has no transports.")
        for line in flush_lines(summary):
            app.out.echo(line)
        app.out.echo(f"Send/Receive {group.name!r} ({mode}): {flush_counts(summary)}.")
    if not summary.ok:
        ctx.exit(1)


# --- Send/Receive groups --------------------------------------------------------------------------


def _settings_text(s: GroupSettings) -> str:
    if not s.include:
        head = "not in Send/Receive"
    else:
        head = " + ".join(w for w, on in (("send", s.send), ("receive", s.receive)) if on) or "nothing"
    every = f"every {s.every_minutes:g} min" if s.every_minutes else "no schedule"
    return f"{head}; {every}"


def _group_data(session: Session, g: SendReceiveGroup) -> dict[str, Any]:
    return {
        "name": g.name,
        "default": g.name.lower() == DEFAULT_GROUP.lower(),
        "transports": g.transports,
        "members": g.members(session.profile),
        "online": g.online.to_toml(),
        "offline": g.offline.to_toml(),
    }


@click.group()
def group() -> None:
    """Send/Receive groups: which transports `sendreceive` flushes, and how, online and offline.

    A group names transports (or all of them) and, for each mode, whether an explicit
    Send/Receive includes it, whether it sends and receives, and how often the spooler daemon
    runs it by itself (every N minutes; 0 = never). The group "All Accounts" always exists;
    it can be redefined but not removed.
    """


@group.command("list")
@json_option
@pass_app
def group_list(app: App) -> None:
    """List the Send/Receive groups and their online and offline settings."""
    session = app.session()
    groups = session.groups()
    if app.json:
        app.out.document([_group_data(session, g) for g in groups])
        return
    app.out.table(
        ["NAME", "TRANSPORTS", "ONLINE", "OFFLINE"],
        [
            [
                g.name,
                ", ".join(g.members(session.profile)) + (" (all)" if g.transports is None else "") or "(none)",
                _settings_text(g.online),
                _settings_text(g.offline),
            ]
            for g in groups
        ],
    )


def _mode_options(mode: str) -> list[Callable[[F], F]]:
    return [
        click.option(
            f"--{mode}-include/--no-{mode}-include",
            default=None,
            help=f"Part of an explicit Send/Receive while {mode}.",
        ),
        click.option(f"--{mode}-send/--no-{mode}-send", default=None, help=f"Send while {mode}."),
        click.option(f"--{mode}-receive/--no-{mode}-receive", default=None, help=f"Receive while {mode}."),
        click.option(
            f"--{mode}-every",
            type=click.FloatRange(min=0),
            default=None,
            metavar="MINUTES",
            help=f"Run by itself every MINUTES while {mode} (in the spooler daemon); 0 = never.",
        ),
    ]


def mode_options(fn: F) -> F:
    """--online-include/--no-online-include … --offline-every MINUTES."""
    for option in reversed([*_mode_options("online"), *_mode_options("offline")]):
        fn = option(fn)
    return fn


@group.command("add")
@click.argument("name")
@click.option(
    "--transports",
    default=None,
    metavar="A,B",
    help="The group's transports, by name, separated by commas; `all` = every transport.",
)
@mode_options
@json_option
@pass_app
def group_add(
    app: App,
    name: str,
    transports: str | None,
    online_include: bool | None,
    online_send: bool | None,
    online_receive: bool | None,
    online_every: float | None,
    offline_include: bool | None,
    offline_send: bool | None,
    offline_receive: bool | None,
    offline_every: float | None,
) -> None:
    """Add a Send/Receive group, or change one (settings not given stay as they are).

    --transports takes names separated by commas, or `all` for every transport of the
    profile (the default for a new group). An unknown transport is MAPI_E_NOT_FOUND.
    A new group sends and receives in both modes and runs by itself every 5 minutes online.
    A running spooler daemon uses the change from its next start.
    """
    session = app.session()
    updated, created = session.edit_group(
        name,
        transports=None if transports is None else transports.split(","),
        online=GroupChange(online_include, online_send, online_receive, online_every),
        offline=GroupChange(offline_include, offline_send, offline_receive, offline_every),
    )
    members = updated.transports
    if app.json:
        app.out.document({"group": _group_data(session, updated), "created": created})
        return
    verb = "Added" if created else "Changed"
    who = ", ".join(updated.members(session.profile)) or "no transports"
    app.out.echo(f"{verb} Send/Receive group {updated.name!r}: {who}" + (" (all)" if members is None else ""))
    app.out.echo(f"  online:  {_settings_text(updated.online)}")
    app.out.echo(f"  offline: {_settings_text(updated.offline)}")


@group.command("remove")
@click.argument("name")
@json_option
@pass_app
def group_remove(app: App, name: str) -> None:
    """Remove a Send/Receive group ("All Accounts" cannot be removed, only redefined)."""
    found = app.session().remove_group(name)
    if app.json:
        app.out.document({"removed": found.name})
        return
    app.out.echo(f"Removed Send/Receive group {found.name!r}.")


# --- inbound ---------------------------------------------------------------------------------------


@click.command()
@json_option
@pass_app
@click.pass_context
def receive(ctx: click.Context, app: App) -> None:
    """Fetch inbound mail once from every transport that may be called now.

    Each message goes to the receive folder for its class (see `postroom receive-folder`).
    Offline only call-when-offline transports are called; `postroom sendreceive` fetches
    from the others.
    """
    session = app.session()
    got = session.receive()
    if app.json:
        app.out.document({"ok": got.ok, "received": int(got), "errors": list(got.errors), "mode": session.mode})
    else:
        app.out.echo(f"Received {int(got)} message(s).")
        for error in got.errors:
            app.out.echo(f"  failed: {error}")
        if session.mode is Mode.OFFLINE:
            app.out.echo("Offline: only call-when-offline transports were called; `postroom sendreceive` fetches all.")
    if not got.ok:
        ctx.exit(1)


@click.group("receive-folder")
def receive_folder() -> None:
    """Receive folders: which folder incoming messages of a class go to.

    A message goes to the folder registered for the longest dotted prefix of its class
    (case-insensitive): IPM.Note.Fax, then IPM.Note, then IPM, then the default (the Inbox).
    """


@receive_folder.command("list")
@json_option
@pass_app
def receive_folder_list(app: App) -> None:
    """List the receive folders by message class ("" is the default)."""
    rows = app.session().receive_folders()
    if app.json:
        app.out.document([{"message_class": cls, "folder": f.name, "folder_id": f.id} for cls, f in rows])
        return
    app.out.table(
        ["MESSAGE CLASS", "FOLDER"],
        [[cls or "(default)", f.name or f"(folder {f.id})"] for cls, f in rows],
        empty="(no receive folders)",
    )


@receive_folder.command("set")
@click.argument("message_class", metavar="CLASS")
@click.argument("folder")
@click.option("--create", is_flag=True, help="Create FOLDER when there is no folder of that name.")
@json_option
@pass_app
def receive_folder_set(app: App, message_class: str, folder: str, create: bool) -> None:
    """Deliver incoming messages of CLASS (e.g. IPM.Note.Fax) into FOLDER.

    FOLDER is a folder name or ID; an unknown folder is MAPI_E_NOT_FOUND unless --create.
    CLASS "" changes the default receive folder.
    """
    session = app.session()
    try:
        target = session.folder(folder)
    except NotFound:
        if not create:
            raise
        target = session.create_folder(folder)
    session.set_receive_folder(message_class, target.id)
    if app.json:
        app.out.document({"message_class": message_class, "folder": target.name, "folder_id": target.id})
        return
    app.out.echo(f"Messages of class {message_class or '(default)'} now go to {target.name}.")


@receive_folder.command("remove")
@click.argument("message_class", metavar="CLASS")
@json_option
@pass_app
def receive_folder_remove(app: App, message_class: str) -> None:
    """Remove the receive folder of CLASS: its messages follow the next shorter class."""
    session = app.session()
    known = {cls.lower(): cls for cls, _ in session.receive_folders()}
    if message_class.strip().lower() not in known:
        raise MAPIError(HResult.MAPI_E_NOT_FOUND, f"no receive folder is set for class {message_class!r}")
    session.set_receive_folder(message_class, None)
    if app.json:
        app.out.document({"removed": known[message_class.strip().lower()]})
        return
    app.out.echo(f"Removed the receive folder of class {message_class}.")


# --- watch -----------------------------------------------------------------------------------------


def _new_mail_data(session: Session, m: MessageSummary) -> dict[str, Any]:
    folder = None
    if m.folder_id is not None:
        try:
            folder = session.folder(m.folder_id).name
        except MAPIError:
            folder = None
    return {
        "id": m.id,
        "folder": folder,
        "folder_id": m.folder_id,
        "message_class": m.message_class,
        "subject": m.subject,
        "sender": m.sender,
        "to": m.display_to,
        "delivery_time": m.delivery_time,
        "entry_id": m.entry_id,
    }


@click.command()
@json_option
@pass_app
def watch(app: App) -> None:
    """Print one line per new message, delivered into any folder by any process.

    Inbound mail, NDRs and delivery reports: whatever the spooler daemon, a Send/Receive or
    another command delivers on this profile (store notifications, fnevNewMail). Runs until
    Ctrl-C or SIGTERM (exit code 0). With --json: one JSON object per line.
    """
    session = app.session()

    def show(m: MessageSummary) -> None:
        data = _new_mail_data(session, m)
        if app.json:
            click.echo(json.dumps(jsonable(data), ensure_ascii=False))  # click.echo flushes
            return
        stamp = when(m.delivery_time) if m.delivery_time else datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        app.out.echo(
            f"{stamp}  {data['folder'] or '?'}  #{m.id}  {m.message_class}  {m.subject!r}  from {m.sender or '-'}"
        )

    stop = asyncio.Event()
    with stop_on_signals(stop):
        banner = f"watching {session.profile.directory} for new mail; Ctrl-C or SIGTERM stops"
        if app.json:
            click.echo(f"postroom: {banner}", err=True)
        else:
            app.out.echo(banner[0].upper() + banner[1:] + ".")
        session.on_new_mail(show, stop=stop)
