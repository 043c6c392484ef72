"""CPU and time of one lease renewal pass: prebuilt commands against one publish per lease.

A worker renews every lease it holds each third of a TTL. This acquires ``N`` leases on
one embedded ``nats-server`` and renews them all in alternating passes through the two
write paths ``LeaseManager`` has: ``pipelined`` (``broker/_cas.py``: the pass's ``HPUB``
commands handed to the connection as one write, acks on one reply subscription; what a
worker uses) and ``publish`` (one ``JetStreamContext.publish`` per lease under
``asyncio.gather``; what a manager built without the connection uses, and what every
worker used before). It prints the process CPU per lease and the wall time per pass.

Run: ``PYTHONPATH=src:. python -m bench.lease_renewal [--leases 4096 --rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from stalwart.broker import Broker, Lease, LeaseManager
from stalwart.config import Settings
from stalwart.testing import EmbeddedServers


async def _acquire(mgr: LeaseManager, n: int) -> list[Lease]:
    leases: list[Lease] = []
    while len(leases) < n:
        got = await asyncio.gather(
            *(mgr.acquire(uuid.uuid4().hex) for _ in range(min(256, n - len(leases))))
        )
        leases += [lease for lease in got if lease is not None]
    return leases


async def main(n: int, rounds: int) -> None:
    async with EmbeddedServers() as srv:
        settings = Settings(
            nats_url=srv.nats_url, redis_url=srv.redis_url, namespace="leasebench", lease_ttl=5
        )
        broker = await Broker.connect(settings, owner="w1")
        try:
            paths = {
                "pipelined": broker.leases,
                "publish": LeaseManager(broker.js, broker.names, 5, "w1"),
            }
            leases = await _acquire(broker.leases, n)
            cpu: dict[str, list[float]] = {k: [] for k in paths}
            wall: dict[str, list[float]] = {k: [] for k in paths}
            for _ in range(rounds):
                for name, mgr in paths.items():
                    c0, t0 = time.process_time(), time.perf_counter()
                    lost = await mgr.renew(leases)
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append((time.process_time() - c0) / n * 1e6)
                    if lost:
                        raise AssertionError(f"{name}: {len(lost)} of {n} leases lost")
            for name in paths:
                print(
                    f"{name:>9}: {statistics.median(cpu[name]):6.1f} us CPU per lease, "
                    f"{statistics.median(wall[name]) * 1e3:6.0f} ms per pass of {n} "
                    f"(medians of {rounds})"
                )
            ratio = statistics.median(cpu["pipelined"]) / statistics.median(cpu["publish"])
            print(f"pipelined / publish, CPU per lease: {ratio:.2f}x")
        finally:
            await broker.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leases", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(main(args.leases, args.rounds))
