"""Fast failover: a dead worker's runs move within moments, not after its leases expire.

Everything here runs at the default lease TTL (5 s), where waiting for the leases would take
3.3-5 s: the bounds below (1.5 s) can only be met by the supervisor's liveness probes
(``supervisor/_liveness.py``). The benchmark (``bench/failover.py``) gives the real figures.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec
import pytest
import redis.asyncio as aioredis

from stalwart import Client, Settings, Supervisor, Worker
from stalwart.broker import LeaseManager, Names
from stalwart.broker._names import worker_token
from stalwart.checkpoints import StepDone
from stalwart.errors import ConfigurationError
from stalwart.testing import EmbeddedServers, NatsServer, worker_process
from tests.apps import app as test_app
from tests.conftest import ROOT, Servers, WorkerFactory
from tests.helpers import COUNTER_ENV, eventually, exec_key, journal, rid
from tests.test_crash import check_single_owner

if TYPE_CHECKING:
    from nats.aio.msg import Msg

pytestmark = pytest.mark.slow

STEPS = 48
"""Steps of each ``steady`` run (150 ms each, 7 s): long enough to start another worker
process and then kill the first one in the middle, even on a loaded machine."""

MOVE_BOUND = 1.5
"""Seconds from the kill to a step completed on the other worker: generous for a loaded CI
machine (the benchmark's p50 is a fraction of it), far below the 3.3 s a lease TTL takes."""


@pytest.fixture
def settings(servers: Servers, namespace: str) -> Settings:
    # The default lease TTL and liveness interval: what a deployment gets.
    return Settings(
        nats_url=servers.nats_url,
        redis_url=servers.redis_url,
        namespace=namespace,
        reconcile_interval=0.5,
        drain_timeout=10.0,
    )


async def _steps_by(client: Client, run_id: str, worker: str) -> list[str]:
    return [
        je.entry.key
        for je in await journal(client, run_id)
        if isinstance(je.entry, StepDone) and je.entry.worker == worker
    ]


async def _check_executions(
    counters: aioredis.Redis, client: Client, run_id: str, steps: int = STEPS
) -> int:
    """Every step journaled once, in order; a body ran twice only if it was in flight.

    Returns how many bodies ran twice (at most one per failover: the step in flight).
    """
    entries = await journal(client, run_id)
    check_single_owner(entries)
    keys = [je.entry.key for je in entries if isinstance(je.entry, StepDone)]
    assert keys == ["step:p"] + [f"step:p#{i}" for i in range(2, steps + 1)], run_id
    runs = [int(await counters.get(exec_key(run_id, k)) or 0) for k in keys]
    assert all(1 <= n <= 2 for n in runs), (run_id, runs)
    return sum(n == 2 for n in runs)


async def test_sigkilled_worker_runs_move_within_moments(
    settings: Settings,
    client: Client,
    workers: WorkerFactory,
    supervisor: Supervisor,
    counters: aioredis.Redis,
) -> None:
    assert settings.lease_ttl == 5 and settings.liveness_interval > 0
    a = await workers("a")
    handles = [await client.submit("steady", STEPS, run_id=rid()) for _ in range(4)]
    await workers("b")  # standing by before the kill: it takes the runs over

    async def all_started_on_a() -> bool:
        return all([await _at_least_steps(client, h.run_id, "a", 2) for h in handles])

    await eventually(all_started_on_a, timeout=20)
    # The leader has seen "a" answer (else its silence would mean nothing).
    await eventually(
        lambda: _true(supervisor.liveness is not None and "a" in supervisor.liveness.seen),
        timeout=10,
    )
    assert all([(await h.status()).status == "running" for h in handles])
    a.kill()
    killed = time.monotonic()

    async def all_moved() -> bool:
        return all([await _at_least_steps(client, h.run_id, "b", 1) for h in handles])

    await eventually(all_moved, timeout=MOVE_BOUND + 5, interval=0.01)
    moved = time.monotonic() - killed
    assert moved < MOVE_BOUND, f"runs moved {moved:.2f}s after the kill"
    assert supervisor.liveness is not None and supervisor.liveness.dead == ["a"]

    results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
    assert results == [STEPS] * len(handles)
    twice = [await _check_executions(counters, client, h.run_id) for h in handles]
    assert all(n <= 1 for n in twice), twice  # only the step in flight at the kill


async def _true(value: bool) -> bool:
    return value


async def test_live_workers_are_not_declared_dead(
    servers: Servers,
    settings: Settings,
    client: Client,
    workers: WorkerFactory,
    counters: aioredis.Redis,
) -> None:
    # Probing 50 times a second (twice as often as the default) while two workers are busy.
    eager = msgspec.structs.replace(settings, liveness_interval=0.02)
    sup = Supervisor(eager)
    await sup.start()
    task = asyncio.create_task(sup.run())
    try:
        await workers("a")
        await workers("b")
        handles = [await client.submit("fast", i, run_id=rid()) for i in range(60)]
        handles += [await client.submit("steady", STEPS, run_id=rid()) for _ in range(6)]
        await eventually(
            lambda: _true(sup.liveness is not None and {"a", "b"} <= sup.liveness.seen),
            timeout=20,
        )
        results = await asyncio.gather(*(h.result(timeout=40) for h in handles))
        assert results[:60] == [3 * i + 3 for i in range(60)]
        assert sup.liveness is not None
        assert sup.liveness.dead == [] and sup.liveness.revoked == 0
        assert sup.replaced == 0
        for h in handles[60:]:
            assert await _check_executions(counters, client, h.run_id) == 0
    finally:
        sup.stop()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def in_process_worker(
    settings: Settings, servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Worker]:
    """A worker in this process serving ``tests.apps:app`` (so a test can reach into it)."""
    monkeypatch.setenv(COUNTER_ENV, servers.redis_url)
    worker = Worker(test_app, msgspec.structs.replace(settings, worker_id="x"))
    await worker.start()
    task = asyncio.create_task(worker.run())
    yield worker
    worker.stop()
    await asyncio.wait_for(task, 40)


async def test_worker_wrongly_declared_dead_is_fenced(
    client: Client,
    workers: WorkerFactory,
    supervisor: Supervisor,
    counters: aioredis.Redis,
    in_process_worker: Worker,
) -> None:
    x = in_process_worker
    steps = STEPS
    handle = await client.submit("steady", steps, run_id=rid())
    await eventually(lambda: _at_least_steps(client, handle.run_id, "x", 2), timeout=20)
    await workers("b")
    await eventually(
        lambda: _true(supervisor.liveness is not None and "x" in supervisor.liveness.seen),
        timeout=10,
    )
    old = x.hosted[handle.run_id].actor
    # "x" keeps running but stops answering: to the supervisor it looks exactly as dead as
    # a killed process (no subscriber on its subject).
    await x._alive_sub.unsubscribe()

    async def placed_again() -> bool:
        return any(
            isinstance(je.entry, StepDone) and je.entry.epoch > old.epoch
            for je in await journal(client, handle.run_id)
        )

    # Placed again at a newer epoch: on "b", or on "x" itself (it still fetches requests;
    # a new placement there is a new actor under a new lease, which is just as correct).
    await eventually(placed_again, timeout=MOVE_BOUND)
    assert supervisor.liveness is not None and supervisor.liveness.dead == ["x"]
    # The old actor stops (its next write is fenced, or its renewal fails the CAS)...
    await eventually(lambda: _true(all(h.actor is not old for h in x.hosted.values())), timeout=10)
    assert await handle.result(timeout=30) == steps
    # ...having journaled nothing after the takeover, and run at most the step in flight.
    entries = await journal(client, handle.run_id)
    assert len(check_single_owner(entries)) >= 2
    assert await _check_executions(counters, client, handle.run_id, steps) <= 1
    assert len(await _steps_by(client, handle.run_id, "x")) >= 2


async def _at_least_steps(client: Client, run_id: str, worker: str, n: int) -> bool:
    return len(await _steps_by(client, run_id, worker)) >= n


async def test_without_a_supervisor_at_the_kill_the_lease_ttl_still_recovers(
    settings: Settings,
    client: Client,
    workers: WorkerFactory,
    counters: aioredis.Redis,
) -> None:
    a = await workers("a")
    handle = await client.submit("steady", STEPS, run_id=rid())
    await eventually(lambda: _at_least_steps(client, handle.run_id, "a", 2), timeout=20)
    await workers("b")
    assert (await handle.status()).status == "running"
    a.kill()  # nobody probes now; a supervisor starting later never saw "a" answer
    sup = Supervisor(settings)
    await sup.start()
    task = asyncio.create_task(sup.run())
    try:
        await eventually(lambda: _at_least_steps(client, handle.run_id, "b", 1), timeout=15)
        assert await handle.result(timeout=30) == STEPS
        # Moved by the lease expiry, not by a probe: the probes never declare dead a worker
        # that did not answer them first.
        assert sup.liveness is not None and sup.liveness.dead == []
        assert sup.replaced == 1
        assert await _check_executions(counters, client, handle.run_id) <= 1
    finally:
        sup.stop()
        await asyncio.wait_for(task, 30)


def test_alive_subjects_are_one_token_per_worker_id() -> None:
    names = Names("acme")
    assert names.alive_subject("w1-abc_D") == "acme.alive.w1-abc_D"
    # Host names with dots, and anything else, become one token (hashed, deterministic).
    ids = ["host.example.com-12-ab", "a b", "x>", "*", "é", "host.example.com-12-ac"]
    tokens = [worker_token(w) for w in ids]
    assert all(t.startswith("~") and len(t.split(".")) == 1 for t in tokens)
    assert not any(c in t for t in tokens for c in " *>")
    assert len(set(tokens)) == len(ids)
    assert tokens == [worker_token(w) for w in ids]


@pytest.mark.parametrize("bad", [-1.0, 0.001, 61.0])
def test_liveness_interval_is_checked(bad: float) -> None:
    with pytest.raises(ConfigurationError, match="liveness_interval"):
        Settings(liveness_interval=bad)
    assert Settings(liveness_interval=0).liveness_interval == 0


@pytest.mark.blocks_loop  # restarts the server with its blocking API, on purpose
async def test_a_nats_restart_declares_no_worker_dead(namespace: str, tmp_path) -> None:
    # Everyone's subscriptions vanish with the server; the supervisor reconnects and must
    # wait for each worker to answer again rather than read their absence as death.
    nats = NatsServer(store_dir=tmp_path / "js")
    async with EmbeddedServers(nats=nats) as servers:
        settings = Settings(
            nats_url=servers.nats_url,
            redis_url=servers.redis_url,
            namespace=namespace,
            reconcile_interval=0.5,
        )
        env = {
            COUNTER_ENV: servers.redis_url,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        }
        procs = [
            worker_process(
                "tests.apps:app",
                nats_url=servers.nats_url,
                redis_url=servers.redis_url,
                worker_id=f"r{i}",
                lease_ttl=settings.lease_ttl,
                namespace=namespace,
                extra_env=env,
            ).start()
            for i in range(2)
        ]
        sup = Supervisor(settings)
        await sup.start()
        task = asyncio.create_task(sup.run())
        client = await Client.connect(settings=settings)
        try:
            both = {"r0", "r1"}

            async def registered() -> bool:
                return both <= {w.worker_id for w in await client.broker.workers()}

            await eventually(registered, timeout=30)
            handles = [await client.submit("steady", STEPS, run_id=rid()) for _ in range(6)]
            await eventually(
                lambda: _true(sup.liveness is not None and both <= sup.liveness.seen),
                timeout=30,
            )
            nats.kill()
            nats.restart()
            # Probing again after the restart: both answered the reconnected supervisor.
            await eventually(
                lambda: _true(sup.liveness is not None and both <= sup.liveness.seen),
                timeout=30,
            )
            results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
            assert results == [STEPS] * len(handles)
            assert sup.liveness is not None
            assert sup.liveness.dead == [] and sup.liveness.revoked == 0
        finally:
            for p in procs:
                p.kill()
            sup.stop()
            await asyncio.wait_for(task, 30)
            await client.close()


async def test_a_holder_that_never_answered_is_asked_about_once_a_second(
    settings: Settings, client: Client, supervisor: Supervisor
) -> None:
    # A lease holder that hears the probes but never answers (an older worker, or one
    # whose NATS user may not reply): its silence counts for nothing, so it is not asked
    # every round.
    squatter = LeaseManager(client.broker.js, client.broker.names, settings.lease_ttl, "mute")
    lease = await squatter.acquire(rid())
    assert lease is not None
    heard: list[float] = []

    async def listen(msg: Msg) -> None:
        heard.append(time.monotonic())

    sub = await client.broker.nc.subscribe(client.broker.names.alive_subject("mute"), cb=listen)
    try:
        await eventually(lambda: _true(len(heard) >= 1), timeout=10)
        await asyncio.sleep(3.0)
        # About one a second (the first at once): far from the 30 a 0.1 s round would send.
        assert 3 <= len(heard) <= 6, [round(t - heard[0], 2) for t in heard]
        assert supervisor.liveness is not None and "mute" not in supervisor.liveness.seen
        assert supervisor.liveness.dead == []
    finally:
        # The lease is left to expire: a release just before the supervisor stops can make
        # the stop wait out its 10 s bound (its lease watch re-creating itself, not the
        # probes: it happens with the probes off too).
        await sub.unsubscribe()
