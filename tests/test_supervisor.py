"""Supervisor hardening: leader election, dead letters, stuck runs, server restarts."""

from __future__ import annotations

import asyncio
import os
import time

import msgspec
import pytest
import redis.asyncio as aioredis

from stalwart import Client, RunFailed, Settings, Supervisor
from stalwart.actors import App
from stalwart.broker import LeaseManager
from stalwart.checkpoints import StepDone
from stalwart.errors import CorruptRecordError
from stalwart.testing import (
    EmbeddedServers,
    NatsServer,
    RedisServer,
    StalwartProcess,
    worker_process,
)
from tests.conftest import ROOT, WorkerFactory
from tests.helpers import eventually, execs, gate_key, journaled, open_gate, rid

pytestmark = pytest.mark.slow


def supervisor_process(settings: Settings, name: str) -> StalwartProcess:
    assert settings.nats_url and settings.redis_url
    return StalwartProcess(
        [
            "supervisor",
            "--nats-url",
            settings.nats_url,
            "--redis-url",
            settings.redis_url,
            "--namespace",
            settings.namespace,
            "--lease-ttl",
            str(settings.lease_ttl),
        ],
        env={
            "STALWART_RECONCILE_INTERVAL": "0.5",
            "STALWART_LOG_FORMAT": "json",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        },
        name=name,
    )


async def leader(client: Client) -> str | None:
    election = LeaseManager(
        client.broker.js, client.broker.names, 2, "observer", prefix="supervisor."
    )
    return (await election.state("leader")).holder


