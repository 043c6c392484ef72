"""Agents of the Redis failover tests (``tests.apps_redis_ha:app``).

Each step body returns a fresh token; right after a step returns *live* to the agent (the
worker was told its entry is durable), the agent records ``<i>:<token>`` under
:func:`acks_key` in the counters' Redis. The test then checks every recorded token against
the journal: an acknowledged step whose entry a failover lost shows up as a token the
journal does not hold (the step ran again and journaled another one).
"""

from __future__ import annotations

import asyncio
import uuid

import msgspec

from stalwart import App, RunContext
from tests.helpers import count_execution, counters

app = App("tests_redis_ha")


def acks_key(run_id: str) -> str:
    """List of ``<i>:<token>`` of the steps the agent saw return, in order."""
    return f"acks:{run_id}"


class Steps(msgspec.Struct):
    n: int = 10
    pace: float = 0.1
    """Seconds each step body takes (runs stay in flight across a failover)."""


async def token(i: int, pace: float) -> str:
    await count_execution()
    await asyncio.sleep(pace)
    return f"{i}:{uuid.uuid4().hex}"


@app.agent("acked")
async def acked(ctx: RunContext, inp: Steps) -> int:
    for i in range(inp.n):
        value = await ctx.step(f"t{i}", token, i, inp.pace)
        await counters().rpush(acks_key(ctx.run_id), value)
    return inp.n
