"""Time from submit to start while one worker is partly busy (issue #15's stranded requests).

``python -m bench.delivery_latency [--bursts 12] [--seed 1]``

Its own servers; worker A (concurrency 3, one slot held by a run) and worker B
(concurrency 8, idle), in-process. Bursts of 3 submissions at random moments (0.5-2.5 s
apart, so they land at every phase of a pull cycle); each burst's runs are released before
the next. Prints every burst's submit-to-start times and the worst. Only public API, so it
measures older sources too (``PYTHONPATH=<old checkout>/src``). Bounded: about 2 s a burst.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import time
from typing import TYPE_CHECKING

import msgspec
import structlog

from stalwart import App, RunContext, Settings, Worker
from stalwart.client import Client
from stalwart.testing import EmbeddedServers

if TYPE_CHECKING:
    from collections.abc import Callable

app = App("latency")
started: dict[str, float] = {}
gates: dict[str, asyncio.Event] = {}


@app.agent("hold")
async def hold(ctx: RunContext, _: int) -> int:
    started[ctx.run_id] = time.monotonic()
    await gates.setdefault(ctx.run_id, asyncio.Event()).wait()
    return 1


async def _wait(pred: Callable[[], bool], limit: float) -> None:
    for _ in range(int(limit / 0.005)):
        if pred():
            return
        await asyncio.sleep(0.005)


async def measure(bursts: int, seed: int) -> list[list[float]]:
    """Submit-to-start seconds of every run of every burst."""
    rnd = random.Random(seed)
    async with EmbeddedServers() as emb:
        s = Settings(nats_url=emb.nats_url, redis_url=emb.redis_url, namespace="lat")
        client = await Client.connect(settings=s)
        a = Worker(app, msgspec.structs.replace(s, concurrency=3, worker_id="A"))
        b = Worker(app, msgspec.structs.replace(s, concurrency=8, worker_id="B"))
        await a.start()
        busy = await client.submit("hold", -1)
        await _wait(lambda: busy.run_id in started, 10)
        await b.start()
        out: list[list[float]] = []
        try:
            for _ in range(bursts):
                await asyncio.sleep(rnd.uniform(0.5, 2.5))
                t0 = time.monotonic()
                hs = [await client.submit("hold", i) for i in range(3)]
                await _wait(lambda hs=hs: all(h.run_id in started for h in hs), 15)
                out.append([round(started.get(h.run_id, t0 + 99) - t0, 3) for h in hs])
                for h in hs:
                    gates.setdefault(h.run_id, asyncio.Event()).set()
                await _wait(lambda: len(a.hosted) + len(b.hosted) == 1, 15)
        finally:
            for ev in gates.values():
                ev.set()
            gates.setdefault(busy.run_id, asyncio.Event()).set()
            a.stop()
            b.stop()
            await asyncio.gather(a._shutdown(), b._shutdown())
            await client.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bursts", type=int, default=12)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    out = asyncio.run(measure(a.bursts, a.seed))
    flat = sorted(x for burst in out for x in burst)
    print(json.dumps({"bursts": out, "worst": flat[-1], "p50": flat[len(flat) // 2]}))


if __name__ == "__main__":
    main()
