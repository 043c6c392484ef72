"""Running the saver's plans: generators that yield Redis commands and get their replies.

A plan holds the logic and does no I/O, so one plan serves the synchronous and the
asynchronous API of the saver alike; a ``Driver`` executes its commands on a ``redis.Redis``
or a ``redis.asyncio.Redis`` client, riding out a short Redis outage when asked to.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stalwart.adapters.langgraph import _scripts
from stalwart.errors import ConfigurationError, ServerUnavailableError

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

T = TypeVar("T")

Cmd = Callable[[Any, "Scripts"], Any]
"""A Redis command: called with a client (sync or async) and that client's scripts."""
Plan = Generator[Cmd, Any, T]

_RETRY_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def call(method: str, *args: Any) -> Cmd:
    """A plain client command, ``client.<method>(*args)``."""
    return lambda client, scripts: getattr(client, method)(*args)


def script(name: str, keys: list[str], args: list[Any]) -> Cmd:
    """One of the saver's Lua scripts (``_scripts.<NAME>``), run with ``keys`` and ``args``."""
    return lambda client, scripts: getattr(scripts, name)(keys=keys, args=args)


def text(raw: Any) -> str:
    """A Redis reply as ``str``."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class Scripts:
    """The Lua scripts registered on one client (EVALSHA, loaded again after NOSCRIPT)."""

    def __init__(self, client: Any) -> None:
        self.put = client.register_script(_scripts.PUT)
        self.put_writes = client.register_script(_scripts.PUT_WRITES)
        self.get = client.register_script(_scripts.GET)
        self.load = client.register_script(_scripts.LOAD)


class Driver:
    """Executes plans on a synchronous and/or an asynchronous Redis client."""

    def __init__(
        self,
        client: aioredis.Redis | None,
        sync_client: redis.Redis | None,
        *,
        retry_for: float = 0.0,
    ) -> None:
        if client is None and sync_client is None:
            raise ConfigurationError("StalwartSaver needs a Redis client (client= or sync_client=)")
        self.client = client
        self.sync_client = sync_client
        self.retry_for = retry_for
        """How long a command keeps retrying through a Redis outage (0: not at all)."""
        self.sync_refused = ""
        """When set, why the synchronous API may not be used."""
        self._scripts = Scripts(client) if client is not None else None
        self._sync_scripts = Scripts(sync_client) if sync_client is not None else None

    async def close(self) -> None:
        """Close both clients."""
        if self.client is not None:
            await self.client.aclose()
        if self.sync_client is not None:
            self.sync_client.close()

    def _outage(self, started: float, exc: Exception) -> ServerUnavailableError | None:
        if time.monotonic() - started >= self.retry_for:
            return ServerUnavailableError(
                f"Redis unreachable for the LangGraph checkpoints ({self.retry_for:.0f}s): {exc}"
            )
        return None

    def exec_sync(self, cmd: Cmd) -> Any:
        """Run one command on the synchronous client."""
        if self.sync_refused:
            raise ConfigurationError(self.sync_refused)
        if self.sync_client is None or self._sync_scripts is None:
            raise ConfigurationError(
                "this StalwartSaver has no synchronous Redis client: use the async graph API "
                "(ainvoke, astream) or create it with sync_client= (StalwartSaver.from_url does)"
            )
        started, delay = time.monotonic(), 0.05
        while True:
            try:
                return cmd(self.sync_client, self._sync_scripts)
            except _RETRY_ERRORS as exc:
                if (err := self._outage(started, exc)) is not None:
                    raise err from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def exec_async(self, cmd: Cmd) -> Any:
        """Run one command on the asynchronous client."""
        if self.client is None or self._scripts is None:
            raise ConfigurationError(
                "this StalwartSaver has no asyncio Redis client: use the sync graph API "
                "(invoke, stream) or create it with client= (StalwartSaver.from_url does)"
            )
        started, delay = time.monotonic(), 0.05
        while True:
            try:
                result = cmd(self.client, self._scripts)
                return await result if inspect.isawaitable(result) else result
            except _RETRY_ERRORS as exc:
                if (err := self._outage(started, exc)) is not None:
                    raise err from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def run_sync(self, plan: Plan[T]) -> T:
        """Drive ``plan`` to its end on the synchronous client and return its result."""
        try:
            cmd = next(plan)
            while True:
                cmd = plan.send(self.exec_sync(cmd))
        except StopIteration as done:
            return cast("T", done.value)

    async def run_async(self, plan: Plan[T]) -> T:
        """Drive ``plan`` to its end on the asynchronous client and return its result."""
        try:
            cmd = next(plan)
            while True:
                cmd = plan.send(await self.exec_async(cmd))
        except StopIteration as done:
            return cast("T", done.value)
