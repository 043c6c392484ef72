"""The console's ASGI application: authentication, CSRF and read-only around the routes.

Every API route goes through :func:`_reader` or :func:`_action`, which apply the
:class:`Guard`'s policy before the route runs; what the routes do is in ``_routes``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from stalwart._ids import check_agent_name, check_run_id
from stalwart._version import __version__
from stalwart.console._auth import COOKIE, CSRF_HEADER, Guard
from stalwart.console._flow import FlowActions, check_rule_name, decode_flow_body, flow_view
from stalwart.console._http import MAX_BODY, SecurityHeaders, error, error_for, json_response
from stalwart.console._routes import Actions, Reads, decode_body, number
from stalwart.console._stream import EventStreams
from stalwart.errors import InvalidRequestError, RunNotFoundError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from starlette.requests import Request

    from stalwart.client import Client

    Handler = Callable[[Request], Awaitable[Response]]

STATIC = Path(__file__).parent / "static"
log = structlog.get_logger("stalwart.console")
_UNAUTHENTICATED = "log in with the console's access token"


def create_app(client: Client, guard: Guard) -> Starlette:
    """The console application serving ``client``'s deployment under ``guard``'s policy."""
    streams = EventStreams(client)
    reads = Reads(client)
    actions = Actions(client)

    async def session(request: Request) -> Any:
        return {
            "read_only": guard.read_only,
            "csrf": guard.csrf_token,
            "version": __version__,
            "namespace": client.settings.namespace,
        }

    async def run_feed(request: Request, open_: Callable[[str], Response]) -> Response:
        rid = run_id(request)
        # An unknown id would hold a stream open waiting for a run that never comes.
        if await client.store.get_run(rid) is None:
            raise RunNotFoundError(rid)
        return open_(rid)

    async def all_events(request: Request) -> Response:
        # EventSource sends the last ``id:`` it saw when it reconnects: resume there.
        after = request.headers.get("last-event-id") or request.query_params.get("after")
        start = None if after is None else int(number(after, "after") or 0)
        agent = request.query_params.get("agent") or None
        return streams.all(check_agent_name(agent) if agent else None, start)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def login(request: Request) -> Response:
        return await _login(guard, request)

    def run_id(request: Request) -> str:
        return check_run_id(request.path_params["run_id"])

    routes: list[BaseRoute] = [
        Route("/", index),
        Route("/api/session", _reader(guard, session)),
        Route("/api/login", login, methods=["POST"]),
        Route("/api/logout", _logout, methods=["POST"]),
        Route("/api/runs", _reader(guard, lambda r: reads.runs(r.query_params))),
        Route("/api/events", _reader(guard, all_events)),
        Route("/api/runs/{run_id}", _reader(guard, lambda r: reads.run(run_id(r)))),
        Route("/api/runs/{run_id}/events", _reader(guard, lambda r: run_feed(r, streams.run))),
        Route("/api/runs/{run_id}/stream", _reader(guard, lambda r: run_feed(r, streams.parts))),
        Route("/api/workers", _reader(guard, lambda r: reads.workers())),
        Route("/api/agents", _reader(guard, lambda r: reads.agents())),
        Route("/api/flow", _reader(guard, lambda r: flow_view(client))),
    ]
    for name in Actions.NAMES:
        route = _action(guard, name, getattr(actions, name))
        routes.append(Route(f"/api/runs/{{run_id}}/{name}", route, methods=["POST"]))
    flow = FlowActions(client)
    for name in FlowActions.NAMES:
        fn = getattr(flow, name.replace("-", "_"))
        route = _action(guard, f"flow.{name}", fn, "rule", check_rule_name, decode_flow_body)
        routes.append(Route(f"/api/flow/{{rule}}/{name}", route, methods=["POST"]))
    routes.append(Mount("/static", StaticFiles(directory=STATIC)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await streams.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(SecurityHeaders, guard=guard)
    return app


def _reader(guard: Guard, fn: Callable[[Request], Awaitable[Any]]) -> Handler:
    async def route(request: Request) -> Response:
        if not _authenticated(guard, request):
            return error(401, _UNAUTHENTICATED)
        try:
            result = await fn(request)
        except Exception as exc:
            return error_for(exc)
        return result if isinstance(result, Response) else json_response(result)

    return route


def _action(
    guard: Guard,
    name: str,
    fn: Callable[[str, Any], Awaitable[Any]],
    param: str = "run_id",
    check: Callable[[str], str] = check_run_id,
    decode: Callable[[bytes], Any] = decode_body,
) -> Handler:
    """A mutating route on the path parameter ``param`` (a run id, a flow rule's name)."""

    async def route(request: Request) -> Response:
        if not _authenticated(guard, request):
            return error(401, _UNAUTHENTICATED)
        if guard.read_only:
            return error(403, "the console is read-only (started with --read-only)")
        if not _csrf_ok(guard, request):
            return error(403, "cross-site request refused (missing or wrong CSRF token)")
        try:
            target = check(request.path_params[param])
            result = await fn(target, decode(await _read_body(request)))
        except Exception as exc:
            return error_for(exc)
        # Who did what, for the audit trail (the SSO proxy's user header when there is one).
        log.info(
            "console.action",
            action=name,
            **{param: target},
            client=request.client.host if request.client else "",
            user=request.headers.get("x-forwarded-user", ""),
        )
        return json_response(result)

    return route


async def _login(guard: Guard, request: Request) -> Response:
    if not _same_origin(guard, request):
        return error(403, "cross-site login refused")
    if not guard.auth_required:
        return json_response({"ok": True})
    try:
        body = msgspec.json.decode(await _read_body(request), type=dict[str, str])
    except (msgspec.DecodeError, InvalidRequestError):
        return error(400, 'send {"token": "..."} as JSON')
    ok = guard.login(body.get("token", ""))
    if ok is None:
        return error(429, "too many failed logins; wait a minute")
    if not ok:
        return error(401, "wrong access token")
    response = json_response({"ok": True})
    response.set_cookie(
        COOKIE,
        guard.session_value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


async def _logout(request: Request) -> Response:
    response = json_response({"ok": True})
    response.delete_cookie(COOKIE, path="/")
    return response


def _authenticated(guard: Guard, request: Request) -> bool:
    return guard.authenticated(
        request.headers.get("authorization", ""), request.cookies.get(COOKIE, "")
    )


def _own_origin(guard: Guard, request: Request) -> str:
    # Behind a proxy that terminates TLS the browser's origin is the proxy's (public_origin).
    return guard.public_origin or f"{request.url.scheme}://{request.headers.get('host', '')}"


def _same_origin(guard: Guard, request: Request) -> bool:
    origin = request.headers.get("origin", "")
    return bool(origin) and origin == _own_origin(guard, request)


def _csrf_ok(guard: Guard, request: Request) -> bool:
    h = request.headers
    return guard.csrf_ok(
        h.get("origin", ""),
        h.get("referer", ""),
        h.get(CSRF_HEADER, ""),
        _own_origin(guard, request),
    )


async def _read_body(request: Request) -> bytes:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise InvalidRequestError(f"request body over {MAX_BODY} bytes")
    return raw
