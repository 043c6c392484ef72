"""7. Redis Cluster: durable steps/s and CPU per step on a Redis Cluster against a single
Redis, in the same run.

Both are up at once, each with its own namespace and worker processes: a single Redis, and
a cluster of 3 masters with a replica each (every node with AOF everysec, like the single
one). Batches alternate between the two (single, cluster, single, ...), so both see the same
machine; each batch is run as in measurement 4 (workers SIGSTOPped while it is submitted,
rates over the middle 80 % of the journal's timestamps). Redis CPU is the sum over every
node of the cluster, replicas included.
"""

from __future__ import annotations

import os
from typing import Any

from bench._stalwart import Cluster
from bench._util import cpu_seconds, log, summary
from bench.throughput import CONCURRENCY, _Batch
from stalwart.servers import EmbeddedServers, RedisClusterServer

WORKERS = 2
"""Worker processes per target."""


class _NodesBatch(_Batch):
    """A batch whose server roles may each be several processes (a cluster's nodes)."""

    def __init__(self, cl: Cluster, pids: dict[str, list[int]]) -> None:
        super().__init__(cl, {})
        self.role_pids = pids

    def _cpu(self) -> dict[str, float]:
        out = {"workers": sum(cpu_seconds(p.pid) for p in self.cl.workers.values())}
        for role, pids in self.role_pids.items():
            out[role] = sum(cpu_seconds(pid) for pid in pids)
        return out


def _per_step(batches: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "steps_per_s": summary([b["steps_per_s"] for b in batches]),
        "cpu_us_per_step": {
            role: summary([b["cpu"][role] / b["steps"] * 1e6 for b in batches])
            for role in batches[0]["cpu"]
        },
        "cpu_util": summary([b["cpu_util"] for b in batches]),
        "others_util": summary([b["others_util"] for b in batches]),
    }


async def measure(ctx: Any) -> dict[str, Any]:
    runs, steps = ctx.pick((20, 10), (256, 40))
    reps = ctx.pick(1, 3)
    raw: dict[str, list[dict[str, Any]]] = {"single": [], "cluster": []}
    async with (
        EmbeddedServers(redis_appendonly=True, redis_appendfsync="everysec") as srv,
        RedisClusterServer(masters=3, replicas=1, appendonly=True) as rc,
        Cluster(srv.nats_url, srv.redis_url, "rcsingle", lease_ttl=5) as single,
        Cluster(srv.nats_url, rc.url, "rccluster", lease_ttl=5) as cluster,
    ):
        nats = [srv.nats.pid or 0]
        batches = {
            "single": _NodesBatch(single, {"redis": [srv.redis.pid or 0], "nats": nats}),
            "cluster": _NodesBatch(
                cluster, {"redis": [n.pid or 0 for n in rc.nodes], "nats": nats}
            ),
        }
        for name, cl in (("single", single), ("cluster", cluster)):
            await cl.start_workers(
                [f"{cl.ns}-{i}" for i in range(WORKERS)], concurrency=CONCURRENCY
            )
            await batches[name].run("load", 4, 2)  # warm-up: connections, scripts, consumers
        for rep in range(reps):
            for name in ("single", "cluster"):
                b = await batches[name].run("load", runs, steps)
                raw[name].append(b)
                log(
                    f"redis_cluster {name} rep {rep + 1}/{reps}: {b['steps_per_s']:.0f} "
                    f"steps/s, CPU {b['cpu_util'] * 100:.0f}% of the machine"
                )
    return {
        "workers": WORKERS,
        "concurrency": CONCURRENCY,
        "batch": {"runs": runs, "steps_per_run": steps},
        "nproc": os.cpu_count(),
        "single": _per_step(raw["single"]),
        "cluster": _per_step(raw["cluster"]),
        # Paired by repetition: the two batches of one repetition ran back to back.
        "ratio": summary(
            [
                c["steps_per_s"] / s["steps_per_s"]
                for s, c in zip(raw["single"], raw["cluster"], strict=True)
                if s["steps_per_s"]
            ]
        ),
    }
