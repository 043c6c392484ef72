"""Agents for the concurrency-limit tests (``tests.flow_cc_apps:app``), in worker processes.

``work`` runs one step that holds the run for ``hold`` seconds, or until the test opens the
run's ``in`` gate when ``gate`` is set. Limits: ``per-tenant`` (2 runs per tenant of ``work``),
``one-at-a-time`` (1 run of ``solo`` at once, priority order) and ``shared`` (``fair``: 10 per
tenant, 2 in all, round-robin between tenants).
"""

from __future__ import annotations

import asyncio

import msgspec

from stalwart import App, RunContext
from stalwart.flow import ConcurrencyLimit
from tests.helpers import wait_gate

app = App(
    "flow-cc",
    flow=(
        ConcurrencyLimit(name="per-tenant", key="tenant", limit=2, agents="work"),
        ConcurrencyLimit(name="one-at-a-time", key="agent", limit=1, agents="solo"),
        ConcurrencyLimit(
            name="shared", key=lambda i: i["tenant"], limit=10, total=2, agents="fair"
        ),
    ),
)


class Job(msgspec.Struct):
    tenant: str = "t"
    hold: float = 0.0
    gate: bool = False


async def _hold(run_id: str, hold: float, gate: bool) -> str:
    if gate:
        await wait_gate(run_id, "in")
    elif hold:
        await asyncio.sleep(hold)
    return run_id


@app.agent("work")
async def work(ctx: RunContext, job: Job) -> str:
    return await ctx.step("hold", _hold, ctx.run_id, job.hold, job.gate)


@app.agent("solo")
async def solo(ctx: RunContext, job: Job) -> str:
    return await ctx.step("hold", _hold, ctx.run_id, job.hold, job.gate)


@app.agent("fair")
async def fair(ctx: RunContext, job: dict[str, object]) -> str:
    hold = job.get("hold", 0.0)
    return await ctx.step("hold", _hold, ctx.run_id, float(hold), False)  # type: ignore[arg-type]
