"""The append pipe on a Redis Cluster: one :class:`ScriptPipe` per master, routed by slot.

A run's scripts name its keys first (``EVALSHA sha 2 <record> <journal> ...``), the index
commands their one key (``ZADD <key> ...``): the slot of that key picks the master, and the
call goes down that master's auto-pipelined connection, so appends of runs on one master
share socket writes as on a single Redis.

The slot map is redis-py's (the cluster client behind the store keeps it). A ``MOVED`` reply
re-routes that slot here at once and refreshes the whole map in the background; ``ASK``
sends ``ASKING`` and the command to the named node (one after the other on one connection,
so Redis sees them together) without changing the map. A lost connection also refreshes the
map (a master that died is replaced by its replica), and the call fails as on a single
Redis: the store falls back to the cluster client, which retries until the new master
answers. Any other error reply (``NOSCRIPT`` on a freshly promoted master, ``TRYAGAIN``,
``CLUSTERDOWN``) is the caller's, exactly as with one pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Protocol

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from stalwart._tasks import cancel_and_wait

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio.cluster import RedisCluster

    from stalwart.checkpoints._pipe import ScriptPipe

_KEY_AT = {b"EVALSHA": 3, b"EVAL": 3, b"FCALL": 3}
"""Where a command's first key is when it is not right after the command name."""

MAX_REDIRECTS = 5
"""MOVED/ASK hops one call may take before its last error reply is handed back."""

REFRESH_INTERVAL = 0.25
"""Seconds between two slot-map refreshes: while a dead master is not replaced yet, every
call to it fails, and one refresh per failure would only load the surviving nodes."""


class CommandPipe(Protocol):
    """What the store needs of an append pipe: one or many connections behind ``call``."""

    def call(self, *args: bytes | str | int | float) -> asyncio.Future[Any]:
        """Send one command; the future resolves with its reply (error replies as values)."""
        ...

    async def close(self) -> None:
        """Close every connection; outstanding calls fail with ``ConnectionError``."""
        ...


def _first_key(args: tuple[bytes | str | int | float, ...]) -> bytes:
    name = args[0] if isinstance(args[0], bytes) else str(args[0]).encode()
    at = _KEY_AT.get(name.upper(), 1)
    if at == 3 and int(args[2]) == 0:
        raise ValueError(f"{args[0]!r} without keys cannot be routed on a Redis Cluster")
    key = args[at]
    return key if isinstance(key, bytes) else str(key).encode()


def _redirect(reply: object) -> tuple[str, int, str, int] | None:
    """``(kind, slot, host, port)`` of a MOVED/ASK error reply, None for anything else."""
    if not isinstance(reply, ResponseError):
        return None
    parts = str(reply).split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    return parts[0], int(parts[1]), host, int(port)


class ClusterPipe:
    """Routes :meth:`call` to the pipe of the master that serves the command's first key."""

    def __init__(
        self,
        client: RedisCluster,
        make_pipe: Callable[[str, int], ScriptPipe],
        *,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        self._client = client
        self._make_pipe = make_pipe
        self._pipes: dict[tuple[str, int], ScriptPipe] = {}
        self._moved: dict[int, tuple[str, int]] = {}
        """Slots a MOVED reply re-routed since the last refresh of redis-py's map."""
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -REFRESH_INTERVAL
        self.max_redirects = max_redirects
        self.redirects = 0
        """MOVED/ASK replies followed so far."""
        self.refreshes = 0
        """Slot-map refreshes started so far (after MOVED or a lost connection)."""
        self._closed = False

    @property
    def pipes(self) -> dict[tuple[str, int], ScriptPipe]:
        """The pipe of each node this process has sent to, by ``(host, port)``."""
        return dict(self._pipes)

    def _pipe(self, addr: tuple[str, int]) -> ScriptPipe:
        pipe = self._pipes.get(addr)
        if pipe is None:
            pipe = self._pipes[addr] = self._make_pipe(*addr)
        return pipe

    def _owner(self, slot: int) -> tuple[str, int]:
        moved = self._moved.get(slot)
        if moved is not None:
            return moved
        node = self._client.nodes_manager.get_node_from_slot(slot)
        return node.host, int(node.port)

    def call(self, *args: bytes | str | int | float) -> asyncio.Future[Any]:
        """Send one command to the master of its first key's slot (see the module docstring)."""
        loop = asyncio.get_running_loop()
        out: asyncio.Future[Any] = loop.create_future()
        try:
            slot = key_slot(_first_key(args))
            addr = self._owner(slot)
        except Exception as exc:  # no slot map (a cluster that lost every node): fall back
            out.set_exception(RedisConnectionError(f"no route on the Redis Cluster: {exc}"))
            self._refresh()
            return out
        self._send(out, addr, args, self.max_redirects, asking=False)
        return out

    def _send(
        self,
        out: asyncio.Future[Any],
        addr: tuple[str, int],
        args: tuple[bytes | str | int | float, ...],
        hops: int,
        *,
        asking: bool,
    ) -> None:
        pipe = self._pipe(addr)
        if asking:
            # Same connection, next in line: Redis applies ASKING to this very command.
            pipe.call("ASKING").add_done_callback(_quiet)
        inner = pipe.call(*args)

        def settle(f: asyncio.Future[Any]) -> None:
            if out.done():
                return
            if f.cancelled():  # not done by the pipe itself; passed on all the same
                out.cancel()
                return
            exc = f.exception()
            if exc is not None:
                self._refresh()  # a master may be gone: learn who serves its slots now
                out.set_exception(exc)
                return
            reply = f.result()
            hop = _redirect(reply)
            if hop is None or hops <= 0 or self._closed:
                out.set_result(reply)
                return
            kind, slot, host, port = hop
            self.redirects += 1
            if kind == "MOVED":
                self._moved[slot] = (host, port)
                self._refresh()
            self._send(out, (host, port), args, hops - 1, asking=kind == "ASK")

        inner.add_done_callback(settle)

    def _refresh(self) -> None:
        """Re-read the slot map in the background (one at a time, and not more often than
        every :data:`REFRESH_INTERVAL`: the next failure asks again)."""
        if self._closed or (self._refreshing is not None and not self._refreshing.done()):
            return
        now = time.monotonic()
        if now - self._refreshed_at < REFRESH_INTERVAL:
            return
        self._refreshed_at = now
        self.refreshes += 1
        self._refreshing = asyncio.get_running_loop().create_task(self._do_refresh())

    async def _do_refresh(self) -> None:
        with contextlib.suppress(Exception):  # the next failure asks again
            await self._client.nodes_manager.initialize()
            self._moved.clear()

    async def close(self) -> None:
        """Close every node's pipe; outstanding calls fail with ``ConnectionError``."""
        self._closed = True
        if self._refreshing is not None:
            await cancel_and_wait([self._refreshing])
        for pipe in self._pipes.values():
            await pipe.close()


def _quiet(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
