"""Agents the test suite runs in real worker processes (``tests.apps:app``).

Step bodies count their executions in Redis (``COUNTER_REDIS_URL``), outside the worker, so a
test can prove which bodies ran how often across SIGKILLs. Gates are Redis lists a body or
the agent blocks on until the test pushes a token: they hold a run at an exact point.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import redis.asyncio as aioredis

from stalwart import App, RunContext, current_step

app = App("tests")

_redis: aioredis.Redis | None = None


def counters() -> aioredis.Redis:
    global _redis
    if _redis is None:
        _redis = aioredis.Redis.from_url(os.environ["COUNTER_REDIS_URL"])
    return _redis


def exec_key(run_id: str, step: str) -> str:
    return f"exec:{run_id}:{step}"


def gate_key(run_id: str, name: str) -> str:
    return f"gate:{run_id}:{name}"


async def count_execution() -> None:
    info = current_step()
    assert info is not None
    await counters().incr(exec_key(info.run_id, info.key))


async def wait_gate(run_id: str, name: str) -> None:
    got = await counters().blpop([gate_key(run_id, name)], timeout=60)
    if got is None:
        raise TimeoutError(f"gate {name} of {run_id} never opened")


class TenSteps(msgspec.Struct):
    pause_after: int = 0
    """Block in agent code (outside any step) after this step until the 'after' gate opens."""
    block_in: int = 0
    """Block inside this step's body (after counting it) until the 'in' gate opens."""


async def numbered(i: int) -> int:
    await count_execution()
    return i * 10


@app.agent("ten")
async def ten(ctx: RunContext, inp: TenSteps) -> int:
    total = 0
    for i in range(1, 11):
        if i == inp.block_in:
            total += await ctx.step(f"s{i}", blocking, i)
        else:
            total += await ctx.step(f"s{i}", numbered, i)
        if i == inp.pause_after:
            await wait_gate(ctx.run_id, "after")
    return total


async def blocking(i: int) -> int:
    await count_execution()
    info = current_step()
    assert info is not None
    await wait_gate(info.run_id, "in")
    return i * 10


async def quick(i: int) -> int:
    await count_execution()
    return i


@app.agent("fast")
async def fast(ctx: RunContext, n: int) -> int:
    """Three short steps; for load tests."""
    total = 0
    for i in range(3):
        total += await ctx.step("q", quick, n + i)
    return total


class Order(msgspec.Struct):
    sku: str
    qty: int


@app.agent("typed")
async def typed(ctx: RunContext, order: Order) -> dict[str, Any]:
    price = await ctx.step("price", quick, order.qty)
    return {"sku": order.sku, "total": price * 2}


def explode(what: str) -> None:
    raise ValueError(f"tool broke on {what}")


@app.agent("failing")
async def failing(ctx: RunContext, what: str) -> str:
    await ctx.step("ok", quick, 1)
    await ctx.step("boom", explode, what)
    return "unreachable"


async def versioned(x: int) -> int:
    await count_execution()
    return x


@app.agent("versioned")
async def versioned_agent(ctx: RunContext, _: None) -> int:
    """Step a's argument depends on AGENT_VERSION: a code change between crash and resume."""
    a = await ctx.step("a", versioned, int(os.environ.get("AGENT_VERSION", "1")))
    await wait_gate(ctx.run_id, "after")
    b = await ctx.step("b", versioned, 1)
    return a + b


@app.agent("sleepy")
async def sleepy(ctx: RunContext, n: int) -> int:
    """n steps that each wait on the 'in' gate: lets a test cancel or drain between steps."""
    for i in range(n):
        await ctx.step("wait", blocking, i)
    return n