async def test_standby_supervisor_takes_over_and_resumes_an_orphan(
    client: Client, settings: Settings, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    sup1 = supervisor_process(settings, "sup1").start()
    await eventually(lambda: leader(client), timeout=20, message=lambda: sup1.log_text()[-2000:])
    sup2 = supervisor_process(settings, "sup2").start()
    try:
        first = await leader(client)
        a = await workers("a")
        run_id = rid()
        handle = await client.submit("ten", {"pause_after": 3}, run_id=run_id)
        await eventually(lambda: journaled(client, run_id, "step:s3"))
        # Kill the leading supervisor and the worker together.
        a.kill()
        leading = sup1 if first and f"-{sup1.pid}-" in first else sup2
        assert first and f"-{leading.pid}-" in first
        leading.kill()
        await open_gate(counters, run_id, "after")
        await workers("b")
        assert await handle.result(timeout=30) == 550
        now_leading = await leader(client)
        assert now_leading is not None and now_leading != first
        for i in range(1, 4):
            assert await execs(counters, run_id, f"step:s{i}") == 1
    finally:
        sup1.kill()
        sup2.kill()


async def test_poison_request_is_dead_lettered_with_its_reason(servers, namespace: str) -> None:
    settings = Settings(
        nats_url=servers.nats_url,
        redis_url=servers.redis_url,
        namespace=namespace,
        lease_ttl=1,
        max_deliver=2,
        reconcile_interval=0.5,
    )
    app = App("poison")

    @app.agent("victim")
    async def victim(ctx, _: None) -> str:
        return "never"

    from stalwart import Worker

    client = await Client.connect(settings=settings)
    worker = Worker(app, settings)
    sup = Supervisor(settings)
    await sup.start()
    sup_task = asyncio.create_task(sup.run())
    await worker.start()
    try:
        run_id = rid()
        # Someone else holds the run's lease forever: every delivery is nak'ed until
        # JetStream gives up after max_deliver.
        squatter = LeaseManager(client.broker.js, client.broker.names, 1, "squatter")
        lease = await squatter.acquire(run_id)
        assert lease is not None

        async def hold() -> None:
            while True:
                await asyncio.sleep(0.3)
                await squatter.renew([lease])

        holder = asyncio.create_task(hold())
        handle = await client.submit("victim", None, run_id=run_id)
        with pytest.raises(RunFailed) as info:
            await handle.result(timeout=30)
        holder.cancel()
        assert info.value.error_type == "DeadLettered"
        assert "max_deliver" in info.value.message
        si = await client.broker.js.stream_info(client.broker.names.runs_stream)
        assert si.state.messages == 0  # not stuck in the work queue
        assert sup.dead_lettered == 1
    finally:
        worker.stop()
        await worker._shutdown()
        sup.stop()
        await sup_task
        await client.close()


async def test_stuck_run_is_reported_and_replaced(
    client: Client, settings: Settings, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    stuck_settings = msgspec.structs.replace(settings, stuck_after=1.5, stuck_action="replace")
    sup = Supervisor(stuck_settings)
    await sup.start()
    task = asyncio.create_task(sup.run())
    try:
        await workers("a")
        run_id = rid()
        handle = await client.submit("sleepy", 1, run_id=run_id)
        stuck = await eventually(lambda: _event_of(handle, "run.stuck"), timeout=30)
        assert stuck.data["action"] == "replace"
        first_epoch = stuck.epoch

        async def replaced() -> bool:
            return (await handle.status()).epoch > first_epoch

        await eventually(replaced, timeout=20)  # the revoked owner stopped; a new epoch owns it
        await counters.lpush(gate_key(run_id, "in"), "1", "2")
        assert await handle.result(timeout=30) == 1
        epochs = {je.entry.epoch for je in await client.store.read_journal(run_id)}
        assert len(epochs) == 2  # re-placed once
    finally:
        sup.stop()
        await task


async def _event_of(handle, type_: str):
    # Polls the stored events rather than following live: a test should not hang on a
    # subscription, it should fail with a message.
    async for ev in handle.events(follow=False):
        if ev.type == type_:
            return ev
    return None


@pytest.mark.blocks_loop  # kills and restarts the servers with their blocking API, on purpose
async def test_runs_survive_nats_and_redis_restarts(namespace: str, tmp_path) -> None:
    nats = NatsServer(store_dir=tmp_path / "js")
    redis = RedisServer(data_dir=tmp_path / "redis", appendonly=True, appendfsync="always")
    async with EmbeddedServers(nats=nats, redis=redis) as servers:
        settings = Settings(
            nats_url=servers.nats_url,
            redis_url=servers.redis_url,
            namespace=namespace,
            lease_ttl=2,
            reconcile_interval=0.5,
        )
        env = {
            "COUNTER_REDIS_URL": servers.redis_url,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "STALWART_LOG_FORMAT": "json",
        }
        procs = [
            worker_process(
                "tests.apps:app",
                nats_url=servers.nats_url,
                redis_url=servers.redis_url,
                worker_id=f"r{i}",
                namespace=namespace,
                extra_env=env,
            ).start()
            for i in range(2)
        ]
        sup = Supervisor(settings)
        await sup.start()
        sup_task = asyncio.create_task(sup.run())
        client = await Client.connect(settings=settings)
        counters = aioredis.Redis.from_url(servers.redis_url)
        try:
            await eventually(lambda: _workers_up(client, 2), timeout=30)
            handles = [await client.submit("steady", 12) for _ in range(20)]
            await eventually(lambda: _steps_done(client, handles, 40), timeout=30)

            disrupted_at = time.time()
            nats.kill()
            nats.restart()
            await eventually(lambda: _steps_done(client, handles, 80), timeout=60)
            redis.kill()
            redis.restart()

            results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
            assert results == [12] * 20
            for h in handles:
                for je in await client.store.read_journal(h.run_id):
                    e = je.entry
                    if isinstance(e, StepDone) and e.at + e.duration < disrupted_at:
                        assert await execs(counters, h.run_id, e.key) == 1, (
                            h.run_id,
                            e.key,
                        )
        finally:
            for p in procs:
                p.kill()
            sup.stop()
            await sup_task
            await client.close()
            await counters.aclose()


async def _workers_up(client: Client, n: int) -> bool:
    return len(await client.broker.workers()) >= n


async def _steps_done(client: Client, handles, n: int) -> bool:
    total = 0
    for h in handles:
        total += sum(
            isinstance(je.entry, StepDone) for je in await client.store.read_journal(h.run_id)
        )
    return total >= n


async def test_stop_returns_even_when_a_supervising_pass_never_ends(settings: Settings) -> None:
    """A pass stuck on a silent server must not keep a stopping supervisor alive."""
    sup = Supervisor(settings)
    await sup.start()
    entered = asyncio.Event()

    async def stuck_pass() -> int:
        entered.set()
        await asyncio.Event().wait()  # never set: a reply that never comes
        return 0

    sup.reconcile = stuck_pass  # type: ignore[method-assign]
    task = asyncio.create_task(sup.run())
    await asyncio.wait_for(entered.wait(), 20)  # elected and inside the pass
    sup.stop()
    done, _ = await asyncio.wait({task}, timeout=30)
    assert done, "the supervisor did not stop while a pass hung"
    task.result()


async def test_a_corrupt_run_record_does_not_stop_the_others_being_supervised(
    settings: Settings, client: Client
) -> None:
    """A record no Stalwart script wrote is reported; the rest of the pass and listing go on."""
    store = client.store
    corrupt, orphan = rid(), rid()
    # Sorted before the orphan in the pass, so without isolation the pass stops at it.
    corrupt = "0" + corrupt[1:]
    orphan = "z" + orphan[1:]
    await store.redis.hset(
        store.record_key(corrupt),
        mapping={"run_id": corrupt, "agent": "fast", "status": "running", "epoch": "abc"},
    )
    await store.redis.sadd(store.active_key, corrupt)
    await store.redis.zadd(store.runs_key, {corrupt: time.time()})
    # An orphan: running at epoch 7, nobody holds its lease.
    await store.create_run(orphan, "fast", msgspec.Raw(msgspec.msgpack.encode(1)))
    await store.redis.hset(store.record_key(orphan), mapping={"status": "running", "epoch": "7"})
    await store.redis.sadd(store.active_key, orphan)

    sup = Supervisor(settings)
    await sup.start()
    try:
        assert await sup.reconcile() == 1  # the orphan was re-placed despite the corrupt run
        assert sup.replaced == 1
    finally:
        await sup.close()
    listed = {r.run_id for r in await client.runs(limit=10)}
    assert orphan in listed and corrupt not in listed
    with pytest.raises(CorruptRecordError, match="epoch"):
        await client.handle(corrupt).status()


async def test_a_supervisor_that_lost_leadership_leads_again_when_a_task_ignores_a_cancel(
    settings: Settings, client: Client
) -> None:
    # A leader that loses its lease stops its leader tasks and stands by; it must get back to
    # electing even if a task lost the cancellation (asyncio.wait_for on Python 3.11 drops
    # one that arrives as its result lands, and nats-py's requests use it): before, the
    # supervisor waited for that task forever and never fired a timer again.
    sup = Supervisor(settings)
    await sup.start()
    watches = 0
    swallowed = asyncio.Event()

    async def watch() -> None:
        nonlocal watches
        watches += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # lost, as in the race above
        await asyncio.Event().wait()

    sup._watch = watch  # type: ignore[method-assign]
    task = asyncio.create_task(sup.run())
    try:
        await eventually(lambda: asyncio.sleep(0, sup.is_leader and watches == 1))
        assert sup._lease is not None
        revoker = LeaseManager(
            client.broker.js,
            client.broker.names,
            settings.lease_ttl,
            "revoker",
            prefix="supervisor.",
        )
        assert await revoker.release(sup._lease)  # the leader's lease is gone: it must notice
        await eventually(lambda: asyncio.sleep(0, watches == 2), timeout=15)
        assert swallowed.is_set() and sup.is_leader
    finally:
        sup.stop()
        done, _ = await asyncio.wait({task}, timeout=30)
    assert done  # the second watch swallows its cancel too: the stop still ends
