"""9. Flow control: what a shared breaker and a retry budget add to a step (issue #20).

One run of the ``breaker_ab`` agent (``bench.flow_breaker_agents``) in a worker process
against one Redis (AOF everysec): rounds of five trivial steps timed inside the agent. The
differences of medians in the same run are the costs: a shared breaker's check before an
attempt (one script; nothing after a success while no failure is counted), a retry budget
on a first attempt (no Redis call; successes are counted in batches off the step path), and
a retry under a budget against the same retry without one (one script per retry).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from bench._stalwart import Cluster
from bench._util import bench_env, log, summary
from stalwart.testing import NatsServer, RedisServer, worker_process

if TYPE_CHECKING:
    from bench._context import Ctx

APP = "bench.flow_breaker_agents:app"
SERIES = ("free", "breaker", "budget", "retry_free", "retry_budget")


async def measure(ctx: Ctx) -> dict[str, Any]:
    n = ctx.pick(50, 300)
    reps = ctx.pick(2, 7)
    rounds: dict[str, list[float]] = {k: [] for k in SERIES}
    async with AsyncExitStack() as stack:
        nats = NatsServer()
        nats.start()
        stack.callback(nats.stop)
        rs = RedisServer(appendonly=True, appendfsync="everysec")
        rs.start()
        stack.callback(rs.stop)
        cl = await stack.enter_async_context(Cluster(nats.url, rs.url, "breakerbench"))
        proc = worker_process(
            APP,
            nats_url=nats.url,
            redis_url=rs.url,
            worker_id="breakers-1",
            lease_ttl=cl.lease_ttl,
            concurrency=1,
            namespace=cl.ns,
            extra_env=bench_env(),
        ).start()
        cl.workers["breakers-1"] = proc
        await cl.wait_workers(["breakers-1"])
        for r in range(reps + 1):  # round 0 warms up and is not recorded
            log(f"flow_breakers: round {r}/{reps}")
            out = await cl.result(await cl.submit("breaker_ab", n))
            if r:
                for k in rounds:
                    rounds[k].append(float(out[k]))

    def added(k: str, base: str) -> dict[str, Any]:
        return summary([a - b for a, b in zip(rounds[k], rounds[base], strict=True)])

    return {
        "steps_per_round": n,
        **{k: summary(v) for k, v in rounds.items()},
        "breaker_added": added("breaker", "free"),
        "budget_added": added("budget", "free"),
        "retry_added": added("retry_budget", "retry_free"),
    }
