"""Profile administration: init, message services, transport order, address types, routing, status."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from .. import POLICY_HELP, Profile, Service, StatusRow, StatusSource, check_policy, transport_kinds
from ..mapi.flags import ResourceType, StatusCode
from .context import App, json_option, pass_app
from .output import redact, when


def service_data(service: Service, position: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": service.name,
        "kind": service.kind,
        "provider_uid": bytes(service.provider_uid).hex(),
        "prefer_last": service.prefer_last,
        "call_when_offline": service.call_when_offline,
        "poll_seconds": service.poll_seconds,
        "policy": dict(service.policy),
        "options": redact(service.options),
    }
    if position is not None:
        data = {"position": position, **data}
    return data


def options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in redact(options).items())


# --- init ------------------------------------------------------------------------------------


@click.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path), metavar="[DIR]")
@click.option("--empty", is_flag=True, help="Create it without the default `maildir` transport (no services at all).")
@json_option
@pass_app
def init(app: App, directory: Path | None, empty: bool) -> None:
    """Create a profile.

    The profile goes into DIR, else the --profile directory, else the default location.

    A profile is a directory holding profile.toml (its message services, i.e. the
    transports, and their transport order) and the message store (folders, Outbox, queue).
    By default it gets one transport, `local` (kind `maildir`), which delivers mail for
    @localhost into Maildirs under DIR/maildir. It is an error if a profile exists there.
    """
    target = directory if directory is not None else app.target_dir()
    profile = Profile.create(target, with_defaults=not empty)
    if app.json:
        app.out.document({"profile": str(profile.directory), "services": [service_data(s) for s in profile.services]})
        return
    app.out.echo(f"Created profile {profile.name!r} at {profile.directory}")
    for s in profile.services:
        app.out.echo(f"  transport {s.name!r} (kind {s.kind}): {options_text(s.options)}")
    if not profile.services:
        app.out.echo("  no transports yet: add one with `postroom service add KIND NAME --set KEY=VALUE`")


# --- message services ------------------------------------------------------------------------------


@click.group()
def service() -> None:
    """Add, list, change and remove message services (transports).

    A message service brings a transport provider (a "transport"): the component that
    delivers messages for the address types it registers (SMTP, FAX, …). Its KIND is the
    provider installed under that name (see `postroom service kinds`).
    """


def parse_setting(text: str) -> tuple[str, Any]:
    """KEY=VALUE; VALUE is a TOML value when it parses as one (30, true, ["a", "b"]), else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="--set")
    if "\n" in raw or "\r" in raw:
        return key, raw
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw


def _settings(texts: tuple[str, ...], hint: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for text in texts:
        key, value = parse_setting(text)
        if key in values:
            raise click.BadParameter(f"{key!r} is given twice", param_hint=hint)
        values[key] = value
    return values


set_option = click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="An option of the transport; repeatable. VALUE is read as TOML when it parses "
    '(30, true, \'["a.test","b.test"]\'), else as a plain string.',
)
policy_option = click.option(
    "--policy",
    "policies",
    multiple=True,
    metavar="KEY=VALUE",
    help="A delivery policy setting (retry backoff, circuit breaker, throttles); repeatable. "
    "See `postroom service kinds` for the keys.",
)


@service.command("add")
@click.argument("kind")
@click.argument("name")
@set_option
@click.option(
    "--prefer-last/--no-prefer-last",
    default=None,
    help="Put the transport at the end of the default transport order (STATUS_XP_PREFER_LAST); "
    "default: what the provider asks for.",
)
@click.option(
    "--call-when-offline",
    is_flag=True,
    help="Call this transport even offline: it connects at start-up and sends at once (KB 317412).",
)
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="N",
    help="How often to poll it for inbound mail, if it asks to be polled (default 60).",
)
@policy_option
@json_option
@pass_app
def service_add(
    app: App,
    kind: str,
    name: str,
    settings: tuple[str, ...],
    prefer_last: bool | None,
    call_when_offline: bool,
    poll_seconds: float | None,
    policies: tuple[str, ...],
) -> None:
    """Add a transport of KIND named NAME.

    For example, a fax gateway command for the address type FAX, called even offline:

    \b
    postroom service add pipe fax --set command='["/usr/bin/sendfax"]' --set address_types='["FAX"]' \\
        --call-when-offline --policy max_per_hour=60
    """
    options = _settings(settings, "--set")
    policy = check_policy(_settings(policies, "--policy"))
    session = app.session()
    added = session.add_service(
        kind,
        name,
        options,
        prefer_last=prefer_last,
        call_when_offline=call_when_offline,
        poll_seconds=poll_seconds,
        policy=policy,
    )
    order = session.transport_order()
    if app.json:
        app.out.document({"service": service_data(added), "transport_order": [s.name for s in order]})
        return
    app.out.echo(f"Added transport {added.name!r} (kind {added.kind}, provider UID {bytes(added.provider_uid).hex()})")
    if added.call_when_offline:
        app.out.echo("  called even offline (call-when-offline)")
    if added.policy:
        app.out.echo(f"  policy: {options_text(added.policy)}")
    app.out.echo(f"Transport order: {', '.join(s.name for s in order)}")


