"""How long ``stalwart.operations.list_runs`` (``stalwart runs``, the console's run list) takes
over a large runs index.

One Redis and one NATS on loopback; ``--runs`` records created directly in the store (one in
1000 of agent ``rare``, the rest ``common``; all ``accepted``, so every listed run also costs a
lease look-up). Then the median of 7 calls of: the newest 50; a filter matching 1 in 1000
(``max_scan`` 2000 caps the work: a short page and a cursor); a filter matching nothing; a
run id search; and the time to walk every run in pages of 500.

Run: ``PYTHONPATH=src python -m bench.list_runs [--runs 50000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import msgspec

from stalwart import Client, Settings
from stalwart.operations import RunQuery, list_runs
from stalwart.servers import NatsServer, RedisServer


async def _bench(n: int) -> None:
    with NatsServer() as nats, RedisServer() as redis:
        settings = Settings(nats_url=nats.url, redis_url=redis.url, namespace="bench")
        client = await Client.connect(settings=settings)
        try:
            raw = msgspec.Raw(msgspec.msgpack.encode(1))
            started = time.perf_counter()
            for first in range(0, n, 500):
                await asyncio.gather(
                    *(
                        client.store.create_run(
                            f"r{i:07d}", "rare" if i % 1000 == 0 else "common", raw
                        )
                        for i in range(first, min(first + 500, n))
                    )
                )
            print(f"created {n} runs in {time.perf_counter() - started:.1f} s")
            cases = {
                "newest 50, no filter": RunQuery(limit=50),
                "agent matching 1 in 1000": RunQuery(agent="rare", limit=50),
                "agent matching nothing": RunQuery(agent="none", limit=50),
                "run id search": RunQuery(search=f"r{n - 10:07d}"[:-1], limit=50),
            }
            for name, query in cases.items():
                times = []
                for _ in range(7):
                    t = time.perf_counter()
                    page = await list_runs(client, query)
                    times.append(time.perf_counter() - t)
                more = "a cursor" if page.next_cursor else "no cursor"
                print(
                    f"{name}: median {statistics.median(times) * 1000:.1f} ms, "
                    f"{len(page.runs)} runs, {page.scanned} scanned, {more}"
                )
            t = time.perf_counter()
            total, pages, cursor = 0, 0, None
            while True:
                page = await list_runs(client, RunQuery(limit=500, cursor=cursor))
                total, pages, cursor = total + len(page.runs), pages + 1, page.next_cursor
                if cursor is None:
                    break
            print(f"every run ({total}) in {pages} pages of 500: {time.perf_counter() - t:.1f} s")
        finally:
            await client.close()


def main() -> None:
    """``python -m bench.list_runs``."""
    parser = argparse.ArgumentParser(prog="python -m bench.list_runs")
    parser.add_argument("--runs", type=int, default=50_000)
    args = parser.parse_args()
    asyncio.run(_bench(args.runs))


if __name__ == "__main__":
    main()
