"""Agents for the hostile-input tests (``tests.hostile_apps:app``): bad requests, odd exceptions,
huge texts, runs that crash their actor on every placement.

Executions are counted in Redis (``COUNTER_REDIS_URL``) (``tests.helpers``).
"""

from __future__ import annotations

from typing import Any

from stalwart import NO_RETRY, App, RetryPolicy, RunContext, durable
from tests.helpers import count_execution, counters, wait_gate

app = App("h3")


async def counted(value: Any) -> Any:
    await count_execution()
    return value


@app.agent("echo")
async def echo(ctx: RunContext, value: Any) -> Any:
    """Returns its input, through one counted step."""
    return await ctx.step("count", counted, value)


@app.agent("gated")
async def gated(ctx: RunContext, value: Any) -> Any:
    """Holds the run live until the test opens its 'go' gate, then returns its input."""
    await ctx.step("before", counted, 1)
    await wait_gate(ctx.run_id, "go")
    return value


@app.agent("waiter")
async def waiter(ctx: RunContext, _: None) -> Any:
    """Waits for signal 'go' (passivated when the worker's passivate_after is short)."""
    await ctx.step("before", counted, 1)
    return await ctx.wait_for_signal("go")


class _NamelessMeta(type):
    @property
    def __name__(cls) -> str:  # type: ignore[override]
        raise RuntimeError("this class has no printable name")


class Unprintable(Exception, metaclass=_NamelessMeta):
    """An exception whose str(), repr(), class name, cause and attributes all raise."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises")

    def __repr__(self) -> str:
        raise RuntimeError("repr() of this exception raises")

    @property
    def retry_after(self) -> float:
        raise RuntimeError("attribute access raises too")

    @property  # type: ignore[override]
    def __cause__(self) -> BaseException | None:
        raise RuntimeError("so does its cause")


@durable(retry=NO_RETRY)
async def raise_unprintable() -> None:
    await count_execution()
    raise Unprintable()


@durable(retry=RetryPolicy(max_attempts=2, initial_interval=0.05, jitter=0.0))
async def raise_unprintable_retried() -> None:
    await count_execution()
    raise Unprintable()


@app.agent("unprintable")
async def unprintable(ctx: RunContext, where: str) -> None:
    """Raises an :class:`Unprintable` in the agent body, a step, or a retried step."""
    if where == "agent":
        raise Unprintable()
    if where == "step":
        await ctx.step("once", raise_unprintable)
    await ctx.step("retried", raise_unprintable_retried)


class Poison(BaseException):
    """Escapes every handler of the actor: its task dies without ending the run."""


@app.agent("poison")
async def poison(ctx: RunContext, _: None) -> None:
    await counters().incr(f"poison:{ctx.run_id}")
    raise Poison("this run kills its actor on every placement")


@app.agent("shouty")
async def shouty(ctx: RunContext, size: int) -> None:
    """Fails with an error message of ``size`` characters."""
    raise ValueError("e" * size)


@app.agent("long_step")
async def long_step(ctx: RunContext, size: int) -> int:
    """One step whose name (and so its key) is ``size`` characters long."""
    return int(await ctx.step("s" * size, counted, size))
