"""What every framework adapter shares: registering an agent and submitting runs of it."""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart.actors import App, RunContext, StepSpec, fingerprint
from stalwart.client import Client
from stalwart.config import Settings

if TYPE_CHECKING:
    from stalwart.client import RunHandle
    from stalwart.policies import Policies

default_app = App("stalwart-adapters")
"""The app adapters register into when none is given; serve it with
``stalwart worker <your module>:default_app`` after importing it there (or pass your own ``App``)."""


def canonical_fp(name: str, payload: Any) -> str:
    """Fingerprint a framework request already reduced to plain data."""
    return fingerprint(name, payload)


def text_digest(text: str) -> str:
    """A short stable digest, for fingerprinting large strings without storing them."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class DurableRunner:
    """Base of the ``DurableAgentRunner`` classes: one agent, registered under ``name``.

    Subclasses implement :meth:`execute`, which runs the framework's own loop inside a
    Stalwart run with every model and tool call routed through ``ctx.call``.
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
            return await self.execute(ctx, input)

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

    async def submit(self, input: Any, *, run_id: str | None = None) -> RunHandle:
        """Start a durable run of this agent and return its handle at once."""
        client = await self.client()
        return await client.submit(self.name, msgspec.to_builtins(input), run_id=run_id)

    async def run(
        self, input: Any, *, run_id: str | None = None, timeout: float | None = None
    ) -> Any:
        """Submit a run and wait for its result."""
        handle = await self.submit(input, run_id=run_id)
        return await handle.result(timeout=timeout)

    def run_sync(
        self, input: Any, *, run_id: str | None = None, timeout: float | None = None
    ) -> Any:
        """Blocking :meth:`run` for scripts (not from inside an event loop)."""

        async def main() -> Any:
            try:
                return await self.run(input, run_id=run_id, timeout=timeout)
            finally:
                await self.aclose()

        return asyncio.run(main())

    async def aclose(self) -> None:
        """Close the client if this runner opened it."""
        if self._owns_client and self._client is not None:
            await self._client.close()
            self._client = None
            self._owns_client = False


__all__ = ["DurableRunner", "StepSpec", "canonical_fp", "default_app", "text_digest"]
