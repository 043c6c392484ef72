"""What every runner shares: registering one agent, submitting runs, the common arguments."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from stalwart.actors import App, RunContext
from stalwart.client import Client
from stalwart.config import Settings
from stalwart.errors import ConfigurationError
from stalwart.kit._versions import decide_patched, reset_patched

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from stalwart.client import RunHandle, StreamPart
    from stalwart.policies import Policies

T = TypeVar("T")

default_app = App("stalwart-adapters")
"""The app adapters register into when none is given; serve it with
``stalwart worker <your module>:default_app`` after importing it there (or pass your own ``App``)."""


def check_max_iterations(max_iterations: int | None) -> int | None:
    """The runners' common ``max_iterations`` rule: None (the framework's default) or >= 1."""
    if max_iterations is not None and max_iterations < 1:
        raise ConfigurationError(f"max_iterations must be at least 1, got {max_iterations}")
    return max_iterations


def build(source: T | Callable[[], T], kind: type[T] | tuple[type, ...], what: str) -> T:
    """The framework object one run works on: ``source`` itself, or what the factory returns.

    Every runner accepts its framework object or a zero-argument factory building one;
    a factory is called once per run (each run then has objects of its own).
    """
    built = source if isinstance(source, kind) else source()  # type: ignore[operator]
    if not isinstance(built, kind):
        raise ConfigurationError(f"the factory must return a {what}, got {type(built).__name__}")
    return built  # type: ignore[return-value]


def check_source(source: Any, kind: type | tuple[type, ...], what: str) -> None:
    """Refuse a runner's framework object that is neither a ``kind`` nor a factory."""
    if not (isinstance(source, kind) or callable(source)):
        raise ConfigurationError(
            f"expected a {what} or a function returning one, got {type(source).__name__}"
        )


class DurableRunner:
    """Base of every adapter's runner: one agent, registered under ``name``.

    Subclasses implement :meth:`execute`, which runs the framework's own loop inside a
    Stalwart run with every model and tool call routed through ``ctx.call``. Every runner
    takes the same leading arguments: ``Runner(name, <framework object or factory>, *,
    max_iterations=None, stream=..., app=None, client=None, policies=None, ...)``.
    """

    def __init__(
        self,
        name: str,
        *,
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
    ) -> None:
        self.name = name
        self.app = app if app is not None else default_app
        self._client = client
        self._owns_client = False

        async def agent(ctx: RunContext, input: Any) -> Any:
            token = await decide_patched(ctx, self)  # Patched factories: old or new, per run
            try:
                return await self.execute(ctx, input)
            finally:
                reset_patched(token)

        agent.__name__ = name
        self.app.register(name, agent, policies=policies)

    async def execute(self, ctx: RunContext, input: Any) -> Any:
        """Run the framework's loop durably and return a msgpack-encodable result."""
        raise NotImplementedError(f"{type(self).__name__} must implement execute()")

    async def client(self) -> Client:
        """The client used by :meth:`submit`; connected from ``STALWART_*`` settings on first use."""
        if self._client is None:
            self._client = await Client.connect(settings=Settings.from_env())
            self._owns_client = True
        return self._client

    def request(self, input: Any, **options: Any) -> Any:
        """The run input that travels to the workers for ``input`` and per-run ``options``.

        The base takes no options and sends ``input`` as plain data. Adapters override it to
        accept their framework's own per-run inputs (a context, deps, message history, a
        thread id...) and encode them into one request that :meth:`execute` decodes.
        """
        if options:
            raise TypeError(
                f"{type(self).__name__} takes no per-run option(s) {', '.join(sorted(options))}"
            )
        return msgspec.to_builtins(input)

    def decode_result(self, data: Any) -> Any:
        """The caller's result rebuilt from a run's result data (the base: the data as is).

        Adapters override it to return their framework's own result type (or a documented
        equivalent) from what :meth:`execute` returned on the worker.
        """
        return data

    async def submit(
        self,
        input: Any,
        *,
        run_id: str | None = None,
        conversation: str = "",
        on_busy: str = "queue",
        **options: Any,
    ) -> RunHandle:
        """Start a durable run of this agent and return its handle at once.

        ``options`` are the adapter's per-run inputs (see :meth:`request`). ``conversation``
        and ``on_busy`` make the run a turn of a conversation (see ``Client.submit`` and
        docs/conversations.md).
        """
        payload = self.request(input, **options)
        client = await self.client()
        return await client.submit(
            self.name, payload, run_id=run_id, conversation=conversation, on_busy=on_busy
        )

    async def result(self, run: RunHandle | str, *, timeout: float | None = None) -> Any:
        """Wait for a run of this agent (a handle or a run id) and return its decoded result."""
        handle = run if not isinstance(run, str) else (await self.client()).handle(run, self.name)
        return self.decode_result(await handle.result(timeout=timeout))

    async def run(
        self,
        input: Any,
        *,
        run_id: str | None = None,
        timeout: float | None = None,
        conversation: str = "",
        on_busy: str = "queue",
        **options: Any,
    ) -> Any:
        """Submit a run, wait for it, and return its result (see :meth:`decode_result`).

        ``conversation`` / ``on_busy``: see :meth:`submit`."""
        handle = await self.submit(
            input, run_id=run_id, conversation=conversation, on_busy=on_busy, **options
        )
        return await self.result(handle, timeout=timeout)

    async def stream_parts(
        self, input: Any, *, run_id: str | None = None, **options: Any
    ) -> AsyncIterator[StreamPart]:
        """Submit a run and yield its stream parts with resets applied, until it ends.

        The framework-neutral stream every adapter's own streaming API is built on: chunks
        (``model.delta`` with ``data["text"]``, ``stream.item``), resets, step completions
        and the run's end (see :meth:`~stalwart.client.RunHandle.stream`).
        """
        handle = await self.submit(input, run_id=run_id, **options)
        async for part in self.stream_handle(handle):
            yield part

    async def stream_handle(
        self, run: RunHandle | str, *, follow: bool = True
    ) -> AsyncIterator[StreamPart]:
        """The stream parts of an existing run of this agent (a handle or a run id)."""
        handle = run if not isinstance(run, str) else (await self.client()).handle(run, self.name)
        stream = handle.stream(follow=follow)
        try:
            async for part in stream:
                yield part
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def run_sync(
        self,
        input: Any,
        *,
        run_id: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Any:
        """Blocking :meth:`run` for scripts (not from inside an event loop)."""

        async def main() -> Any:
            try:
                return await self.run(input, run_id=run_id, timeout=timeout, **options)
            finally:
                await self.aclose()

        return asyncio.run(main())

    async def aclose(self) -> None:
        """Close the client if this runner opened it."""
        if self._owns_client and self._client is not None:
            await self._client.close()
            self._client = None
            self._owns_client = False
