"""`postroom identity`: who your mail is from (the profile's identity and the accounts' own)."""

from __future__ import annotations

from typing import Any

import click

from .. import Identity, IdentitySource
from .context import App, json_option, pass_app

_WHERE = {
    IdentitySource.PROFILE: "set with `postroom identity set`",
    IdentitySource.FALLBACK: "the fallback: no identity is set; your login name at localhost",
}


def _accounts(app: App) -> list[dict[str, str]]:
    """The accounts (services) with a from_address of their own: their mail is from that instead."""
    return [
        {"service": s.name, "name": str(s.options.get("from_name") or ""), "address": str(s.options["from_address"])}
        for s in app.session().transport_order()
        if s.options.get("from_address")
    ]


def _show(app: App, who: Identity) -> None:
    accounts = _accounts(app)
    if app.json:
        data: dict[str, Any] = {"name": who.name, "address": who.address, "source": who.source.value}
        app.out.document({**data, "accounts": accounts})
        return
    app.out.echo(f"From: {who}  ({_WHERE.get(who.source, who.source.value)})")
    for account in accounts:
        shown = f"{account['name']} <{account['address']}>" if account["name"] else account["address"]
        app.out.echo(f"  mail sent by account {account['service']!r} is from {shown} (its from_address)")


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def identity(ctx: click.Context) -> None:
    """Show, set or clear who your mail is from (the profile's identity).

    `identity` shows it; `identity set NAME ADDRESS` and `identity clear` change it.

    A message's From is the sender it names itself (`send --from`, the From of `send --eml`),
    else the from_address of the account (smtp service) that sends it, else this identity,
    else the fallback: your login name ($LOGNAME, $USER, the passwd entry, or uid<N>) at
    localhost. Message-IDs are made in the From address's domain.
    """
    if ctx.invoked_subcommand is None:
        app = ctx.find_object(App) or App()
        _show(app, app.session().identity())


@identity.command("set")
@click.argument("name")
@click.argument("address")
@json_option
@pass_app
def identity_set(app: App, name: str, address: str) -> None:
    """Set the profile's identity: NAME (may be "") and ADDRESS (name@domain).

    A bad address, or a name with a line break or control character, is refused
    (MAPI_E_INVALID_PARAMETER, exit code 2) and nothing changes.
    """
    _show(app, app.session().set_identity(name, address))


@identity.command("clear")
@json_option
@pass_app
def identity_clear(app: App) -> None:
    """Forget the profile's identity: mail is from the fallback identity again."""
    _show(app, app.session().clear_identity())
