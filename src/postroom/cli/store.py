"""`postroom store …`: schema migrations, and moving a whole store between SQLite and PostgreSQL."""

from __future__ import annotations

import click

from ..profile import Profile
from ..storeadmin import copy_store, locate
from ..storeadmin import migrate as migrate_store
from .context import App, CliError, json_option, pass_app


@click.group()
def store() -> None:
    """The message store: migrate its schema, or copy it between SQLite and PostgreSQL.

    \b
    A profile's store is the SQLite file in the profile (the default), or a PostgreSQL
    database shared by every postroom process: `store = "postgresql://user@host/db"` in
    profile.toml. The password is never in the profile: libpq reads PGPASSWORD, ~/.pgpass
    or a service file, or `store_password_env = "VAR"` names the variable that holds it.
    """


def _location_of_profile(app: App, override: str | None) -> str:
    return override if override is not None else str(app.profile().directory)


@store.command("migrate")
@click.option(
    "--store",
    "target",
    metavar="URL_OR_PATH",
    default=None,
    help="Migrate this store (a postgresql:// URL, a profile directory or an SQLite file) instead of the profile's.",
)
@json_option
@pass_app
def migrate(app: App, target: str | None) -> None:
    """Create the store's schema, or bring it to this postroom's version.

    An SQLite store is also migrated whenever it is opened; a PostgreSQL store (shared by
    many processes) is only migrated here: stop every postroom process that uses it first.
    A migration runs in one transaction: the store is migrated completely or not at all.
    """
    where = locate(_location_of_profile(app, target))
    report = migrate_store(where.target, password_env=where.password_env)
    if app.json:
        app.out.document(
            {
                "store": report.store,
                "kind": report.kind,
                "schema_before": report.before,
                "schema": report.after,
                "changed": report.changed,
            }
        )
        return
    if report.before is None:
        app.out.echo(f"Created the {report.kind} store {report.store} (schema {report.after}).")
    elif report.changed:
        app.out.echo(f"Migrated the {report.kind} store {report.store} from schema {report.before} to {report.after}.")
    else:
        app.out.echo(f"The {report.kind} store {report.store} is up to date (schema {report.after}).")


@store.command("copy")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="PROFILE_OR_URL",
    help="The store to copy: a profile directory (its store), a postgresql:// URL or an SQLite file.",
)
@click.option(
    "--to",
    "target",
    required=True,
    metavar="URL",
    help="Where to: a postgresql:// URL, an SQLite file (created) or a profile directory (its store).",
)
@click.option("--replace", is_flag=True, help="Overwrite a target store that is not empty.")
@click.option(
    "--switch",
    is_flag=True,
    help="Afterwards point the --from profile at the copy (its `store` setting); the old store is left as it was.",
)
@json_option
@pass_app
def copy(app: App, source: str, target: str, replace: bool, switch: bool) -> None:
    """Copy a whole store, SQLite to PostgreSQL or back, losing nothing.

    Messages with every property, recipients with their delivery state, attachments (streamed),
    embedded messages, folders, receive folders, history and the queue state are copied with
    their IDs, and the copy keeps the store UID, so entry IDs stay valid. The target is
    written in one transaction; it must be a new (empty) store unless --replace is given.
    Stop the spoolers on the source first.

    \b
    postroom store copy --from ~/.local/share/postroom/profiles/default \\
        --to postgresql://postroom@db.example/postroom --switch
    """
    src = locate(source)
    dst = locate(target)
    if switch and src.profile_dir is None:
        raise CliError("--switch needs --from to be a profile directory")
    report = copy_store(src, dst, replace=replace)
    switched = None
    if switch and src.profile_dir is not None:
        profile = Profile.load(src.profile_dir)
        profile.settings["store"] = dst.target
        if dst.password_env:
            profile.settings["store_password_env"] = dst.password_env
        elif "store_password_env" in profile.settings and not dst.postgres:
            del profile.settings["store_password_env"]
        profile.store_url  # noqa: B018  (refuses a URL with a password before it is saved)
        profile.save()
        switched = str(src.profile_dir)
    if app.json:
        app.out.document(
            {
                "from": report.source,
                "to": report.target,
                "store_uid": report.store_uid,
                "rows": report.rows,
                "attachment_bytes": report.attachment_bytes,
                "switched_profile": switched,
            }
        )
        return
    rows = report.rows
    app.out.echo(
        f"Copied {report.source} to {report.target}: {rows.get('messages', 0)} message(s), "
        f"{rows.get('recipients', 0)} recipient(s), {rows.get('attachments', 0)} attachment(s) "
        f"({report.attachment_bytes} bytes), {rows.get('folders', 0)} folder(s), {rows.get('events', 0)} event(s); "
        f"store UID {report.store_uid}."
    )
    if switched:
        app.out.echo(f"Profile {switched} now uses {report.target}.")
