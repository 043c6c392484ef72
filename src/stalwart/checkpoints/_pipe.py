"""Auto-pipelined script calls: every actor of a worker shares one Redis connection.

The journal append is the one Redis call on every step. Through a pooled redis-py client
each append checks a connection out, writes, waits and checks it back in, and concurrent
runs each pay a socket write and a read. Here all appends of a process go down one
connection in the order they are made: while replies are outstanding, new commands are
buffered and written together once per event-loop turn, and one read can carry many
replies (Redis answers a connection's commands in order). A run that steps alone gets its
command written at once, so the single-run latency gains as well (no pool, no per-call
retry wrapper).

This client knows only what the hot path needs: plain TCP or a Unix socket, optional TLS
(with the context redis-py's pool uses: the URL's ``ssl_*`` options and the settings, parsed
once by :func:`stalwart._transport.redis_target`), ``AUTH`` and ``SELECT`` from the URL. Any failure (connection lost, no reply within
``request_timeout``, an error reply) is handed to the caller, which falls back to the
redis-py client and its retries; explicit journal ids make that resend safe.

Behind Sentinel the pipe is given a ``resolve`` coroutine: every (re)connection asks it
where the primary is now, and a ``READONLY`` reply (a primary demoted to a replica) drops
the connection so the next command reconnects to the new primary.

With ``wait_replicas`` > 0 every socket write ends with one ``WAIT n timeout``: the
replies of the commands in that write are held until WAIT answers, and settle only when at
least ``n`` replicas acknowledged them; fewer acknowledgements fail them all with
:class:`NotReplicated` (a ``ConnectionError``: the caller resends, which explicit ids make
safe). One WAIT per write, not per command, so its cost is shared by a whole batch.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias
from urllib.parse import urlparse

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stalwart._transport import redis_target

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable

_SCHEMES = frozenset({"redis", "rediss", "unix"})


class Settle(Protocol):
    """What a reply settles: an ``asyncio.Future``, or an object that acts on the reply at
    once (``ScriptRunner.write_future``: no second future and loop callback per write)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


_Pending: TypeAlias = tuple["Settle | None", float, bool]
"""An outstanding reply: its future (None: the WAIT closing a write), when it was sent, and
whether its reply is held until that WAIT answers."""


class NotReplicated(RedisConnectionError):
    """Fewer replicas than asked acknowledged a write within the WAIT timeout (or WAIT
    failed): the write happened on the primary but is not known to be durable, so it is
    not acknowledged; resending it is safe (explicit journal ids)."""


def is_readonly(reply: object) -> bool:
    """Whether ``reply`` is a READONLY error (the node is a replica: not the primary)."""
    return isinstance(reply, ResponseError) and str(reply).startswith(
        ("READONLY", "You can't write against a read only replica")
    )


def pack_args(args: tuple[object, ...] | list[object]) -> bytes:
    """``args`` as RESP bulk strings, without the array header (see :func:`pack`)."""
    # Inlined: this runs for every argument of every journal write.
    return b"".join(
        [
            b"$%d\r\n%s\r\n" % (len(b), b)
            for b in [a if isinstance(a, bytes) else str(a).encode() for a in args]
        ]
    )  # str() of a float is its shortest round-trip repr


def pack(args: tuple[object, ...]) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n%s" % (len(args), pack_args(args))


class _Protocol(asyncio.Protocol):
    def __init__(self, pipe: ScriptPipe) -> None:
        self._pipe = pipe
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def _fail(self, exc: Exception) -> None:
        # A connection that was already replaced must not tear down its successor.
        if self.transport is not None and self._pipe._transport is self.transport:
            self._pipe._lost(exc)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._pipe._pending
        while True:
            try:
                reply = self._reader.gets()
            except InvalidResponse as exc:
                self._fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
                return
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: the stream is out of step
                self._fail(RedisConnectionError("unexpected reply from Redis"))
                return
            fut, _, held = pending.popleft()
            if fut is None:
                self._pipe._settle_held(reply)
            elif held:
                self._pipe._held.append((fut, reply))
            elif not fut.done():
                fut.set_result(reply)
            if self._pipe._resolve is not None and is_readonly(reply):
                # A demoted primary: reconnect (asking the Sentinels) for what comes next.
                self._fail(RedisConnectionError("Redis node is a replica now (READONLY)"))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))


