"""The `postroom` command group and its error handling: one line on stderr, never a traceback."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import click

from .. import __version__
from ..mapi.codes import MAPIError
from .context import App
from .lazy import LazyCommand, LazyGroup
from .output import one_line

EXIT_OK = 0
EXIT_DELIVERY_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

#: Every subcommand: its module and attribute under postroom.cli, and its summary in `--help`.
#: A module is imported only when its command runs (cli/lazy.py says why).
COMMANDS = {
    "init": LazyCommand("admin", "init", "Create a profile."),
    "service": LazyCommand("admin", "service", "Add, list, change and remove message services (transports)."),
    "order": LazyCommand("admin", "order", "Show or set the transport order."),
    "adrtypes": LazyCommand("admin", "adrtypes", "List the address types the transports register."),
    "identity": LazyCommand(
        "identity", "identity", "Show, set or clear who your mail is from (the profile's identity)."
    ),
    "route": LazyCommand("admin", "route", "Dry run: which transports would take each address."),
    "status": LazyCommand("admin", "status", "Show the status table: one status row per component."),
    "send": LazyCommand("send", "send", "Compose a message in the Outbox and submit it."),
    "queue": LazyCommand("messages", "queue", "Show the outgoing queue."),
    "hold": LazyCommand("queueops", "hold", "Hold a queued message: no spooler sends it until `postroom release ID`."),
    "release": LazyCommand(
        "queueops",
        "release",
        "Release a held message: it is due at once (or, with --as-delivered, finished as sent).",
    ),
    "retry": LazyCommand("queueops", "retry", "Make a waiting message due now, ignoring its retry backoff."),
    "cancel": LazyCommand("queueops", "cancel", "Take a submitted message back before it is sent (AbortSubmit)."),
    "flush": LazyCommand("queueops", "flush", "Send everything waiting for one transport now."),
    "folders": LazyCommand("messages", "folders", "List the folders of the message store."),
    "list": LazyCommand("messages", "list_", "List the messages in a folder."),
    "show": LazyCommand("messages", "show", "Show a message, its recipients' delivery states and its history."),
    "export": LazyCommand(
        "messages",
        "export",
        "Write a message as RFC 5322 (MIME) to stdout, or as a .msg or TNEF file; "
        "or a whole folder as an mbox file or a Maildir directory.",
    ),
    "import": LazyCommand(
        "importing", "import_", "Import messages: .eml and .msg files, mbox files and Maildir directories."
    ),
    "spooler": LazyCommand("spool", "spooler", "Run the spooler over the outgoing queue."),
    "serve": LazyCommand(
        "serve",
        "serve",
        "Run a server in front of the profile: the SMTP submission listener, the status page or the submit socket.",
    ),
    "store": LazyCommand(
        "store", "store", "The message store: migrate its schema, or copy it between SQLite and PostgreSQL."
    ),
    "online": LazyCommand("protocol", "online", "Go online: submitted messages are passed to the transports at once."),
    "offline": LazyCommand(
        "protocol", "offline", "Go offline: submitted messages wait in the Outbox for `postroom sendreceive`."
    ),
    "sendreceive": LazyCommand(
        "protocol",
        "sendreceive",
        "Send/Receive: flush the queues of a group's transports, one by one in transport order.",
    ),
    "group": LazyCommand(
        "protocol",
        "group",
        "Send/Receive groups: which transports `sendreceive` flushes, and how, online and offline.",
    ),
    "receive": LazyCommand(
        "protocol", "receive", "Fetch inbound mail once from every transport that may be called now."
    ),
    "receive-folder": LazyCommand(
        "protocol", "receive_folder", "Receive folders: which folder incoming messages of a class go to."
    ),
    "watch": LazyCommand(
        "protocol", "watch", "Print one line per new message, delivered into any folder by any process."
    ),
}


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    no_args_is_help=True,
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="The profile directory (it must exist; see `init`). Default: $POSTROOM_PROFILE, else the "
    "default profile in your data directory, created on first use.",
)
@click.option("--json", "json_mode", is_flag=True, help="Machine output: one JSON document on stdout.")
@click.version_option(__version__, "--version", prog_name="postroom")
@click.pass_context
def cli(ctx: click.Context, profile_dir: Path | None, json_mode: bool) -> None:
    """postroom: a MAPI messaging subsystem.

    You write a message into the Outbox and submit it; the spooler offers each recipient to
    the transports (providers that deliver, e.g. into Maildirs or through a command) in
    transport order, by address type (SMTP, FAX, …: what comes before the colon of an address).
    What no transport takes comes back to you as an NDR (non-delivery report) in the Inbox.
    A profile holds the transports and the message store.

    \b
    Start with:
      postroom send --to user@localhost --subject hi --body 'hello'
      postroom show 1
    """
    app = App(profile_dir, json_mode)
    ctx.obj = app
    ctx.call_on_close(app.close)


def _fail(message: str, exit_code: int, code: str | None = None, hresult: int | None = None) -> int:
    app = App.current
    if app is not None and app.json:
        try:
            error = {"code": code, "hresult": f"0x{hresult:08X}" if hresult is not None else None, "message": message}
            click.echo(json.dumps({"error": error}, ensure_ascii=False))
        except OSError:
            pass
    text = f"{code}: {message}" if code else message
    click.echo(f"postroom: error: {one_line(text)}", err=True)
    return exit_code


def quiet_library_logs() -> None:
    """Keep the connection pool's own warnings out of the output, unless POSTROOM_DEBUG is set.

    psycopg_pool warns, with libpq's whole multi-line message, at every failed reconnect and
    every broken connection it discards: during a database outage that is a screenful a
    minute. postroom says it itself, once, as MAPI_E_NETWORK_ERROR or the spooler daemon's
    "message store unreachable … / reachable again" lines (spooler/outage.py).
    """
    if not os.environ.get("POSTROOM_DEBUG"):
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def _interrupted_or(code: int) -> int:
    """A command whose work a signal cut short exits 130, after saying what it did get done."""
    if App.current is not None and App.current.interrupted and code in (EXIT_OK, 1):
        click.echo("postroom: interrupted; what was in flight finished, the rest waits in the queue", err=True)
        return EXIT_INTERRUPTED
    return code


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit code.

    0: done (every recipient delivered or waiting); 1: a recipient failed (an NDR was made);
    2: usage error, bad input or a MAPI error; 3: an internal error (a bug); 130: interrupted.
    """
    App.current = None
    quiet_library_logs()
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="postroom", standalone_mode=False)
        code = result if isinstance(result, int) else EXIT_OK
        return _interrupted_or(code)
    except click.exceptions.Exit as exc:
        return _interrupted_or(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        return EXIT_OK
    except click.exceptions.Abort:
        click.echo("postroom: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return _fail(exc.format_message() + hint, EXIT_USAGE)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except MAPIError as exc:
        return _fail(exc.message, EXIT_USAGE, exc.code.name, exc.hresult)
    except KeyboardInterrupt:
        click.echo("postroom: interrupted", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`postroom export 3 | head`): say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except Exception as exc:
        if os.environ.get("POSTROOM_DEBUG"):
            traceback.print_exc()
        return _fail(
            f"internal error: {type(exc).__name__}: {exc} (set POSTROOM_DEBUG=1 for the traceback)", EXIT_INTERNAL
        )


def main() -> None:
    """The console script `postroom`."""
    sys.exit(run())
