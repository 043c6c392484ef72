"""Region failover on loopback: runs survive losing their NATS (and their Redis primary).

Region A is a nats-server, a Redis primary and a worker; region B a nats-server of its own and
a Redis replica of A's primary. Runs are in flight in A (each paused after its third step,
some still queued behind the worker's concurrency). A dies by SIGKILL (NATS, Redis, worker);
B's Redis is promoted (``REPLICAOF NO ONE``), B's worker and supervisor start against B's
NATS: every run must continue from its last replicated step and complete, within seconds.
The focused test keeps one Redis and replaces only the NATS server.

Step bodies count their executions in the suite's own Redis (``COUNTER_REDIS_URL``), which
outlives both regions, so a re-executed step shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from stalwart import Client, Settings, Supervisor
from stalwart.checkpoints import CheckpointStore, Started, StepDone, encode_value
from stalwart.checkpoints._runs import LeasePosition
from stalwart.testing import EmbeddedServers, NatsServer, StalwartProcess, worker_process
from tests.conftest import ROOT, Servers
from tests.helpers import eventually, exec_key, open_gate

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_STEPS = [f"step:s{i}" for i in range(1, 11)]
_RESULT = sum(i * 10 for i in range(1, 11))
_RESUME_BOUND = 15.0
"""Seconds from region B's start until every run completed (measured: a few seconds)."""


def _settings(nats_url: str, redis_url: str, namespace: str) -> Settings:
    return Settings(
        nats_url=nats_url,
        redis_url=redis_url,
        namespace=namespace,
        lease_ttl=2,
        reconcile_interval=0.5,
        requeue_after=1.0,
    )


@contextlib.asynccontextmanager
async def _region(
    settings: Settings, counters_url: str, name: str, *, concurrency: int = 16
) -> AsyncIterator[tuple[Client, StalwartProcess]]:
    """A worker serving ``tests.apps:app`` and a client, both on ``settings``' servers."""
    assert settings.nats_url and settings.redis_url
    worker = worker_process(
        "tests.apps:app",
        nats_url=settings.nats_url,
        redis_url=settings.redis_url,
        worker_id=f"{name}-{uuid.uuid4().hex[:4]}",
        lease_ttl=settings.lease_ttl,
        concurrency=concurrency,
        namespace=settings.namespace,
        extra_env={
            "COUNTER_REDIS_URL": counters_url,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "STALWART_LOG_FORMAT": "json",
        },
    )
    client = await Client.connect(settings=settings)
    worker.start()
    try:
        await eventually(
            lambda: _registered(client, worker),
            timeout=30,
            message=lambda: f"worker {name} did not start:\n{worker.log_text()[-3000:]}",
        )
        yield client, worker
    finally:
        worker.close()
        if not client.broker.nc.is_closed:  # a test closes it before killing the region
            await asyncio.wait_for(client.close(), 10)


async def _advance_leases(client: Client, n: int = 100) -> None:
    """Move the region's lease bucket ``n`` revisions on: its epochs then start above every
    revision a fresh bucket has (the case a claim ordered by revision alone got wrong)."""
    names = client.broker.names
    for i in range(n):
        await client.broker.js.publish(names.lease_subject(f"warm{i}"), b"x")


async def _registered(client: Client, worker: StalwartProcess) -> bool:
    return worker.name in {w.worker_id for w in await client.broker.workers()}


@contextlib.asynccontextmanager
async def _supervising(settings: Settings) -> AsyncIterator[Supervisor]:
    sup = Supervisor(settings)
    await sup.start()
    task = asyncio.create_task(sup.run())
    try:
        yield sup
    finally:
        sup.stop()
        await asyncio.wait({task}, timeout=30)


async def _status(store: CheckpointStore, run_id: str) -> str:
    record = await store.get_run(run_id)
    return record.status if record is not None else ""


async def _all(store: CheckpointStore, run_ids: list[str], *statuses: str) -> bool:
    return all([await _status(store, r) in statuses for r in run_ids])


async def _executions(counters: aioredis.Redis, run_id: str) -> dict[str, int]:
    values = await counters.mget([exec_key(run_id, s) for s in _STEPS])
    return {s: int(v or 0) for s, v in zip(_STEPS, values, strict=True)}


