"""The agent of the breaker and retry budget measurement (``bench.flow_breaker_agents:app``):
one run, steps with and without a shared breaker or a retry budget, interleaved and timed in
the agent."""

from __future__ import annotations

import statistics
import time
from typing import Any

from stalwart import App, Policies, RetryPolicy, RunContext
from stalwart.flow import RetryBudget, SharedBreaker

# Rules that never hold anything (the breaker never sees a failure, the budget is huge):
# what is measured is their checks on the step path, not waiting.
app = App(
    "benchbreakers",
    policies=Policies(
        retry={"step": RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=0.0)}
    ),
    flow=[
        SharedBreaker(name="bench-breaker", resources="step:breaker", threshold=10**9),
        RetryBudget(
            name="bench-budget",
            resources=("step:budget", "step:retry_budget"),
            ratio=1.0,
            min_per_second=10**6,
        ),
    ],
)


async def noop(i: int) -> int:
    return i


class Once:
    """Fails the first call of each ``i``: every step is one failed attempt and one retry."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    async def __call__(self, i: int) -> int:
        if i not in self.seen:
            self.seen.add(i)
            raise ConnectionError("first attempt fails")
        return i


@app.agent("breaker_ab")
async def breaker_ab(ctx: RunContext, n: int) -> dict[str, Any]:
    """``n`` rounds of five steps: ungoverned, under a shared breaker, under a retry budget,
    and a step that fails once then succeeds, without and with the retry budget."""
    times: dict[str, list[float]] = {
        "free": [],
        "breaker": [],
        "budget": [],
        "retry_free": [],
        "retry_budget": [],
    }
    flaky = {"retry_free": Once(), "retry_budget": Once()}
    for i in range(n):
        for name, series in times.items():
            fn = flaky.get(name, noop)
            t0 = time.perf_counter()
            await ctx.step(name, fn, i)
            series.append(time.perf_counter() - t0)
    return {name: statistics.median(series) for name, series in times.items()}
