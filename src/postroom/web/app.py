"""The status page: an ASGI application (Starlette) over one `AsyncSession`.

Pages (Overview, Queue, Message, Routing) are rendered on the server by Jinja2 with autoescape on,
so every subject, name and header, which are hostile input, reaches the browser as text. A page
updates itself: `/events` streams server-sent events from the store's notifications (what
`postroom watch` listens to), and on each one the page's script fetches the page's live part
again. Actions are POSTs that auth.py lets through for the operator only. `/metrics` and
`/healthz` are for Prometheus and load balancers.

It uses only the face (`postroom.AsyncSession` and the types `postroom` exports).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from postroom import AsyncSession, HResult, MAPIError, Mode, QueueState
from postroom.mapi import tags as T
from postroom.mapi.flags import StatusCode

from .auth import COOKIE, Gate
from .metrics import LATENCY_BUCKETS, Snapshot, SnapshotCollector

HERE = Path(__file__).parent
T_ = TypeVar("T_")
PAGE_SIZE = 50
#: /metrics reads the history's totals at most this often (a few rows since schema 6, once a read of
#: the whole history: the sharing stays, as it costs nothing and bounds a scrape storm).
METRICS_HISTORY_SECONDS = 5.0
_REPORT_ID = re.compile(r"stored as message (\d+)")
#: Properties never shown on the message page (binary or bulky; none of a message's is a secret).
_HIDDEN_TYPES = (0x0102,)  # PT_BINARY
#: How often the event stream sends a comment, so proxies and the browser keep it open.
KEEPALIVE_SECONDS = 15.0


def _status_words(code: int) -> list[str]:
    return [bit.name or "" for bit in StatusCode if bit and code & bit]


def _shown_value(value: object) -> str:
    if isinstance(value, datetime):
        return _when(value)
    return value if isinstance(value, str) else repr(value)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


class StatusPage:
    """The application's state: the session, the gate, the templates, this server's store errors."""

    def __init__(self, session: AsyncSession, gate: Gate, *, beside_daemon: bool = False) -> None:
        self.session = session
        self.gate = gate
        #: Served inside the spooler daemon's process (`spooler --http`): its rows are the daemon's.
        self.beside_daemon = beside_daemon
        self.store_errors = 0
        self._cache: dict[str, tuple[float, object]] = {}
        #: The session's calls that log transports on run one at a time (as a command's would), and
        #: so do the actions that drive the engine; a long Send/Receive does not hold up the reads.
        self._logon_turns = asyncio.Lock()
        self._action_turns = asyncio.Lock()
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.filters["status_words"] = _status_words
        self.env.filters["hex"] = lambda value: bytes(value).hex()

    # --- helpers ---------------------------------------------------------------------------------
    def _cached(self, key: str, seconds: float, read: Callable[[], T_]) -> T_:
        """`read()`, or what it gave less than `seconds` ago."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < seconds:
            return cast(T_, hit[1])
        value = read()
        self._cache[key] = (now, value)
        return value

    def operator(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        return self.gate.is_operator(bearer or request.cookies.get(COOKIE))

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        operator = self.operator(request)
        context.update(
            operator=operator,
            csrf=self.gate.csrf_token() if operator else "",
            actions_possible=self.gate.actions_possible,
            fragment=request.query_params.get("fragment") == "1",
            path=request.url.path,
            query=request.url.query,
        )
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)

    def error(self, request: Request, exc: MAPIError, status: int = 400) -> HTMLResponse:
        return self.render(request, "error.html", status=status, code=exc.code.name, message=exc.message)

    # --- pages -----------------------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        session = self.session
        async with self._logon_turns:
            report = await session.status_report(daemon_here=self.beside_daemon)
        # The overview looks again every few seconds, in every open browser: its costlier reads of a
        # deep queue and a long history are shared for a while (the day's chart moves in 30 minutes).
        counts = self._cached("counts", 2.0, session.queue_counts)
        # Steps of whole minutes, up to the end of this minute: the store answers those from its
        # per-minute totals, whatever the length of the history.
        now = session.clock()
        end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
        hour = self._cached("hour", 5.0, lambda: session.activity(end - timedelta(hours=1), end, step_seconds=60))
        day = self._cached("day", 60.0, lambda: session.activity(end - timedelta(days=1), end, step_seconds=1800))
        return self.render(
            request,
            "overview.html",
            report=report,
            counts=counts,
            charts=[("Last hour", hour), ("Last day", day)],
            groups=session.groups(),
            transports=session.transport_order(),
        )

    async def queue(self, request: Request) -> Response:
        q = request.query_params
        after = q.get("after") or None
        try:
            after_id = int(after) if after else None
        except ValueError:
            return self.error(
                request, MAPIError(HResult.MAPI_E_INVALID_PARAMETER, f"after={after!r} is not a message ID")
            )
        state, transport, text = q.get("state") or None, q.get("transport") or None, q.get("q") or None
        try:
            page = self.session.queue_page(after_id, PAGE_SIZE, state=state, transport=transport, text=text)
        except MAPIError as exc:
            return self.error(request, exc)
        return self.render(
            request,
            "queue.html",
            page=page,
            state=state or "",
            transport=transport or "",
            text=text or "",
            states=[s.value for s in QueueState if s is not QueueState.DONE],
            transports=[s.name for s in self.session.transport_order()],
        )

    async def message(self, request: Request) -> Response:
        ref = request.path_params["ref"]
        session = self.session
        try:
            mid = session.message_id(int(ref) if ref.isdigit() else ref)
            data = session.open_message(mid)
            folder = session.message_folder(mid)
            recipients = session.recipient_report(mid)
            events = session.events(mid)
            entry = session.queue_entry(mid)
        except MAPIError as exc:
            return self.error(request, exc, status=404 if exc.code == HResult.MAPI_E_NOT_FOUND else 400)
        addresses = [
            f"{r.get(T.PR_ADDRTYPE) or 'SMTP'}:{r.get(T.PR_EMAIL_ADDRESS)}"
            for r in data.recipients
            if r.get(T.PR_EMAIL_ADDRESS)
        ]
        try:
            async with self._logon_turns:
                routes = await session.route(addresses)
        except MAPIError:
            routes = []
        props = [
            (T.tag_name(tag), f"0x{tag:08X}", _shown_value(value))
            for tag, value in sorted(data.props.items())
            if (tag & 0xFFFF) not in _HIDDEN_TYPES
        ]
        # "IPM.Report.… stored as message 12": the NDR/DR this message produced, to link to.
        reports = [(e, _REPORT_ID.search(e.detail)) for e in events if str(e.kind) == "report"]
        return self.render(
            request,
            "message.html",
            mid=mid,
            data=data,
            folder=folder,
            recipients=recipients,
            events=events,
            entry=entry,
            routes=routes,
            props=props,
            reports=reports,
            attachments=[
                a.get(T.PR_ATTACH_LONG_FILENAME) or a.get(T.PR_ATTACH_FILENAME) or "" for a in data.attachments
            ],
        )

    async def routing(self, request: Request) -> Response:
        address = (request.query_params.get("address") or "").strip()
        answer, problem = None, None
        if address:
            try:
                async with self._logon_turns:
                    answer = (await self.session.route([address]))[0]
            except MAPIError as exc:
                problem = f"{exc.code.name}: {exc.message}"
        transports = self.session.transport_order()
        return self.render(
            request,
            "routing.html",
            address=address,
            answer=answer,
            problem=problem,
            transports=transports,
            explicit=self.session.has_explicit_order(),
            address_types=await self._adr_types(),
        )

    async def _adr_types(self) -> list[str]:
        async with self._logon_turns:
            return await self.session.enum_adr_types()

    # --- live updates ----------------------------------------------------------------------------
    async def events(self, request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            changes = self.session.changes()
            try:
                while not await request.is_disconnected():
                    try:
                        kind = await asyncio.wait_for(anext(changes), KEEPALIVE_SECONDS)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    yield f"event: change\ndata: {kind}\n\n".encode()
            finally:
                with contextlib.suppress(Exception):
                    await changes.aclose()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", **_SECURITY_HEADERS}
        )

    # --- actions ---------------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        try:
            form = await _form(request)
        except MAPIError as exc:
            return self.error(request, exc)
        token = str(form.get("token") or "")
        back = _safe_back(str(form.get("back") or "/"))
        if not self.gate.is_operator(token):
            return self.render(request, "error.html", status=403, code="MAPI_E_NO_ACCESS", message="wrong token")
        response = RedirectResponse(back, status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def action(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            form = await _form(request)
        except MAPIError as exc:
            return _refusal(exc.code, exc.message, 400)
        wants_json = "application/json" in request.headers.get("accept", "")
        if not self.operator(request):
            return _refusal(HResult.MAPI_E_NO_ACCESS, "actions need the operator token", 403)
        bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
        sent = str(form.get("csrf") or request.headers.get("x-csrf-token") or "")
        if not bearer and not self.gate.trust_all and not self.gate.csrf_ok(sent):
            return _refusal(HResult.MAPI_E_NO_ACCESS, "the form's CSRF token is missing or wrong", 403)
        handler = self._actions.get(name)
        if handler is None:
            return _refusal(HResult.MAPI_E_NOT_FOUND, f"no action {name!r}", 404)
        try:
            said = await handler(self, form)
        except MAPIError as exc:
            return _refusal(exc.code, exc.message, 400)
        if wants_json:
            return JSONResponse({"ok": True, "message": said})
        return RedirectResponse(_safe_back(str(form.get("back") or "/")), status_code=303)

    async def _hold(self, form: dict[str, str]) -> str:
        self.session.hold(_ref(form), "held from the status page")
        return f"message {_ref(form)} held"

    async def _release(self, form: dict[str, str]) -> str:
        self.session.release(_ref(form))
        return f"message {_ref(form)} released"

    async def _retry(self, form: dict[str, str]) -> str:
        n = self.session.retry(_ref(form))
        return f"{n} message(s) due now"

    async def _cancel(self, form: dict[str, str]) -> str:
        self.session.cancel(_ref(form))
        return f"message {_ref(form)} taken back into the Outbox"

    async def _send_receive(self, form: dict[str, str]) -> str:
        async with self._action_turns:
            summary = await self.session.send_receive(form.get("group") or None)
        return (
            f"Send/Receive of {summary.group}: {summary.sent} sent, {summary.failed} failed, {summary.waiting} waiting"
        )

    async def _mode(self, form: dict[str, str]) -> str:
        mode = Mode.parse(form.get("mode", ""))
        async with self._action_turns:
            await self.session.set_mode(mode)
        return f"now {mode}"

    _actions: ClassVar[dict[str, Callable[[StatusPage, dict[str, str]], Awaitable[str]]]] = {
        "hold": _hold,
        "release": _release,
        "retry": _retry,
        "cancel": _cancel,
        "send-receive": _send_receive,
        "mode": _mode,
    }

    # --- for machines ----------------------------------------------------------------------------
    async def metrics(self, request: Request) -> Response:
        session = self.session
        try:
            transports = session.transport_order()
            async with self._logon_turns:
                report = await session.status_report(daemon_here=self.beside_daemon)
            snap = Snapshot(
                counts=session.queue_counts(),
                # The history's totals, shared for a few seconds by scrapes that come more often.
                stats=self._cached("stats", METRICS_HISTORY_SECONDS, lambda: session.delivery_stats(LATENCY_BUCKETS)),
                breakers={t.name: session.breaker_state(t.name) for t in transports},
                spooler=session.spooler_stats(),
                rows=report.rows,
                transports=transports,
                online=session.mode == Mode.ONLINE,
                daemon_running=report.daemon_pid is not None,
                now=session.clock(),
                store_errors=self.store_errors,
            )
        except MAPIError as exc:
            self.store_errors += 1
            return PlainTextResponse(f"{exc.code.name}: {exc.message}\n", status_code=503)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(snap))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        started = time.monotonic()
        try:
            self.session.queue_counts()
        except MAPIError as exc:
            self.store_errors += 1
            return JSONResponse({"ok": False, "error": exc.code.name}, status_code=503)
        return JSONResponse(
            {"ok": True, "mode": str(self.session.mode), "store_ms": round((time.monotonic() - started) * 1000, 1)}
        )


_SECURITY_HEADERS = {
    # No script but our own file, no inline script or handler: an injected one would not run even
    # if escaping failed somewhere.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


#: The largest form body read (the forms here carry a few short fields).
MAX_FORM_BYTES = 16 * 1024


async def _form(request: Request) -> dict[str, str]:
    """The fields of a urlencoded form (the only kind these pages send), first value of each."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "the form is too large")
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items()}


def _ref(form: dict[str, str]) -> int | str:
    ref = (form.get("message") or "").strip()
    if not ref:
        raise MAPIError(HResult.MAPI_E_INVALID_PARAMETER, "no message given")
    return int(ref) if ref.isdigit() else ref


def _safe_back(back: str) -> str:
    """Only a path on this site (never `//host` or a scheme): no open redirect."""
    return back if back.startswith("/") and not back.startswith("//") and "\\" not in back else "/"


def _refusal(code: HResult, message: str, status: int) -> Response:
    return JSONResponse({"ok": False, "code": code.name, "message": message}, status_code=status)


def create_app(session: AsyncSession, gate: Gate, *, beside_daemon: bool = False) -> Starlette:
    """The status page's ASGI application over `session` (which the caller opens and closes)."""
    page = StatusPage(session, gate, beside_daemon=beside_daemon)
    routes = [
        Route("/", page.overview),
        Route("/queue", page.queue),
        Route("/message/{ref}", page.message),
        Route("/routing", page.routing),
        Route("/events", page.events),
        Route("/login", page.login, methods=["POST"]),
        Route("/logout", page.logout, methods=["POST"]),
        Route("/action/{name}", page.action, methods=["POST"]),
        Route("/metrics", page.metrics),
        Route("/healthz", page.healthz),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.page = page
    return app
