"""The console's ASGI application: the API routes over a connected :class:`Client`.

Reads go through :mod:`stalwart.operations` (the read model the CLI uses too); actions
through the same :class:`Client` methods as the CLI (cancel, signal, approve, fork, retry),
so the console adds no second way of changing a run.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stalwart import operations
from stalwart._ids import check_run_id
from stalwart._version import __version__
from stalwart.console._auth import COOKIE, CSRF_HEADER, Guard
from stalwart.console._http import MAX_BODY, SecurityHeaders, error, error_for, json_response
from stalwart.console._stream import EventStreams
from stalwart.errors import InvalidRequestError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from starlette.requests import Request

    from stalwart.client import Client

    Handler = Callable[[Request], Awaitable[Response]]

STATIC = Path(__file__).parent / "static"
log = structlog.get_logger("stalwart.console")


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    """What an action route accepts (each route reads the fields it needs)."""

    reason: str = "cancelled from the console"
    name: str = ""
    payload: Any = None
    call_id: str = ""
    approve: bool = True
    message: str | None = None
    tool: str | None = None
    args_hash: str | None = None
    at: str = ""


def create_app(client: Client, guard: Guard) -> Starlette:
    """The console application serving ``client``'s deployment under ``guard``'s policy."""
    streams = EventStreams(client)

    def reader(fn: Callable[[Request], Awaitable[Any]]) -> Handler:
        async def route(request: Request) -> Response:
            if not _authenticated(guard, request):
                return error(401, "log in with the console's access token")
            try:
                result = await fn(request)
            except Exception as exc:
                return error_for(exc)
            return result if isinstance(result, Response) else json_response(result)

        return route

    def action(name: str, fn: Callable[[str, _Body], Awaitable[Any]]) -> Handler:
        async def route(request: Request) -> Response:
            if not _authenticated(guard, request):
                return error(401, "log in with the console's access token")
            if guard.read_only:
                return error(403, "the console is read-only (started with --read-only)")
            if not _csrf_ok(guard, request):
                return error(403, "cross-site request refused (missing or wrong CSRF token)")
            try:
                run_id = check_run_id(request.path_params["run_id"])
                body = await _read_body(request)
                result = await fn(run_id, body)
            except Exception as exc:
                return error_for(exc)
            # Who did what, for the audit trail (the proxy's user header when one is set).
            log.info(
                "console.action",
                action=name,
                run_id=run_id,
                client=request.client.host if request.client else "",
                user=request.headers.get("x-forwarded-user", ""),
            )
            return json_response(result)

        return route

    async def session(request: Request) -> Any:
        return {
            "read_only": guard.read_only,
            "csrf": guard.csrf_token,
            "version": __version__,
            "namespace": client.settings.namespace,
        }

    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return error(403, "cross-site login refused")
        if not guard.auth_required:
            return json_response({"ok": True})
        try:
            given = msgspec.json.decode(await request.body(), type=dict[str, str]).get("token", "")
        except msgspec.DecodeError:
            return error(400, 'send {"token": "..."} as JSON')
        ok = guard.login(given)
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

    async def logout(request: Request) -> Response:
        response = json_response({"ok": True})
        response.delete_cookie(COOKIE, path="/")
        return response

    async def runs(request: Request) -> Any:
        q = request.query_params
        statuses = [s for v in q.getlist("status") for s in v.split(",") if s]
        query = operations.RunQuery(
            status=statuses or None,
            agent=q.get("agent") or None,
            since=_number(q.get("since"), "since"),
            until=_number(q.get("until"), "until"),
            search=q.get("search") or None,
            limit=int(_number(q.get("limit"), "limit") or 50),
            cursor=q.get("cursor") or None,
        )
        return await operations.list_runs(client, query)

    async def run(request: Request) -> Any:
        return await operations.run_detail(client, check_run_id(request.path_params["run_id"]))

    async def approvals(request: Request) -> Any:
        handle = client.handle(request.path_params["run_id"])
        return await handle.pending_approvals()

    async def run_events(request: Request) -> Response:
        return streams.run(check_run_id(request.path_params["run_id"]))

    async def all_events(request: Request) -> Response:
        q = request.query_params
        return streams.all(q.get("agent") or None, int(_number(q.get("after"), "after") or 0))

    async def workers(request: Request) -> Any:
        return await operations.workers(client)

    async def agents(request: Request) -> Any:
        return await operations.agents(client)

    async def cancel(run_id: str, body: _Body) -> Any:
        return {"outcome": await client.handle(run_id).cancel(body.reason)}

    async def signal(run_id: str, body: _Body) -> Any:
        if not body.name:
            raise InvalidRequestError("a signal needs a name")
        return {"outcome": await client.handle(run_id).signal(body.name, body.payload)}

    async def approve(run_id: str, body: _Body) -> Any:
        handle = client.handle(run_id)
        if body.approve:
            outcome = await handle.approve(
                body.call_id, tool=body.tool, args_hash=body.args_hash, message=body.message
            )
        else:
            outcome = await handle.reject(
                body.call_id, body.message, tool=body.tool, args_hash=body.args_hash
            )
        return {"outcome": outcome}

    async def fork(run_id: str, body: _Body) -> Any:
        if not body.at:
            raise InvalidRequestError("fork needs the step to fork at ('at')")
        return {"run_id": (await client.fork(run_id, at=body.at)).run_id}

    async def retry(run_id: str, body: _Body) -> Any:
        return {"run_id": (await client.retry(run_id)).run_id}

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    routes = [
        Route("/", index),
        Route("/api/session", reader(session)),
        Route("/api/login", login, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
        Route("/api/runs", reader(runs)),
        Route("/api/events", reader(all_events)),
        Route("/api/runs/{run_id}", reader(run)),
        Route("/api/runs/{run_id}/approvals", reader(approvals)),
        Route("/api/runs/{run_id}/events", reader(run_events)),
        Route("/api/workers", reader(workers)),
        Route("/api/agents", reader(agents)),
    ]
    for name, fn in (
        ("cancel", cancel),
        ("signal", signal),
        ("approve", approve),
        ("fork", fork),
        ("retry", retry),
    ):
        routes.append(Route(f"/api/runs/{{run_id}}/{name}", action(name, fn), methods=["POST"]))
    routes.append(Mount("/static", StaticFiles(directory=STATIC)))
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await streams.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(SecurityHeaders, guard=guard)
    return app


def _authenticated(guard: Guard, request: Request) -> bool:
    return guard.authenticated(
        request.headers.get("authorization", ""), request.cookies.get(COOKIE, "")
    )


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin", "")
    return bool(origin) and origin == _own_origin(request)


def _csrf_ok(guard: Guard, request: Request) -> bool:
    h = request.headers
    return guard.csrf_ok(
        h.get("origin", ""), h.get("referer", ""), h.get(CSRF_HEADER, ""), _own_origin(request)
    )


async def _read_body(request: Request) -> _Body:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise InvalidRequestError(f"request body over {MAX_BODY} bytes")
    if not raw.strip():
        return _Body()
    try:
        return msgspec.json.decode(raw, type=_Body)
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"bad request body: {exc}") from None


def _number(text: str | None, what: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise InvalidRequestError(f"{what} must be a number >= 0, got {text[:40]!r}")
    return value
