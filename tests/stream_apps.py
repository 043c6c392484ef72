"""Apps for the stream tests: a plain agent whose steps stream text like a model.

``streamer`` runs ``steps`` steps ``model0``, ``model1``...; each emits ``chunks`` token
deltas (``ctx.emit("model.delta", {"text": ...})``) and returns their concatenation, so the
run's result is exactly the text a stream consumer must show once. A step the test marked
with :func:`tests.helpers.mark_gated` holds on its gate after chunk ``hold_at``; ``fail_once``
makes a step's first attempt raise after streaming (a retry).
"""

from __future__ import annotations

import asyncio

import msgspec

from stalwart import App, RunContext, current_step
from stalwart.policies import RetryPolicy, durable
from tests.helpers import count_execution, counters, exec_key, wait_if_gated

app = App("stream-tests")


class StreamIn(msgspec.Struct, frozen=True):
    steps: int = 2
    chunks: int = 6
    hold_at: int = 2
    """Chunk after which a gated step waits on its gate."""
    fail_once: str = ""
    """Step (``model1``) whose first attempt raises after streaming ``hold_at + 1`` chunks."""
    delay: float = 0.0
    """Seconds between chunks (a model streaming slowly)."""


_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.05, jitter=0.0)


async def stream_text(ctx: RunContext, name: str, inp: StreamIn) -> str:
    """One model call's worth of streamed text (the body of step ``name``)."""
    info = current_step()
    assert info is not None
    await count_execution()
    n = int(await counters().get(exec_key(info.run_id, info.key)) or 0)
    text = ""
    for i in range(inp.chunks):
        piece = f"{name}-{i} "
        await ctx.emit("model.delta", {"text": piece, "type": "text"})
        text += piece
        if i == inp.hold_at:
            await wait_if_gated(info.run_id, info.key)
            if inp.fail_once == name and n == 1:
                raise ConnectionError(f"{name}: the model connection dropped mid-stream")
        if inp.delay:
            await asyncio.sleep(inp.delay)
    return text


@app.agent("streamer")
async def streamer(ctx: RunContext, inp: StreamIn) -> str:
    @durable(retry=_RETRY)
    async def model_call(name: str) -> str:
        return await stream_text(ctx, name, inp)

    out = ""
    for s in range(inp.steps):
        out += await ctx.step(f"model{s}", model_call, f"model{s}")
    return out
