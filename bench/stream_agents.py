"""Agents for ``bench.streaming``: one step whose body consumes a simulated streaming model.

:func:`fake_model` is the model: an async generator yielding ``chunks`` text chunks
``interval`` seconds apart, each stamped with ``time.time()`` the moment it is yielded. The
agent publishes each chunk as a ``model.delta`` (``ctx.emit``) carrying that stamp, so a
client on the same machine reads the latency off every chunk it receives.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from stalwart import App, RunContext

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

app = App("bench-stream")


async def fake_model(chunks: int, interval: float) -> AsyncIterator[tuple[str, float]]:
    """``chunks`` (text, yielded-at) pairs, ``interval`` s apart."""
    for i in range(chunks):
        if i:
            await asyncio.sleep(interval)
        yield f"tok{i} ", time.time()


@app.agent("stream")
async def stream(ctx: RunContext, inp: dict[str, Any]) -> int:
    """One model call streamed through ``ctx.emit``, after ``think`` s before the first token
    (the client attaches meanwhile, as it would during a real model's time to first token)."""

    async def call() -> int:
        await asyncio.sleep(float(inp["think"]))
        n = 0
        async for text, at in fake_model(int(inp["chunks"]), float(inp["interval"])):
            await ctx.emit("model.delta", {"text": text, "t": at})
            n += 1
        return n

    result: int = await ctx.step("model", call)
    return result
