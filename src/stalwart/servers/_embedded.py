"""A NATS and a Redis server, started and stopped together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

import anyio
import anyio.to_thread

from stalwart.servers._nats import NatsServer
from stalwart.servers._process import Managed
from stalwart.servers._redis import RedisServer

if TYPE_CHECKING:
    from types import TracebackType


class EmbeddedServers(Managed):
    """A NATS and a Redis server started and stopped together.

    Use as a context manager, or ``async with`` from an event loop: the async form spawns
    on the loop thread and waits for health in a worker thread, so the loop keeps running.
    """

    def __init__(
        self,
        *,
        nats: NatsServer | None = None,
        redis: RedisServer | None = None,
        redis_appendonly: bool = False,
        redis_appendfsync: str = "everysec",
    ) -> None:
        self.nats = nats if nats is not None else NatsServer()
        self.redis = (
            redis
            if redis is not None
            else RedisServer(appendonly=redis_appendonly, appendfsync=redis_appendfsync)
        )

    @property
    def nats_url(self) -> str:
        """URL of the NATS server."""
        return self.nats.url

    @property
    def redis_url(self) -> str:
        """URL of the Redis server."""
        return self.redis.url

    def start(self, timeout: float = 10.0) -> EmbeddedServers:
        """Start both servers (from a long-lived thread) and return ``self``."""
        try:
            self.nats.start(timeout)
            self.redis.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both servers; idempotent."""
        try:
            self.redis.stop(timeout)
        finally:
            self.nats.stop(timeout)

    async def __aenter__(self) -> Self:
        try:
            await self.nats._start_async()
            await self.redis._start_async()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.stop)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a cancelled task must still not leave servers behind.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)

    def __repr__(self) -> str:
        return f"<EmbeddedServers nats={self.nats_url} redis={self.redis_url}>"