class ScriptPipe:
    """One auto-pipelined connection to the Redis at ``url`` (see the module docstring).

    :meth:`call` returns a future of the raw reply: bytes, ints and lists as hiredis
    parses them, an error reply as a :class:`ResponseError` *value*. The future fails
    with a redis-py ``ConnectionError`` or ``TimeoutError`` when the command may or may
    not have run.
    """

    def __init__(
        self,
        url: str,
        *,
        request_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        resolve: Callable[[], Awaitable[tuple[str, int]]] | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        if wait_replicas < 0 or wait_timeout_ms < 0:
            raise ValueError(
                f"wait_replicas ({wait_replicas}) and wait_timeout_ms ({wait_timeout_ms}) "
                "must be >= 0"
            )
        scheme = urlparse(url).scheme
        if scheme not in _SCHEMES:
            raise ValueError(f"unsupported Redis URL scheme {scheme!r}")
        if scheme == "rediss" and ssl_context is None:
            # On its own (no context handed over by the store): the URL's options, read
            # exactly as the store reads them.
            target = redis_target(url)
            url, ssl_context = target.url, target.ssl_context
        # redis-py's own reading of the URL, so both clients agree on what it says.
        kw = parse_url(url)
        self._path = str(kw.get("path") or "")
        self._host = str(kw.get("host") or "localhost")
        self._port = int(kw.get("port") or 6379)
        self._ssl = ssl_context if scheme == "rediss" else None
        self._username = str(kw.get("username") or "")
        self._password = str(kw.get("password") or "")
        self._db = int(kw.get("db") or 0)
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self._transport: asyncio.Transport | None = None
        self._resolve = resolve
        self.wait_replicas = wait_replicas
        """Replicas that must acknowledge each write (0: no WAIT)."""
        self.wait_timeout_ms = wait_timeout_ms
        """How long each WAIT waits for them, in milliseconds (0 would wait for ever)."""
        self._wait_cmd = pack(("WAIT", wait_replicas, wait_timeout_ms)) if wait_replicas else b""
        self._pending: collections.deque[_Pending] = collections.deque()
        self._held: list[tuple[Settle, Any]] = []
        self._queued: list[tuple[bytes, Settle]] = []
        self._out: list[bytes] = []
        self._flush_at_turn_end = False
        self._connecting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self.writes = 0
        """Socket writes so far (each carries one or more commands)."""
        self.connects = 0
        """Connections made so far that completed the handshake and set-up."""
        self.failed_connects = 0
        """Connection attempts that failed (refused, TLS handshake, AUTH)."""

    @staticmethod
    def supports(url: str) -> bool:
        """Whether ``url`` is a plain Redis URL this client can serve."""
        return urlparse(url).scheme in _SCHEMES

    # -- calls --------------------------------------------------------------------------

    def call(self, *args: bytes | str | int | float) -> asyncio.Future[Any]:
        """Send one command; the future resolves with its reply (see the class docstring)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.send(pack(args), fut)
        return fut

    def send(self, data: bytes, fut: Settle) -> None:
        """Send one command already in RESP (:func:`pack`); its reply settles ``fut``."""
        if self._closed:
            fut.set_exception(RedisConnectionError("the Redis pipe is closed"))
            return
        transport = self._transport
        if transport is None or self._connecting is not None:
            # Not connected, or AUTH/SELECT still under way: wait behind them.
            self._queued.append((data, fut))
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            return
        self._pending.append((fut, time.monotonic(), bool(self.wait_replicas)))
        if len(self._pending) == 1 and not self._out:
            # Nothing outstanding: no reason to wait for company.
            if self.wait_replicas:
                transport.write(data + self._wait_cmd)
                self._pending.append((None, time.monotonic(), False))
            else:
                transport.write(data)
            self.writes += 1
        else:
            self._out.append(data)
            if not self._flush_at_turn_end:
                self._flush_at_turn_end = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_at_turn_end = False
        if self._out and self._transport is not None:
            if self.wait_replicas:
                self._out.append(self._wait_cmd)
                self._pending.append((None, time.monotonic(), False))
            self._transport.write(b"".join(self._out))
            self.writes += 1
        self._out.clear()

    def _settle_held(self, reply: Any) -> None:
        """WAIT answered: settle the replies of the write it closed."""
        held, self._held = self._held, []
        if isinstance(reply, int) and reply >= self.wait_replicas:
            for fut, value in held:
                if not fut.done():
                    fut.set_result(value)
            return
        exc = NotReplicated(
            f"WAIT: {reply} of {self.wait_replicas} replica(s) acknowledged within "
            f"{self.wait_timeout_ms} ms"
            if isinstance(reply, int)
            else f"WAIT failed: {reply}"
        )
        for fut, _ in held:
            if not fut.done():
                fut.set_exception(exc)

    # -- connection ---------------------------------------------------------------------

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self._resolve is not None:
                    self._host, self._port = await self._resolve()
                if self._path:
                    transport, _ = await loop.create_unix_connection(
                        lambda: _Protocol(self), self._path, ssl=self._ssl
                    )
                else:
                    transport, _ = await loop.create_connection(
                        lambda: _Protocol(self),
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl else None,
                    )
                self._transport = transport
                for setup in self._setup_commands():
                    fut: asyncio.Future[Any] = loop.create_future()
                    self._pending.append((fut, time.monotonic(), False))
                    transport.write(pack(setup))
                    reply = await fut
                    if isinstance(reply, ResponseError):
                        raise RedisConnectionError(f"Redis refused {setup[0]!s}: {reply}")
        except (OSError, TimeoutError, RedisConnectionError, RedisTimeoutError) as exc:
            err = (
                exc
                if isinstance(exc, RedisConnectionError)
                else RedisConnectionError(f"cannot connect to Redis: {exc!r}")
            )
            self.failed_connects += 1
            self._drop_transport()
            self._fail_queued(err)
            return
        finally:
            self._connecting = None
        self.connects += 1
        queued, self._queued = self._queued, []
        now = time.monotonic()
        held = bool(self.wait_replicas)
        for data, qfut in queued:
            self._pending.append((qfut, now, held))
            self._out.append(data)
        self._flush()
        self._arm_watchdog()

    def _setup_commands(self) -> list[tuple[bytes | str | int | float, ...]]:
        cmds: list[tuple[bytes | str | int | float, ...]] = []
        if self._password:
            cmds.append(
                ("AUTH", self._username, self._password)
                if self._username
                else ("AUTH", self._password)
            )
        if self._db:
            cmds.append(("SELECT", self._db))
        return cmds

    def _arm_watchdog(self) -> None:
        if self._watchdog is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(min(1.0, self.request_timeout), self._check_stuck)

    def _check_stuck(self) -> None:
        # One timer for the connection instead of one per request: the oldest outstanding
        # request tells whether Redis stopped answering.
        self._watchdog = None
        if self._transport is None:
            return
        if self._pending and time.monotonic() - self._pending[0][1] > self.request_timeout:
            self._lost(RedisTimeoutError(f"no reply from Redis within {self.request_timeout:g}s"))
            return
        self._arm_watchdog()

    def _lost(self, exc: Exception) -> None:
        self._drop_transport()
        pending, self._pending = self._pending, collections.deque()
        held, self._held = self._held, []
        self._out.clear()
        for hfut, _ in held:
            if not hfut.done():
                hfut.set_exception(exc)
        for fut, _, _ in pending:
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        if self._queued and not self._closed and self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def _drop_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _fail_queued(self, exc: Exception) -> None:
        queued, self._queued = self._queued, []
        for _, fut in queued:
            if not fut.done():
                fut.set_exception(exc)

    async def close(self) -> None:
        """Close the connection; outstanding calls fail with ``ConnectionError``."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        self._lost(RedisConnectionError("the Redis pipe is closed"))
        self._fail_queued(RedisConnectionError("the Redis pipe is closed"))
