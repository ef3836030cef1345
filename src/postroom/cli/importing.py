"""`postroom import`: messages from .eml and .msg files, mbox files and Maildir directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import ImportResult, ImportStatus
from .context import App, json_option, pass_app
from .output import progress_line


@click.command(name="import")
@click.argument("paths", metavar="FILE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--folder", metavar="F", help="The folder to import into (a name or ID). Default: the Inbox.")
@json_option
@pass_app
def import_(app: App, paths: tuple[Path, ...], folder: str | None) -> int:
    """Import messages: .eml and .msg files, mbox files and Maildir directories.

    Each message is saved as it is (an RFC 5322 message keeps its exact bytes, as `send --eml`
    keeps them; a .msg keeps its properties, recipients and attachments). An item that cannot be
    read is reported and the import goes on; the exit code is then 1. A message imported before
    (the same bytes) and still in the store is skipped, so running an import again is safe.

    For example: postroom import ~/mail/archive.mbox --folder Archive
    """
    session = app.session()
    target = session.folder(folder) if folder is not None else session.inbox
    counts = dict.fromkeys(ImportStatus, 0)
    failures: list[ImportResult] = []
    progress = progress_line(app.json)
    task = progress.add_task("importing", total=None) if progress is not None else None
    try:
        for result in session.import_files(paths, folder=target):
            counts[result.status] += 1
            if result.status is ImportStatus.FAILED:
                failures.append(result)
                if not app.json:
                    line = f"postroom: cannot import {result.source}: {result.detail}"
                    if progress is not None:
                        progress.console.print(line, markup=False, highlight=False)
                    else:
                        click.echo(line, err=True)
            if progress is not None and task is not None:
                progress.update(task, advance=1, description=f"importing ({counts[ImportStatus.FAILED]} failed)")
    finally:
        if progress is not None:
            progress.stop()
    if app.json:
        doc: dict[str, Any] = {"folder": target.name, **{s.value: n for s, n in counts.items()}}
        doc["failures"] = [{"source": f.source, "reason": f.detail} for f in failures]
        app.out.document(doc)
    else:
        app.out.echo(
            f"imported {counts[ImportStatus.IMPORTED]} into {target.name}, "
            f"skipped {counts[ImportStatus.SKIPPED]} (imported before), failed {counts[ImportStatus.FAILED]}"
        )
    return 1 if failures else 0
