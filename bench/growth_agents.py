"""The growth section's app (``bench.growth_agents:app``): its own, so that the number of
agents a worker serves is a parameter (``BENCH_GROWTH_AGENTS``, default 1; with
``BENCH_GROWTH_WAIT=0`` there are no others) and the other sections' app keeps its seven.

``load`` is ``a000``; ``a001``... are the same agent under other names (the agents-growth
curve spreads its runs over all of them); ``waiter`` and ``resumer`` wait for a signal.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from stalwart import App, RunContext

app = App("growth")


async def noop(i: int) -> int:
    """A trivial step body."""
    return i


async def load(ctx: RunContext, n: int) -> int:
    """``n`` trivial steps."""
    for i in range(n):
        await ctx.step("s", noop, i)
    return n


for _k in range(max(int(os.environ.get("BENCH_GROWTH_AGENTS", "1")), 1)):
    app.agent(f"a{_k:03d}")(load)


async def waiter(ctx: RunContext, _: None) -> Any:
    """One step, then a durable wait for signal ``go`` (passivated once the wait is long)."""
    await ctx.step("s", noop, 0)
    return await ctx.wait_for_signal("go")


class Resume(msgspec.Struct):
    """``before`` steps, a wait for signal ``go`` (the run passivates), ``after`` steps."""

    before: int
    after: int


async def resumer(ctx: RunContext, inp: Resume) -> int:
    """A journal of ``before`` steps, passivated, resumed by a signal, then ``after`` new
    steps: the cost of a new step (and of the resume) at that journal length."""
    for i in range(inp.before):
        await ctx.step("before", noop, i)
    await ctx.wait_for_signal("go")
    for i in range(inp.after):
        await ctx.step("after", noop, i)
    return inp.before + inp.after


# The agents curve counts exactly BENCH_GROWTH_AGENTS agents: it leaves these two out.
if os.environ.get("BENCH_GROWTH_WAIT", "1") == "1":
    app.agent("waiter")(waiter)
    app.agent("resumer")(resumer)
