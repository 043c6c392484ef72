"""The agents every Stalwart measurement runs, in worker processes (``bench.agents:app``).

Timings that must exclude queueing and placement are taken inside the agent with
``time.perf_counter`` and returned as the run's result.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import msgspec

from bench._text import message
from stalwart import App, RunContext

app = App("bench")

TICK_SECONDS = 0.02
"""Step length of the failover run: short steps, so a new owner is seen at once."""


async def noop(i: int) -> int:
    """A trivial step body: the work is nothing, so only the runtime's cost is left."""
    return i


async def tick(i: int) -> int:
    """A short step (``TICK_SECONDS``) standing in for a fast tool call."""
    await asyncio.sleep(TICK_SECONDS)
    return i


async def hold(seconds: float) -> bool:
    """A step that does not finish for ``seconds``: keeps a run active (or at a gate)."""
    await asyncio.sleep(seconds)
    return True


async def model(turn: int, conversation: list[dict[str, str]]) -> dict[str, str]:
    """A scripted model call: reads the whole conversation, answers ~2 KB of new content."""
    return {"role": "assistant", "content": message(turn)}


# --------------------------------------------------------------------------- agents


@app.agent("steps")
async def steps(ctx: RunContext, n: int) -> dict[str, Any]:
    """``n`` trivial steps, each timed in the agent, beside ``n`` plain awaits of the body."""
    t0 = time.perf_counter()
    for i in range(n):
        await noop(i)
    plain = time.perf_counter() - t0
    times: list[float] = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        await ctx.step("s", noop, i)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    return {"n": n, "plain": plain, "steps": total, "median": statistics.median(times)}


class History(msgspec.Struct):
    """Input of the ``history`` agent: ``n`` completed steps, then a gate that never opens."""

    n: int
    hold: float = 3600.0


@app.agent("history")
async def history(ctx: RunContext, inp: History) -> int:
    """Builds a journal of ``n`` steps, then blocks in the ``gate`` step (the first live step
    after every resume)."""
    for i in range(inp.n):
        await ctx.step("s", noop, i)
    await ctx.step("gate", hold, inp.hold)
    return inp.n


@app.agent("ticker")
async def ticker(ctx: RunContext, n: int) -> int:
    """``n`` steps of ``TICK_SECONDS`` each: the long run of the failover measurement."""
    for i in range(n):
        await ctx.step("tick", tick, i)
    return n


@app.agent("load")
async def load(ctx: RunContext, n: int) -> int:
    """``n`` trivial steps: the unit of work of the throughput measurement."""
    for i in range(n):
        await ctx.step("s", noop, i)
    return n


@app.agent("blocked")
async def blocked(ctx: RunContext, seconds: float) -> bool:
    """One step that stays in flight for ``seconds``: an active run for the memory figure."""
    result: bool = await ctx.step("wait", hold, seconds)
    return result


@app.agent("waiter")
async def waiter(ctx: RunContext, _: None) -> Any:
    """One step, then a durable wait for signal ``go``: passivated once the wait is long."""
    await ctx.step("s", noop, 0)
    return await ctx.wait_for_signal("go")


@app.agent("chat")
async def chat(ctx: RunContext, calls: int) -> int:
    """An agent loop: ``calls`` model calls over a conversation that grows ~2 KB per call."""
    conversation = [{"role": "user", "content": message(-1, 512)}]
    for turn in range(calls):
        reply = await ctx.step("model", model, turn, conversation)
        conversation.append(reply)
    return len(conversation)