@service.command("set")
@click.argument("name")
@set_option
@click.option(
    "--call-when-offline/--no-call-when-offline",
    default=None,
    help="Call this transport even offline (or not).",
)
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="N",
    help="How often to poll it for inbound mail, if it asks to be polled.",
)
@policy_option
@json_option
@pass_app
def service_set(
    app: App,
    name: str,
    settings: tuple[str, ...],
    call_when_offline: bool | None,
    poll_seconds: float | None,
    policies: tuple[str, ...],
) -> None:
    """Change a message service: its options, offline behaviour, polling and delivery policy.

    --set KEY=VALUE changes one option of the transport and --policy KEY=VALUE one policy
    setting; an empty VALUE (`--set KEY=`) removes the key, back to its default. The options
    are checked by the transport kind as for `service add`. A running spooler daemon logs
    the transport on again with the change.
    """
    session = app.session()
    svc = session.profile.service(name)
    options = dict(svc.options)
    for key, value in _settings(settings, "--set").items():
        if value == "":
            options.pop(key, None)
        else:
            options[key] = value
    policy = dict(svc.policy)
    for key, value in _settings(policies, "--policy").items():
        if value == "":
            policy.pop(key, None)
        else:
            policy[key] = value
    svc = session.configure_service(
        name,
        options=options if settings else None,
        policy=check_policy(policy),
        call_when_offline=call_when_offline,
        poll_seconds=poll_seconds,
    )
    if app.json:
        app.out.document({"service": service_data(svc)})
        return
    app.out.echo(f"Changed transport {svc.name!r} (kind {svc.kind})")
    app.out.fields(
        [
            ("options", options_text(svc.options) or "-"),
            ("call when offline", "yes" if svc.call_when_offline else "no"),
            ("poll seconds", f"{svc.poll_seconds:g}"),
            ("policy", options_text(svc.policy) or "(defaults)"),
        ]
    )


@service.command("list")
@json_option
@pass_app
def service_list(app: App) -> None:
    """List the message services.

    For each: name, kind, provider UID, prefer-last, whether it is called offline
    (call-when-offline), options and delivery policy.
    Values of options whose name contains "password" or "secret" are shown as ***.
    """
    services = app.session().services()
    if app.json:
        app.out.document([service_data(s) for s in services])
        return
    app.out.table(
        ["NAME", "KIND", "PROVIDER UID", "PREFER LAST", "OFFLINE", "OPTIONS", "POLICY"],
        [
            [
                s.name,
                s.kind,
                bytes(s.provider_uid).hex(),
                "yes" if s.prefer_last else "no",
                "called" if s.call_when_offline else "waits",
                options_text(s.options),
                options_text(s.policy) or "-",
            ]
            for s in services
        ],
        empty="(no message services: add one with `postroom service add KIND NAME`)",
    )


@service.command("remove")
@click.argument("name")
@json_option
@pass_app
def service_remove(app: App, name: str) -> None:
    """Remove a message service.

    Its transport also leaves the transport order.
    """
    removed = app.session().remove_service(name)
    if app.json:
        app.out.document({"removed": service_data(removed)})
        return
    app.out.echo(f"Removed transport {removed.name!r} (kind {removed.kind})")


