"""11. Streaming latency (issue #17): a model's chunk to the client, with and without Stalwart.

The same simulated model (``bench.stream_agents.fake_model``: ``chunks`` chunks ``interval``
s apart, each stamped with ``time.time()`` when yielded) is consumed two ways, interleaved
run by run on one machine:

- **direct**: the framework-free baseline, an ``async for`` over the generator in the same
  process;
- **Stalwart**: a worker process runs it inside a step and publishes each chunk
  (``ctx.emit("model.delta", ...)``); the client reads ``handle.stream()`` (resets applied)
  and stamps each chunk as it arrives.

Per run: the first chunk's latency (yielded to received), the later chunks' latencies, and
the gaps between consecutive received chunks (the model's own gap is ``interval``).

    python -m bench.streaming [--runs 50] [--chunks 20] [--interval 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from typing import TYPE_CHECKING, Any

from bench._util import bench_env, log, summary
from bench.stream_agents import fake_model
from stalwart import Chunk, Client, Settings
from stalwart.testing import NatsServer, RedisServer, worker_process

if TYPE_CHECKING:
    from bench._context import Ctx

THINK = 0.3
"""Seconds the model 'thinks' before its first chunk: the client attaches meanwhile."""


def _split(arrivals: list[tuple[float, float]], out: dict[str, list[float]], key: str) -> None:
    """(yielded, received) pairs of one run into first / later latencies and received gaps."""
    if not arrivals:
        return
    out[f"{key}_first"].append(arrivals[0][1] - arrivals[0][0])
    out[f"{key}_later"] += [r - y for y, r in arrivals[1:]]
    out[f"{key}_gap"] += [b[1] - a[1] for a, b in itertools.pairwise(arrivals)]


async def direct(chunks: int, interval: float) -> list[tuple[float, float]]:
    await asyncio.sleep(THINK)
    return [(at, time.time()) async for _, at in fake_model(chunks, interval)]


async def through_stalwart(
    client: Client, chunks: int, interval: float
) -> list[tuple[float, float]]:
    inp = {"chunks": chunks, "interval": interval, "think": THINK}
    handle = await client.submit("stream", inp, run_id=f"s-{uuid.uuid4().hex[:12]}")
    arrivals = []
    async for part in handle.stream():
        if isinstance(part, Chunk) and part.type == "model.delta":
            arrivals.append((float(part.data["t"]), time.time()))
    return arrivals


async def collect(runs: int, chunks: int, interval: float) -> dict[str, list[float]]:
    keys = [f"{k}_{m}" for k in ("direct", "stalwart") for m in ("first", "later", "gap")]
    out: dict[str, list[float]] = {k: [] for k in keys}
    with NatsServer() as nats, RedisServer() as redis:
        ns = "b" + uuid.uuid4().hex[:8]
        settings = Settings(nats_url=nats.url, redis_url=redis.url, namespace=ns, lease_ttl=2)
        proc = worker_process(
            "bench.stream_agents:app", nats_url=nats.url, redis_url=redis.url,
            worker_id="w1", namespace=ns, concurrency=16, extra_env=bench_env(),
        ).start()  # fmt: skip
        client = await Client.connect(settings=settings)
        try:
            for _ in range(600):  # 30 s for the worker to come up
                if "w1" in {w.worker_id for w in await client.broker.workers()}:
                    break
                await asyncio.sleep(0.05)
            await through_stalwart(client, 2, interval)  # warm-up: connections, consumers
            for i in range(runs):
                _split(await direct(chunks, interval), out, "direct")
                got = await through_stalwart(client, chunks, interval)
                if len(got) != chunks:
                    raise RuntimeError(f"run {i}: {len(got)} of {chunks} chunks arrived")
                _split(got, out, "stalwart")
                if (i + 1) % 10 == 0:
                    log(f"streaming: {i + 1}/{runs} runs")
        finally:
            await client.close()
            proc.kill()
    return out


async def measure(ctx: Ctx) -> dict[str, Any]:
    """Section 11 of the suite (``python -m bench --only streaming``)."""
    runs, chunks, interval = ctx.pick(3, 50), ctx.pick(5, 20), 0.01
    raw = await collect(runs, chunks, interval)
    return {k: summary(v) for k, v in raw.items()} | {
        "runs": runs,
        "chunks": chunks,
        "interval": interval,
        "think": THINK,
    }


def _line(name: str, values: list[float]) -> str:
    s = summary(values)
    return f"{name}: p50 {s['median'] * 1e3:.2f} ms, p99 {s['p99'] * 1e3:.2f} ms (n={s['n']})"


async def main(runs: int, chunks: int, interval: float) -> None:
    raw = await collect(runs, chunks, interval)
    for key, values in raw.items():
        print(_line(key, values))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.01)
    a = ap.parse_args()
    asyncio.run(main(a.runs, a.chunks, a.interval))
