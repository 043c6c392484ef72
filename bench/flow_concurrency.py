"""9. Flow control: the cost of a concurrency limit on the placement path, in one run.

1. The scripts alone: one acquire (a free slot) and its release against a loopback Redis,
   the two round trips a limit adds to every placement.
2. End to end, a worker process serving the same trivial agent as ``free`` (no limit) and
   ``limited`` (a limit that never parks), interleaved in rounds, one run at a time (an idle
   system: no queueing): placement latency (the record's creation to the claim's
   ``Started`` entry) and run latency (submit to the ``Finished`` entry).
3. ``tight`` (4 at once, one tenant, each run holding its slot 50 ms), submitted as a burst:
   runs park and are handed on; the time from a slot's release (a run's ``Finished``) to
   the claim of the run it was handed to.

    python -m bench.flow_concurrency [--runs 200] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import TYPE_CHECKING, Any

from bench._util import bench_env, log, summary
from stalwart import Client, Settings
from stalwart.checkpoints import CheckpointStore, Finished, Started
from stalwart.flow import ConcurrencyLimit
from stalwart.flow._cc_store import ConcurrencySlots
from stalwart.testing import NatsServer, RedisServer, worker_process

if TYPE_CHECKING:
    from bench._context import Ctx


def _ms(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return (
        f"median {statistics.median(values) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms (n={len(values)})"
    )


async def scripts(redis_url: str, n: int) -> tuple[list[float], list[float]]:
    store = await CheckpointStore.connect(redis_url, "benchcc")
    slots = ConcurrencySlots(store.redis, "benchcc", reserve_ttl=10)
    rule = ConcurrencyLimit(name="s", key="tenant", limit=1_000_000)
    acquire, release = [], []
    for i in range(n):
        t0 = time.perf_counter()
        await slots.acquire(rule, "t", f"r{i}", "1", ttl=5, priority=0, lane="", request=b"x")
        t1 = time.perf_counter()
        await slots.release(rule, f"r{i}", "1")
        acquire.append(t1 - t0)
        release.append(time.perf_counter() - t1)
    await store.close()
    return acquire, release


async def placement(
    client: Client,
    agent: str,
    runs: int,
    spans: list[tuple[float, float]] | None = None,
    *,
    burst: bool = False,
) -> tuple[list[float], list[float]]:
    handles = []
    if burst:  # all at once (32 submits in flight), each run holding its slot 50 ms
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with sem:
                submitted = time.time()
                inp = {"tenant": 1, "i": i, "hold": 0.05}
                handles.append((submitted, await client.submit(agent, inp, run_id=f"{agent}-{i}")))

        await asyncio.gather(*(one(i) for i in range(runs)))
    for i in range(runs if not burst else 0):
        # One at a time, so the latency is the placement path's, not a queue's.
        run_id = f"{agent}-{uuid.uuid4().hex[:10]}"
        submitted = time.time()
        h = await client.submit(agent, {"tenant": 1, "i": i}, run_id=run_id)
        await h.result(timeout=60)
        handles.append((submitted, h))
    placed, total = [], []
    for submitted, h in handles:
        await h.result(timeout=60)
        record = await h.status()
        entries = await client.store.read_journal(h.run_id)
        start = next(e.entry.at for e in entries if isinstance(e.entry, Started))
        end = next(e.entry.at for e in entries if isinstance(e.entry, Finished))
        placed.append(start - record.created_at)
        total.append(end - submitted)
        if spans is not None:
            spans.append((start, end))
    return placed, total


def hand_on(spans: list[tuple[float, float]], slots: int = 4) -> list[float]:
    """The k-th claim (k > slots) minus the (k - slots)-th end: the slot it took was freed
    by that end, under a limit of ``slots`` runs at once."""
    ends = sorted(e for _, e in spans)
    starts = sorted(s for s, _ in spans)
    return [starts[k] - ends[k - slots] for k in range(slots, len(starts))]


async def collect(runs: int, rounds: int, script_reps: int = 2000) -> dict[str, list[float]]:
    """Every measurement of this module, as raw seconds."""
    out: dict[str, list[float]] = {}
    with NatsServer() as nats, RedisServer() as redis:
        out["acquire"], out["release"] = await scripts(redis.url, script_reps)
        ns = "b" + uuid.uuid4().hex[:8]
        settings = Settings(nats_url=nats.url, redis_url=redis.url, namespace=ns, lease_ttl=2)
        proc = worker_process(
            "bench.flow_cc_agents:app", nats_url=nats.url, redis_url=redis.url,
            worker_id="w1", namespace=ns, concurrency=16, extra_env=bench_env(),
        ).start()  # fmt: skip
        client = await Client.connect(settings=settings)
        try:
            for _ in range(600):  # 30 s for the worker to come up
                if "w1" in {w.worker_id for w in await client.broker.workers()}:
                    break
                await asyncio.sleep(0.05)
            for k in ("free", "limited"):
                out[f"{k}_placement"], out[f"{k}_run"] = [], []
            for r in range(rounds):
                for agent in ("free", "limited") if r % 2 == 0 else ("limited", "free"):
                    p, t = await placement(client, agent, runs)
                    out[f"{agent}_placement"] += p
                    out[f"{agent}_run"] += t
                log(f"flow_concurrency: round {r + 1}/{rounds} done")
            spans: list[tuple[float, float]] = []
            out["tight_placement"], out["tight_run"] = await placement(
                client, "tight", runs, spans, burst=True
            )
            out["hand_on"] = hand_on(spans)
        finally:
            await client.close()
            proc.kill()
    return out


async def measure(ctx: Ctx) -> dict[str, Any]:
    """Section 9 of the suite (``python -m bench --only flow_concurrency``)."""
    raw = await collect(ctx.pick(20, 200), ctx.pick(2, 4), ctx.pick(200, 2000))
    return {k: summary(v) for k, v in raw.items()} | {"runs": ctx.pick(20, 200)}


async def main(runs: int, rounds: int) -> None:
    raw = await collect(runs, rounds)
    print(f"acquire (free slot): {_ms(raw['acquire'])}")
    print(f"release:             {_ms(raw['release'])}")
    for agent in ("free", "limited", "tight"):
        p, t = raw[f"{agent}_placement"], raw[f"{agent}_run"]
        print(f"{agent:8} placement: {_ms(p)}; submit to end: {_ms(t)}")
    print(f"tight    hand-on (a slot's release to the next run's claim): {_ms(raw['hand_on'])}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()
    asyncio.run(main(a.runs, a.rounds))
