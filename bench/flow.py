"""8. Flow control: what a shared rate limit adds to a step (issue #20).

One run of the ``flow_ab`` agent (``bench.flow_agents``) in a worker process against one
Redis (AOF everysec): rounds of three trivial steps, one that no flow rule governs, one under
a request limit and one under a token limit, each timed inside the agent. The difference of
medians in the same run is the cost of an acquire and a settle (two Redis round trips). The
cost of a step that no rule matches, in an app that has rules, is a dictionary lookup:
measured in-process beside the cost of the same lookup's miss path.
"""

from __future__ import annotations

import timeit
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from bench._stalwart import Cluster
from bench._util import bench_env, log, summary
from stalwart.flow import FlowGate, FlowStore, RateLimit
from stalwart.testing import NatsServer, RedisServer, worker_process

if TYPE_CHECKING:
    from bench._context import Ctx

APP = "bench.flow_agents:app"


def lookup_cost(reps: int = 200_000) -> float:
    """Seconds per ``FlowGate.match`` of a step no rule governs (cached), in-process."""
    gate = FlowGate(
        [RateLimit(name="r", resources="model:*", requests=1)],
        FlowStore(aioredis.Redis(), "bench"),  # never connects
    )
    gate.match("step", "free")
    return timeit.timeit(lambda: gate.match("step", "free"), number=reps) / reps


async def measure(ctx: Ctx) -> dict[str, Any]:
    n = ctx.pick(50, 300)
    reps = ctx.pick(2, 7)
    rounds: dict[str, list[float]] = {"free": [], "limited": [], "tokens": []}
    async with AsyncExitStack() as stack:
        nats = NatsServer()
        nats.start()
        stack.callback(nats.stop)
        rs = RedisServer(appendonly=True, appendfsync="everysec")
        rs.start()
        stack.callback(rs.stop)
        cl = await stack.enter_async_context(Cluster(nats.url, rs.url, "flowbench"))
        proc = worker_process(
            APP,
            nats_url=nats.url,
            redis_url=rs.url,
            worker_id="flow-1",
            lease_ttl=cl.lease_ttl,
            concurrency=1,
            namespace=cl.ns,
            extra_env=bench_env(),
        ).start()
        cl.workers["flow-1"] = proc
        await cl.wait_workers(["flow-1"])
        for r in range(reps + 1):  # round 0 warms up and is not recorded
            log(f"flow: round {r}/{reps}")
            out = await cl.result(await cl.submit("flow_ab", n))
            if r:
                for k in rounds:
                    rounds[k].append(float(out[k]))
    acquire = [a - b for a, b in zip(rounds["limited"], rounds["free"], strict=True)]
    tokens = [a - b for a, b in zip(rounds["tokens"], rounds["free"], strict=True)]
    return {
        "steps_per_round": n,
        "free": summary(rounds["free"]),
        "limited": summary(rounds["limited"]),
        "tokens": summary(rounds["tokens"]),
        "acquire": summary(acquire),
        "acquire_tokens": summary(tokens),
        "lookup": lookup_cost(),
    }
