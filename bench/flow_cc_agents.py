"""Agents for ``bench.flow_concurrency``: the same trivial agent with and without a
concurrency limit (``limited``: 10,000 runs per tenant, so it never parks; ``tight``: 4 at
once, so most runs park and are handed on; each holds its slot ``hold`` seconds)."""

from __future__ import annotations

import asyncio

from stalwart import App, RunContext
from stalwart.flow import ConcurrencyLimit

app = App(
    "bench-flow-cc",
    flow=[
        ConcurrencyLimit(name="roomy", key="tenant", limit=10_000, agents="limited"),
        ConcurrencyLimit(name="four", key="tenant", limit=4, agents="tight"),
    ],
)


async def _one(i: int, hold: float = 0.0) -> int:
    if hold:
        await asyncio.sleep(hold)
    return i


async def _body(ctx: RunContext, inp: dict[str, int]) -> int:
    return await ctx.step("one", _one, int(inp.get("i", 0)))


@app.agent("free")
async def free(ctx: RunContext, inp: dict[str, int]) -> int:
    return await _body(ctx, inp)


@app.agent("limited")
async def limited(ctx: RunContext, inp: dict[str, int]) -> int:
    return await _body(ctx, inp)


@app.agent("tight")
async def tight(ctx: RunContext, inp: dict[str, float]) -> int:
    return await ctx.step("one", _one, int(inp.get("i", 0)), float(inp.get("hold", 0.0)))