@service.command("kinds")
@json_option
@pass_app
def service_kinds(app: App) -> None:
    """List the installed transport kinds, the options each accepts, and the policy keys."""
    kinds = transport_kinds()
    data: list[dict[str, Any]] = [
        {
            "kind": kind,
            "display_name": str(getattr(cls, "display_name", "")),
            "prefer_last": bool(getattr(cls, "prefer_last", False)),
            "options": dict(getattr(cls, "option_help", {}) or {}),
        }
        for kind, cls in sorted(kinds.items())
    ]
    if app.json:
        app.out.document([{**item, "policy": POLICY_HELP} for item in data])
        return
    for item in data:
        app.out.heading(f"{item['kind']}: {item['display_name']}" + (" (prefer last)" if item["prefer_last"] else ""))
        for key, text in item["options"].items():
            app.out.echo(f"  {key}: {text}")
    app.out.heading("delivery policy (--policy KEY=VALUE, every kind)")
    for key, text in POLICY_HELP.items():
        app.out.echo(f"  {key}: {text}")


# --- transport order -------------------------------------------------------------------------


def _show_order(app: App) -> None:
    session = app.session()
    order = session.transport_order()
    explicit = session.has_explicit_order()
    if app.json:
        app.out.document({"explicit": explicit, "transports": [service_data(s, n) for n, s in enumerate(order, 1)]})
        return
    how = (
        "explicit (set with `postroom order set`)"
        if explicit
        else "default: order of addition, prefer-last transports at the end"
    )
    app.out.table(
        ["POS", "TRANSPORT", "KIND", "PREFER LAST", "PROVIDER UID"],
        [
            [str(n), s.name, s.kind, "yes" if s.prefer_last else "no", bytes(s.provider_uid).hex()]
            for n, s in enumerate(order, 1)
        ],
        title=f"Transport order ({how})",
        empty="(no transports)",
    )


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def order(ctx: click.Context) -> None:
    """Show or set the transport order.

    `order` shows it; `order set` and `order reset` change it.

    The transport order decides which transport is offered a recipient first when several
    register its address type; a transport that leaves a recipient alone ("not me") lets the
    next one in the order try.
    """
    if ctx.invoked_subcommand is None:
        _show_order(ctx.find_object(App) or App())


@order.command("set")
@click.argument("names", nargs=-1, required=True, metavar="NAME [NAME ...]")
@json_option
@pass_app
def order_set(app: App, names: tuple[str, ...]) -> None:
    """Set the transport order.

    Name every transport, each exactly once, first one first.

    A missing or repeated transport is MAPI_E_BUSY (as MsgServiceTransportOrder answers);
    an unknown one is MAPI_E_NOT_FOUND.
    """
    app.session().set_transport_order(list(names))
    _show_order(app)


@order.command("reset")
@json_option
@pass_app
def order_reset(app: App) -> None:
    """Go back to the default transport order.

    The default is the order of addition, with prefer-last transports at the end.
    """
    app.session().reset_transport_order()
    _show_order(app)


# --- address types, routing, status --------------------------------------------------------------


@click.command()
@json_option
@pass_app
def adrtypes(app: App) -> None:
    """List the address types the transports register.

    This is EnumAdrTypes over the logged-on transports.

    An address type is the part before the colon of an address (SMTP:a@b.test, FAX:+1555…);
    a transport is only offered recipients of the address types it registered.
    """
    types = app.session().enum_adr_types()
    if app.json:
        app.out.document(types)
        return
    if not types:
        app.out.echo("(no transport registered an address type)")
    for t in types:
        app.out.echo(t)