async def _recorded_steps(store: CheckpointStore, run_id: str) -> set[str]:
    return {
        je.entry.key for je in await store.read_journal(run_id) if isinstance(je.entry, StepDone)
    }


def _paused_after_three(
    counters: aioredis.Redis, run_ids: list[str]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all([(await _executions(counters, r))["step:s3"] >= 1 for r in run_ids])

    return check


async def _replicated(primary: aioredis.Redis, replica: aioredis.Redis) -> bool:
    sent = (await primary.info("replication"))["master_repl_offset"]
    got = await replica.info("replication")
    return bool(got.get("master_link_status") == "up" and got["slave_repl_offset"] >= sent)


async def _finish_in(
    store: CheckpointStore, counters: aioredis.Redis, run_ids: list[str], started: float
) -> float:
    """Open every run's gate and wait for all to complete; seconds from ``started``."""
    for r in run_ids:
        await open_gate(counters, r, "after")
    await eventually(
        lambda: _all(store, run_ids, "completed"),
        timeout=_RESUME_BOUND,
        interval=0.05,
        message=lambda: f"not all runs completed within {_RESUME_BOUND}s",
    )
    return time.monotonic() - started


async def test_new_nats_same_redis_replaces_running_runs_at_once(
    servers: Servers, namespace: str, counters: aioredis.Redis
) -> None:
    old, new = NatsServer(), NatsServer()
    await old._start_async()
    try:
        a = _settings(old.url, servers.redis_url, namespace)
        async with _region(a, servers.redis_url, "a") as (client, worker):
            await _advance_leases(client)
            run_ids = [f"nn-{uuid.uuid4().hex[:8]}" for _ in range(4)]
            for r in run_ids:
                await client.submit("ten", {"pause_after": 3}, run_id=r)
            await eventually(
                _paused_after_three(counters, run_ids),
                timeout=30,
                message=lambda: worker.log_text()[-3000:],
            )
            await client.close()  # the submitters of the region go too
            worker.kill()
            old.kill()
        store = await CheckpointStore.connect(servers.redis_url, namespace)
        try:
            before = {r: await store.get_run(r) for r in run_ids}
            assert all(rec is not None and rec.status == "running" for rec in before.values())
            # Lease revisions above anything the new bucket's revisions start from.
            old_positions = [LeasePosition.of_epoch(rec.epoch) for rec in before.values() if rec]
            assert min(p.revision for p in old_positions) > 100
            await new._start_async()  # a fresh server: a new, empty lease bucket
            started = time.monotonic()
            b = _settings(new.url, servers.redis_url, namespace)
            async with _supervising(b), _region(b, servers.redis_url, "b"):
                ready = time.monotonic() - started  # the worker process is up
                took = await _finish_in(store, counters, run_ids, started)
            for r in run_ids:
                record = await store.get_run(r)
                old_epoch = before[r].epoch  # type: ignore[union-attr]
                assert record is not None and record.decode_result() == _RESULT
                assert record.epoch > old_epoch
                # Claimed from the new bucket: a newer generation, a lower revision.
                now, then = LeasePosition.of_epoch(record.epoch), LeasePosition.of_epoch(old_epoch)
                assert now.generation > then.generation and now.revision < then.revision
                runs = await _executions(counters, r)
                assert runs == dict.fromkeys(_STEPS, 1), (r, runs)
            print(
                f"\nnew NATS, same Redis: {len(run_ids)} runs completed {took:.2f}s after B started "
                f"({took - ready:.2f}s after its worker was up)"
            )
        finally:
            keys = [k async for k in store.redis.scan_iter(match=f"{namespace}:*")]
            if keys:
                await store.redis.delete(*keys)
            await store.close()
    finally:
        await asyncio.to_thread(old.stop)
        await asyncio.to_thread(new.stop)


async def test_region_failover_continues_every_run(
    servers: Servers, namespace: str, counters: aioredis.Redis
) -> None:
    async with EmbeddedServers() as region_a, EmbeddedServers() as region_b:
        primary = aioredis.Redis.from_url(region_a.redis_url)
        replica = aioredis.Redis.from_url(region_b.redis_url)
        try:
            await replica.execute_command("REPLICAOF", "127.0.0.1", str(region_a.redis.port))
            await eventually(lambda: _replicated(primary, replica), timeout=20)

            a = _settings(region_a.nats_url, region_a.redis_url, namespace)
            # Concurrency 4 for 6 runs: two stay queued in A's runs stream, never started.
            async with _region(a, servers.redis_url, "a", concurrency=4) as (client, worker):
                await _advance_leases(client)
                run_ids = [f"rg-{uuid.uuid4().hex[:8]}" for _ in range(6)]
                for r in run_ids:
                    await client.submit("ten", {"pause_after": 3}, run_id=r)
                store_a = await CheckpointStore.connect(region_a.redis_url, namespace)
                try:
                    await eventually(lambda: _running(store_a, run_ids, 4), timeout=30)
                    placed = [r for r in run_ids if await _status(store_a, r) == "running"]
                finally:
                    await store_a.close()
                await eventually(_paused_after_three(counters, placed), timeout=30)
                await eventually(lambda: _replicated(primary, replica), timeout=20)
                # Region A is lost at once: worker, NATS and Redis primary, all SIGKILLed.
                await client.close()
                worker.kill()
                region_a.nats.kill()
                region_a.redis.kill()

            await replica.execute_command("REPLICAOF", "NO", "ONE")  # promote B's Redis
            store = await CheckpointStore.connect(region_b.redis_url, namespace)
            try:
                recorded = {r: await _recorded_steps(store, r) for r in run_ids}
                statuses = {r: await _status(store, r) for r in run_ids}
                assert sorted(statuses.values()) == ["accepted"] * 2 + ["running"] * 4, statuses
                started = time.monotonic()
                b = _settings(region_b.nats_url, region_b.redis_url, namespace)
                async with _supervising(b) as sup, _region(b, servers.redis_url, "b"):
                    ready = time.monotonic() - started
                    took = await _finish_in(store, counters, run_ids, started)
                    assert sup.requeued == 2  # the queued requests died with A's NATS
                for r in run_ids:
                    record = await store.get_run(r)
                    assert record is not None and record.decode_result() == _RESULT
                    runs = await _executions(counters, r)
                    # No step recorded in B's Redis ran again; every other one ran once.
                    assert all(runs[s] == 1 for s in recorded[r]), (r, recorded[r], runs)
                    assert all(n >= 1 for n in runs.values()), (r, runs)
                print(
                    f"\nregion failover: {len(run_ids)} runs (4 running, 2 queued) completed "
                    f"{took:.2f}s after region B started ({took - ready:.2f}s after its worker was up)"
                )
            finally:
                await store.close()
        finally:
            await primary.aclose()
            await replica.aclose()


async def _running(store: CheckpointStore, run_ids: list[str], n: int) -> bool:
    return [await _status(store, r) for r in run_ids].count("running") == n


pytestmark = pytest.mark.timeout(120)


async def test_lost_requests_are_published_again_and_duplicates_dropped(
    servers: Servers, namespace: str, counters: aioredis.Redis
) -> None:
    settings = _settings(servers.nats_url, servers.redis_url, namespace)
    async with (
        _supervising(settings) as sup,
        _region(settings, servers.redis_url, "w") as (client, worker),
    ):
        # A run stored but never published (its submitter died in between): nothing queued.
        orphan = f"or-{uuid.uuid4().hex[:8]}"
        assert await client.store.create_run(orphan, "ten", encode_value({})) is None
        # A placed run that gets a second request (a requeue racing its placement).
        placed = f"pl-{uuid.uuid4().hex[:8]}"
        await client.submit("ten", {"pause_after": 3}, run_id=placed)
        await eventually(_paused_after_three(counters, [placed]), timeout=30)
        assert await client.broker.request_resume(placed, "ten", 0, "resume")
        await open_gate(counters, placed, "after")
        for run_id in (orphan, placed):
            assert await client.handle(run_id).result(timeout=30) == _RESULT
        assert sup.requeued == 1  # the orphan only: the placed run had its request queued
        for run_id in (orphan, placed):
            journal = await client.store.read_journal(run_id)
            starts = [je.entry.worker for je in journal if isinstance(je.entry, Started)]
            assert starts == [worker.name], journal
            assert await _executions(counters, run_id) == dict.fromkeys(_STEPS, 1)

        async def queue_empty() -> bool:
            info = await client.broker.js.stream_info(
                client.broker.names.runs_stream, subjects_filter=client.broker.names.runs_wildcard
            )
            return not info.state.subjects

        await eventually(queue_empty, timeout=10, message="the duplicate request stayed queued")
