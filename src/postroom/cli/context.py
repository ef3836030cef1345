"""What every command shares: the profile choice, the (lazy) session, the output mode."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .output import Output

if TYPE_CHECKING:
    import asyncio

    from ..profile import Profile
    from ..session import Session

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")


class CliError(click.ClickException):
    """A one-line error for the user about bad input; exit code 2."""

    exit_code = 2


class App:
    """The global options and the session, opened on first use and closed when the command ends."""

    #: The App of the running command, so that errors can honour --json after the context is gone.
    current: App | None = None

    def __init__(self, profile_dir: Path | None = None, json_mode: bool = False) -> None:
        self.profile_dir = profile_dir
        self.out = Output(json_mode)
        self._session: Session | None = None
        self.interrupted = False  # a signal stopped the command's work early (exit 130 at the end)
        App.current = self

    @property
    def json(self) -> bool:
        return self.out.json

    def target_dir(self) -> Path:
        """The profile directory this command works on: --profile, else the default one."""
        # Imported here, not at the top: this module is loaded by every command, also by
        # `postroom --version` and `--help`, which must not load the profile code, the store,
        # the spooler and asyncio (a measured start-up cost: benchmarks/fig9_startup.py).
        from ..profile import default_profile_dir

        return self.profile_dir if self.profile_dir is not None else default_profile_dir()

    def profile(self) -> Profile:
        """--profile and POSTROOM_PROFILE must name an existing profile; the default one is created on first use."""
        from ..profile import PROFILE_FILE, Profile, default_profile_dir, environment_profile_dir  # see target_dir

        if self.profile_dir is not None:
            return Profile.load(self.profile_dir)
        if environment_profile_dir() is not None:
            return Profile.load_from_environment()
        directory = default_profile_dir()
        if (directory / PROFILE_FILE).exists():
            return Profile.load(directory)
        profile = Profile.create(directory)
        click.echo(
            f"postroom: created the default profile at {directory} "
            "(transport 'local' delivers mail for localhost into Maildirs)",
            err=True,
        )
        return profile

    def session(self) -> Session:
        from ..session import logon  # start-up: see target_dir

        if self._session is None:
            self._session = logon(self.profile())
        return self._session

    def session_when_usable(self, stop: asyncio.Event) -> Session | None:
        """The session, once its store can be opened: a full or failing disk is waited out (the spooler
        daemon's start); None when `stop` is set meanwhile."""
        from ..session import logon_when_usable  # start-up: see target_dir

        if self._session is None:
            self._session = logon_when_usable(self.profile(), stop)
        return self._session

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


pass_app = click.make_pass_decorator(App)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        app = ctx.find_object(App)
        if app is not None:
            app.out.json = True


def json_option(fn: F) -> F:
    """`--json` on a subcommand, the same as the global one."""
    return click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_json,
        help="Machine output: one JSON document on stdout.",
    )(fn)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[list[int]]:
    """SIGINT and SIGTERM set `stop` (on the running event loop, thread-safely) instead of killing.

    A second Ctrl-C gives up waiting for the work in flight (KeyboardInterrupt, exit 130).
    Yields the list of signals received.
    """
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        try:
            import asyncio  # loaded by then: the work runs on an event loop (start-up: see target_dir)

            loop = asyncio.get_running_loop()  # the handler runs on the main thread, inside the loop
        except RuntimeError:
            stop.set()  # between loop runs: nobody is waiting on the event yet
        else:
            loop.call_soon_threadsafe(stop.set)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interruptible(app: App, work: Callable[[asyncio.Event], R]) -> R:
    """Run `work(stop)` with SIGINT and SIGTERM setting `stop`: what is in flight finishes, nothing new
    starts, every claim is given back. Then the command says so and exits 130 (interrupted), after
    `work`'s result was used by the caller; a second Ctrl-C gives up waiting (KeyboardInterrupt)."""
    import asyncio  # start-up: see target_dir

    stop = asyncio.Event()
    with stop_on_signals(stop) as received:
        result = work(stop)
    if received:
        app.interrupted = True
    return result