@click.command()
@click.argument("addresses", nargs=-1, required=True, metavar="ADDRESS...")
@json_option
@pass_app
def route(app: App, addresses: tuple[str, ...]) -> None:
    """Dry run: which transports would take each address.

    For each ADDRESS: the transport it is offered to first, and the ones after it.

    ADDRESS is ADRTYPE:address, "Name <ADRTYPE:address>" or a bare e-mail address (SMTP).
    Nothing is sent. An address no transport takes would get an NDR (non-delivery report).
    """
    answers = app.session().route(addresses)
    data: list[dict[str, Any]] = [
        {
            "input": text,
            "address": a.address.address,
            "address_type": a.address.address_type,
            "email_address": a.address.email_address,
            "display_name": a.address.display_name,
            "offers": [
                {"transport": o.transport, "position": o.position + 1, "matched_by": o.matched_by} for o in a.offers
            ],
            "skipped": [
                {"transport": k.offer.transport, "position": k.offer.position + 1, "reason": k.reason}
                for k in a.skipped
            ],
            "ndr": not a.offers,
        }
        for text, a in zip(addresses, answers, strict=True)
    ]
    if app.json:
        app.out.document(data)
        return
    for item in data:
        app.out.heading(str(item["address"]))
        for skip in item["skipped"]:
            app.out.echo(f"  -  {skip['transport']}: skipped, {skip['reason']}")
        if not item["offers"]:
            app.out.echo("  no transport: NDR")
            continue
        for n, offer in enumerate(item["offers"]):
            role = "offered first" if n == 0 else "then, if it is left alone"
            app.out.echo(
                f"  {n + 1}. {offer['transport']}  (matched by {offer['matched_by']};"
                f" transport order position {offer['position']})  {role}"
            )


def _status_names(code: int) -> str:
    names = [f.name.lower() for f in StatusCode if f.name and f.value and code & f.value == f.value]
    return ", ".join(names) or "-"


def _resource_type(value: int) -> str:
    try:
        return ResourceType(value).name.lower().replace("_provider", "")
    except ValueError:
        return str(value)


def _row(r: StatusRow) -> dict[str, Any]:
    code = int(r.status_code)
    return {
        "name": r.display_name,
        "type": _resource_type(r.resource_type),
        "provider": r.provider_display,
        "status_code": code,
        "status": [n for n in _status_names(code).split(", ") if n != "-"],
        "status_string": r.status_string,
        "identity": r.identity,
        "last_error": r.last_error,
        "last_error_time": r.last_error_time,
    }


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


@click.command()
@click.option(
    "--here",
    is_flag=True,
    help="Log the transports on in this command and show its own rows, even when a spooler daemon published the table.",
)
@json_option
@pass_app
def status(app: App, here: bool) -> None:
    """Show the status table: one status row per component.

    The MAPI subsystem, the spooler (online, or offline with how many messages wait for
    Send/Receive), then each transport: its status bits (available, offline, failure,
    inbound/outbound enabled, active, flushing), its status text, and its last error and when.

    When a spooler daemon runs on the profile, the table it published last is shown: that
    is where the transports really work. Otherwise (or with --here) this command logs the
    transports on itself. Either way a line says who published the table and when.
    """
    session = app.session()
    now = datetime.now(UTC)
    report = session.status_report(here=here)
    rows = [_row(r) for r in report.rows]
    daemon = report.daemon_pid
    published = report.published
    by_daemon = published is not None and published.by_daemon
    published_at = published.time if published is not None else None
    publication = (
        {
            "owner": published.owner,
            "time": published_at,
            "age_seconds": round((now - published_at).total_seconds(), 3) if published_at else None,
            "by_daemon": by_daemon,
        }
        if published is not None
        else None
    )
    if app.json:
        app.out.document(
            {
                "mode": report.mode,
                "source": report.source,
                "daemon": {"running": daemon is not None, "pid": daemon},
                "published": publication,
                "rows": rows,
            }
        )
        return
    app.out.table(
        ["NAME", "TYPE", "STATUS", "STATUS TEXT", "LAST ERROR", "WHEN"],
        [
            [
                r["name"],
                r["type"],
                ", ".join(r["status"]) or "-",
                r["status_string"] or "-",
                r["last_error"] or "-",
                when(r["last_error_time"]),
            ]
            for r in rows
        ],
        empty="(no status rows)",
    )
    app.out.echo()
    if daemon is None:
        app.out.echo("Spooler daemon: not running (`postroom spooler` starts it); rows from this command's logon.")
    elif report.source is StatusSource.DAEMON:
        assert published_at is not None
        app.out.echo(
            f"Spooler daemon: running (pid {daemon}); it published these rows at {when(published_at)} "
            f"({_age((now - published_at).total_seconds())})."
        )
    else:
        app.out.echo(f"Spooler daemon: running (pid {daemon}); rows from this command's logon.")
    if published is not None and not by_daemon and published_at is not None:
        app.out.echo(
            f"Before this command the table was published by {published.owner} at {when(published_at)} "
            f"({_age((now - published_at).total_seconds())})."
        )
