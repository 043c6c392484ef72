"""Health endpoints of a worker or supervisor process, for orchestrators' probes.

``GET /livez`` answers 200 whenever the event loop does: it is served by the same loop as
the service, so a process whose loop is blocked (a step body that never yields, a deadlock
in a C extension) stops answering and is restarted. It checks no server on purpose: a NATS
or Redis outage is not cured by restarting every worker, and would turn into a restart storm.

``GET /readyz`` answers 200 only when the process can do its work now: started, not
draining, NATS connected and JetStream answering (the runs stream's info, which needs the
stream's leader in a cluster), and Redis answering ``PING``, each within ``health_timeout``.
Otherwise 503, with the failing checks named in the JSON body. A draining worker is not
ready, so a load balancer or rollout stops counting on it while it hands its runs over.

A deliberately small HTTP/1.1 server on :func:`asyncio.start_server`: one request per
connection, ``GET`` and ``HEAD`` only, no dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from stalwart._secrets import mask_urls
from stalwart._text import safe_text
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from stalwart.broker import Broker
    from stalwart.checkpoints import CheckpointStore

__all__ = [
    "CheckResult",
    "Connected",
    "HealthServer",
    "connection_checks",
    "readiness",
]

log = structlog.get_logger("stalwart.health")

_MAX_REQUEST = 8192
"""Bytes of request line and headers read at most; a probe sends a few hundred."""
_READ_TIMEOUT = 5.0
"""Seconds a client may take to send its request before the connection is dropped."""
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one readiness check: ``error`` is empty when it passed."""

    name: str
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the check passed."""
        return not self.error


def readiness(
    results: list[CheckResult], *, started: bool, draining: bool
) -> tuple[int, dict[str, object]]:
    """The ``/readyz`` answer (HTTP status, JSON body) for these check results. Pure.

    Ready means all of: start-up finished, not draining, every check passed. The body
    names every check so an operator reading ``kubectl describe pod`` sees which failed.
    """
    checks = {r.name: r.error or "ok" for r in results}
    if draining:
        status = "draining"
    elif not started:
        status = "starting"
    elif all(r.ok for r in results):
        status = "ready"
    else:
        status = "not ready"
    return (200 if status == "ready" else 503), {"status": status, "checks": checks}


class Connected(Protocol):
    """What the checks look at: a worker or supervisor's connections (None until started)."""

    @property
    def broker(self) -> Broker | None: ...
    @property
    def store(self) -> CheckpointStore | None: ...


def connection_checks(service: Connected) -> dict[str, Callable[[], Awaitable[None]]]:
    """The readiness checks of a worker or supervisor: ``nats`` and ``redis``.

    The service's connections are looked up at each probe, so the checks can be made
    before the service has connected (they fail with "not connected yet" until then).
    """

    async def nats() -> None:
        broker = service.broker
        if broker is None:
            raise RuntimeError("not connected yet")
        if not broker.nc.is_connected:
            raise RuntimeError("NATS connection lost (reconnecting)")
        # A stream info request goes through JetStream's API and, in a cluster, needs the
        # runs stream to have a leader: a connected client whose JetStream is unusable
        # (no quorum, leader election under way) is not ready. Workers' and supervisors'
        # least-privilege NATS users may send it (deploy/security/).
        await broker.js.stream_info(broker.names.runs_stream)

    async def redis() -> None:
        store = service.store
        if store is None:
            raise RuntimeError("not connected yet")
        await store.redis.ping()

    return {"nats": nats, "redis": redis}


class HealthServer:
    """Serves ``/livez`` and ``/readyz`` (see the module docstring) on ``addr:port``.

    ``checks`` are run concurrently on each ``/readyz``, each bounded by ``timeout`` seconds.
    The owner marks the process started (:meth:`set_started`) once it serves, and draining
    (:meth:`set_draining`) when it was asked to stop.
    """

    def __init__(
        self, checks: Mapping[str, Callable[[], Awaitable[None]]], *, timeout: float = 2.0
    ) -> None:
        if not timeout > 0:
            raise ConfigurationError(f"health check timeout must be > 0 seconds, got {timeout!r}")
        self.checks = dict(checks)
        self.timeout = timeout
        self.started = False
        self.draining = False
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    def set_started(self) -> None:
        """Start-up finished: ``/readyz`` now reports the checks."""
        self.started = True

    def set_draining(self) -> None:
        """Asked to stop: ``/readyz`` answers 503 from now on."""
        self.draining = True

    async def start(self, addr: str, port: int) -> int:
        """Listen on ``addr:port`` (port 0: any free port); return the port bound.

        Raises :class:`ConfigurationError` naming the address when it cannot be bound.
        """
        try:
            self._server = await asyncio.start_server(self._serve, addr, port, limit=_MAX_REQUEST)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve health endpoints on {addr}:{port} "
                f"(STALWART_HEALTH_ADDR / STALWART_HEALTH_PORT): {exc.strerror or exc}"
            ) from None
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("health.serving", addr=addr, port=bound)
        return bound

    async def close(self) -> None:
        """Stop listening and drop connections still open."""
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def ready(self) -> tuple[int, dict[str, object]]:
        """Run the checks and return the ``/readyz`` answer (status, body)."""
        if self.draining or not self.started:
            # Skip the servers: the answer is 503 whatever they say.
            return readiness([], started=self.started, draining=self.draining)
        results = await asyncio.gather(*(self._run(n, c) for n, c in self.checks.items()))
        return readiness(list(results), started=self.started, draining=self.draining)

    async def _run(self, name: str, check: Callable[[], Awaitable[None]]) -> CheckResult:
        began = time.monotonic()
        try:
            await asyncio.wait_for(check(), self.timeout)
        except TimeoutError:
            return CheckResult(name, f"no answer within {self.timeout:g}s")
        except Exception as exc:
            # The body is for whoever can reach the port: no password of a URL in it.
            return CheckResult(name, mask_urls(safe_text(exc)) or type(exc).__name__)
        log.debug("health.check", check=name, seconds=round(time.monotonic() - began, 4))
        return CheckResult(name)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            method, status, body = await self._answer(reader)
            payload = json.dumps(body).encode() + b"\n"
            writer.write(_response(status, payload, head_only=method == "HEAD"))
            await writer.drain()
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
        ):
            pass  # the prober went away, never finished its request, or sent too much
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, int, dict[str, object]]:
        """``(method, status, body)`` for the request ``reader`` delivers."""
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
        method, path = parse_request_line(raw)
        if not method:
            return method, 400, {"error": "malformed request"}
        if method not in ("GET", "HEAD"):
            return method, 405, {"error": f"method {method} not allowed: GET or HEAD"}
        path = path.split("?", 1)[0]
        if path == "/livez":
            return method, 200, {"status": "alive"}
        if path == "/readyz":
            return (method, *await self.ready())
        return method, 404, {"error": f"no such endpoint {path!r}: /livez or /readyz"}


def parse_request_line(raw: bytes) -> tuple[str, str]:
    """``(method, path)`` of an HTTP/1.x request's first line; ``("", "")`` when malformed."""
    line = raw.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return "", ""
    return parts[0], parts[1]


def _response(status: int, payload: bytes, *, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + payload
