"""The console's HTTP plumbing: security headers, the host check, JSON answers, errors.

Kept apart from the routes so every answer, static or API, goes through the same
middleware and every error through the same mapping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from starlette.responses import Response

from stalwart._text import clip, safe_text
from stalwart.errors import (
    ConfigurationError,
    InvalidRequestError,
    RunNotFoundError,
    ServerUnavailableError,
    StalwartError,
)

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from stalwart.console._auth import Guard

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
"""No inline script or style, nothing from another origin: injected markup cannot run."""

_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]

MAX_BODY = 256 * 1024
"""Largest request body read (a signal payload is far smaller: ``signal_max_bytes``)."""

_encoder = msgspec.json.Encoder(enc_hook=lambda obj: safe_text(obj))


class SecurityHeaders:
    """ASGI middleware: refuse a foreign ``Host``, add the security headers to every answer."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = ""
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = value.decode("latin-1")
        if not self.guard.host_allowed(host):
            await error(421, "this console does not answer for that host name")(
                scope, receive, send
            )
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(_HEADERS)
                path = scope.get("path", "")
                if path.startswith("/api/") or path == "/":
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def json_response(value: Any, status: int = 200) -> Response:
    """``value`` (msgspec Structs included) as a JSON answer."""
    return Response(_encoder.encode(value), status, media_type="application/json")


def error(status: int, message: str) -> Response:
    """An error answer: ``{"error": message}``."""
    return json_response({"error": message}, status)


def error_for(exc: Exception) -> Response:
    """The answer for an exception a route let through (a Stalwart error names its cause)."""
    text = clip(safe_text(exc), 2000)
    if isinstance(exc, RunNotFoundError):
        return error(404, text)
    if isinstance(exc, InvalidRequestError | ConfigurationError):
        return error(400, text)
    if isinstance(exc, ServerUnavailableError):
        return error(503, text)
    if isinstance(exc, StalwartError):
        return error(500, text)
    raise exc


def encode(value: Any) -> bytes:
    """``value`` as JSON bytes (the SSE data lines)."""
    return _encoder.encode(value)
