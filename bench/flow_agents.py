"""The agent of the flow-control measurement (``bench.flow_agents:app``): one run, steps with
and without a shared rate limit, interleaved and timed in the agent."""

from __future__ import annotations

import statistics
import time
from typing import Any

from stalwart import App, RunContext
from stalwart.flow import RateLimit

# A limit that never holds anything: what is measured is the acquire and the settle, the two
# Redis round trips every limited attempt makes, not waiting.
app = App(
    "benchflow",
    flow=[
        RateLimit(name="bench-requests", resources="step:limited", requests=10**9, per=60.0),
        RateLimit(name="bench-tokens", resources="step:tokens", tokens=10**12, per=60.0),
    ],
)


async def noop(i: int) -> int:
    return i


@app.agent("flow_ab")
async def flow_ab(ctx: RunContext, n: int) -> dict[str, Any]:
    """``n`` rounds of three steps: no rule matches, a request limit, a token limit."""
    times: dict[str, list[float]] = {"free": [], "limited": [], "tokens": []}
    for i in range(n):
        for name, series in times.items():
            t0 = time.perf_counter()
            await ctx.step(name, noop, i)
            series.append(time.perf_counter() - t0)
    return {name: statistics.median(series) for name, series in times.items()}
