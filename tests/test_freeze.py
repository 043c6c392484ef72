"""Freezes, slow servers and graceful drain (issue #12, h1): real processes, real signals.

A worker frozen by SIGSTOP, a Redis that stops answering during a claim, a SIGTERM during a
long step: in each case a journaled step's body must not run again, and a run must move
only when it has to.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING

import msgspec
import pytest
import redis.asyncio as aioredis

from stalwart import Client, Settings, Supervisor
from stalwart.broker._lease import lease_fresh
from stalwart.checkpoints import Started, StepDone
from stalwart.checkpoints._runs import LeasePosition
from stalwart.messages import RunRequest
from stalwart.testing import NatsServer, RedisServer
from tests.conftest import Servers, worker_pool
from tests.helpers import at_least, eventually, execs, gate_key, journaled, open_gate, owners, rid

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from stalwart.testing import StalwartProcess


# ------------------------------------------------------------------- the freshness rule


def test_lease_freshness_rule() -> None:
    ttl, margin = 6.0, 3.0
    # Fresh only while less than ttl - margin has passed since the renewal was sent.
    assert lease_fresh(100.0, 100.0, ttl, margin)
    assert lease_fresh(100.0, 102.999, ttl, margin)
    assert not lease_fresh(100.0, 103.0, ttl, margin)
    assert not lease_fresh(100.0, 160.0, ttl, margin)  # woke from a long freeze
    # A clock that went backwards proves nothing.
    assert not lease_fresh(100.0, 99.0, ttl, margin)
    # No margin: up to (not including) the TTL itself.
    assert lease_fresh(100.0, 105.9, ttl, 0.0)
    assert not lease_fresh(100.0, 106.0, ttl, 0.0)


def test_lease_margin_defaults_to_half_the_ttl_and_is_checked() -> None:
    from stalwart.errors import ConfigurationError

    assert Settings(lease_ttl=6).effective_lease_margin == 3.0
    assert Settings(lease_ttl=6, lease_margin=1.5).effective_lease_margin == 1.5
    for bad in (-1.0, 6.0, 7.0):
        with pytest.raises(ConfigurationError, match="lease_margin"):
            Settings(lease_ttl=6, lease_margin=bad)
    with pytest.raises(ConfigurationError, match="drain_timeout"):
        Settings(drain_timeout=-1)
    # Fits Kubernetes' default grace period (30 s) with room to hand runs over and exit.
    assert Settings().drain_timeout <= 20.0


# ------------------------------------------------------------- real processes and servers


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone: it gets paused."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        if server.pid is not None:
            os.kill(server.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture
def settings(servers: Servers, namespace: str, own_redis: RedisServer) -> Settings:
    return Settings(
        nats_url=servers.nats_url,
        redis_url=own_redis.url,
        namespace=namespace,
        lease_ttl=2,
        reconcile_interval=0.5,
        drain_timeout=10.0,
    )


@pytest.fixture
async def counters(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(own_redis.url)
    yield r
    await r.aclose()


async def _logged(proc: StalwartProcess, needle: str) -> bool:
    return needle in proc.log_text()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_worker_resumed_after_sigstop_starts_no_journaled_step_again(
    settings: Settings,
    servers: Servers,
    own_redis: RedisServer,
    client: Client,
    supervisor: Supervisor,
    counters: aioredis.Redis,
) -> None:
    """A: frozen between steps; another worker takes over, journals and completes the run;
    the frozen one wakes and must not start the next step's body."""
    ours = Servers(servers.nats_url, own_redis.url)
    async with worker_pool("tests.apps:app", settings, ours, client) as start:
        a = await start("a")
        run_id = rid()
        handle = await client.submit("ten", {"pause_after": 3}, run_id=run_id)
        await eventually(lambda: journaled(client, run_id, "step:s3"))
        # Now in agent code between s3 and s4 (blocked on the 'after' gate): freeze it.
        a.pause()
        try:
            await start("b")
            await eventually(lambda: _owner_is(handle, "b"), timeout=20)
            # Two tokens: Redis hands one to A's pending BLPOP (read when A wakes), one to B.
            await counters.lpush(gate_key(run_id, "after"), "1", "2")
            assert await handle.result(timeout=30) == sum(i * 10 for i in range(1, 11))
        finally:
            a.resume()
        # A wakes with its BLPOP answered and goes straight for step s4: it must find out
        # that its lease is gone before the body starts.
        await eventually(
            lambda: _logged(a, "lease_lost"), timeout=20, message=lambda: a.log_text()[-3000:]
        )
        for i in range(1, 11):
            n = await execs(counters, run_id, f"step:s{i}")
            assert n == 1, f"step s{i} body ran {n} times:\n{a.log_text()[-3000:]}"
        assert a.alive(), "the woken worker should give the run up, not crash"
        entries = await client.store.read_journal(run_id)
        assert owners(entries) == ["a", "b"]


async def _owner_is(handle, worker: str) -> bool:  # type: ignore[no-untyped-def]
    return bool((await handle.status()).worker == worker)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_claim_slower_than_the_lease_ttl_keeps_the_run_on_its_worker(
    settings: Settings,
    servers: Servers,
    own_redis: RedisServer,
    client: Client,
    supervisor: Supervisor,
    counters: aioredis.Redis,
) -> None:
    """B: Redis stops answering while a worker claims a run, for longer than the lease TTL.

    The placing worker keeps renewing the lease, so once Redis answers the run starts there,
    once: one epoch, no re-placement, no step body twice.
    """
    ours = Servers(servers.nats_url, own_redis.url)
    async with worker_pool("tests.apps:app", settings, ours, client) as start:
        await start("a")
        run_id = rid()
        assert own_redis.pid is not None
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            # Published straight to NATS (a submit writes Redis first): the claim creates
            # the record, and hangs until Redis answers again.
            await client.broker.publish_request(
                RunRequest(run_id=run_id, agent="ten", input={}), msg_id=run_id
            )
            first = await eventually(lambda: _lease_of(client, run_id, "a"), timeout=10)
            # The outage itself: it must outlast the lease TTL by a good margin.
            await asyncio.sleep(2 * settings.lease_ttl + 1)
            state = await client.broker.leases.state(run_id)
            assert state.holder == "a", "the placing worker let its lease run out"
            assert state.revision > first, "the lease was not renewed during the claim"
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        handle = client.handle(run_id)
        assert await handle.result(timeout=30) == sum(i * 10 for i in range(1, 11))
        entries = await client.store.read_journal(run_id)
        started = [je.entry for je in entries if isinstance(je.entry, Started)]
        assert [(s.worker, s.resumed) for s in started] == [("a", False)], started
        # The epoch is the lease's position: its revision at acquisition, in this bucket.
        assert LeasePosition.of_epoch(started[0].epoch).revision == first
        for i in range(1, 11):
            assert await execs(counters, run_id, f"step:s{i}") == 1, f"step s{i} body ran again"
        assert supervisor.replaced == 0


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_placement_whose_lease_is_lost_during_the_claim_is_abandoned(
    settings: Settings,
    servers: Servers,
    own_redis: RedisServer,
    client: Client,
    counters: aioredis.Redis,
) -> None:
    """B, the other branch: the lease is taken away while the claim hangs. The placement
    must not start the run; the request is redelivered at once and placed again."""
    ours = Servers(servers.nats_url, own_redis.url)
    async with worker_pool("tests.apps:app", settings, ours, client) as start:
        a = await start("a")
        run_id = rid()
        assert own_redis.pid is not None
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            await client.broker.publish_request(
                RunRequest(run_id=run_id, agent="ten", input={}), msg_id=run_id
            )
            first = await eventually(lambda: _lease_of(client, run_id, "a"), timeout=10)
            await client.broker.leases.revoke(run_id)  # as for a stuck run
            # The placing worker's next renewal finds the lease gone.
            await eventually(lambda: _logged(a, '"placing": true'), timeout=10)
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        assert await client.handle(run_id).result(timeout=30) == sum(i * 10 for i in range(1, 11))
        await eventually(lambda: _logged(a, "place.lease_lost"), timeout=5)
        entries = await client.store.read_journal(run_id)
        epochs = {je.entry.epoch for je in entries if isinstance(je.entry, StepDone)}
        revisions = {LeasePosition.of_epoch(e).revision for e in epochs}
        assert len(epochs) == 1 and first not in revisions, "the abandoned placement ran steps"
        for i in range(1, 11):
            assert await execs(counters, run_id, f"step:s{i}") == 1, f"step s{i} body ran again"


async def _lease_of(client: Client, run_id: str, worker: str) -> int:
    state = await client.broker.leases.state(run_id)
    return state.revision if state.holder == worker else 0


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_sigterm_during_a_long_step_hands_the_run_over_at_the_drain_budget(
    settings: Settings,
    servers: Servers,
    own_redis: RedisServer,
    client: Client,
    counters: aioredis.Redis,
) -> None:
    """16: the step outlasts the drain budget. At the budget's end the worker cancels it,
    releases the lease and publishes the resume request itself: another worker starts the
    step again right away, not after the lease TTL (10 s here) and a supervisor pass
    (there is no supervisor in this test)."""
    drain = 2.0
    slow_ttl = msgspec.structs.replace(settings, lease_ttl=10)
    ours = Servers(servers.nats_url, own_redis.url)
    async with worker_pool("tests.apps:app", slow_ttl, ours, client) as start:
        a = await start("a", STALWART_DRAIN_TIMEOUT=str(drain))
        run_id = rid()
        handle = await client.submit("ten", {"block_in": 2}, run_id=run_id)
        await eventually(lambda: execs(counters, run_id, "step:s2"))
        assert (await handle.status()).worker == "a"
        # Only now the worker that takes over: started with "a", it could have won the run.
        await start("b")
        t0 = time.monotonic()
        a.proc.terminate()  # type: ignore[union-attr]  # SIGTERM: drain
        await eventually(lambda: at_least(execs(counters, run_id, "step:s2"), 2), timeout=20)
        moved_after = time.monotonic() - t0
        # The drain budget, plus fetch shutdown and the new owner's placement: well under
        # the lease TTL that expiry-based recovery would have to wait out.
        assert moved_after < drain + 4.0, f"resumed {moved_after:.1f} s after SIGTERM"
        assert (await handle.status()).worker == "b"
        await counters.lpush(gate_key(run_id, "in"), "1", "2")
        assert await handle.result(timeout=30) == sum(i * 10 for i in range(1, 11))
        assert await asyncio.to_thread(a.proc.wait, 10) == 0  # type: ignore[union-attr]
        log = a.log_text()
        handed = [line for line in log.splitlines() if "run.handed_over" in line and run_id in line]
        assert len(handed) == 1 and '"cancelled"' in handed[0], log[-3000:]
        summary = [line for line in log.splitlines() if "worker.drained" in line]
        assert len(summary) == 1 and run_id in summary[0], log[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.blocks_loop  # starts and kills its own NATS with the servers' blocking API
async def test_a_lease_nats_cannot_confirm_starts_no_step_body(
    namespace: str, own_redis: RedisServer, counters: aioredis.Redis
) -> None:
    """A, server unreachable: NATS stops answering while the agent is between steps. The
    next step's body must not start (the lease cannot be confirmed), however long NATS is
    silent: no answer proves nothing, so the run is kept, not given up (a NATS cluster
    electing a leader is silent for seconds; dropping every run then re-placed them all).
    Once NATS answers, it decides: a lease it expired meanwhile is refused (its key carries
    the expiry marker: tests/test_leases.py) and the run given up, to be re-placed later.

    (Before issue #15 this test encoded the old rule: given up after one TTL of silence.)
    """
    nats = NatsServer()
    nats.start()
    try:
        assert nats.pid is not None
        ours = Servers(nats.url, own_redis.url)
        s = Settings(nats_url=nats.url, redis_url=own_redis.url, namespace=namespace, lease_ttl=2)
        client = await Client.connect(settings=s)
        try:
            async with worker_pool("tests.apps:app", s, ours, client) as start:
                a = await start("a")
                run_id = rid()
                await client.submit("ten", {"pause_after": 3}, run_id=run_id)
                await eventually(lambda: journaled(client, run_id, "step:s3"))
                os.kill(nats.pid, signal.SIGSTOP)
                try:
                    # Let the lease age past its fresh window (a renewal was at most a
                    # third of the TTL ago; renewals fail now), then let the agent go on.
                    await asyncio.sleep(s.lease_ttl * 0.7)
                    await open_gate(counters, run_id, "after")  # on to s4
                    await eventually(
                        lambda: _logged(a, "lease.confirm_failed"),
                        timeout=15,
                        message=lambda: a.log_text()[-3000:],
                    )
                    # Well past the TTL: still waiting for an answer, no body started.
                    await asyncio.sleep(s.lease_ttl * 1.5)
                    assert await execs(counters, run_id, "step:s4") == 0
                    assert "run.lease_lost" not in a.log_text(), a.log_text()[-3000:]
                finally:
                    os.kill(nats.pid, signal.SIGCONT)

                # NATS answers again and decides. The lease outlived its TTL while the
                # server was stopped, but whether the server expired it (renewal refused:
                # the run is given up, s4 never started here) or took the queued renewal
                # first (nobody else could have taken the key: the run goes on, s4 runs
                # once) is the server's race. Either way one answer, never both. A refusal
                # is seen by the step's confirm (run.lease_lost) or by the renewal pass
                # queued with it (the worker stops the run: run.stopped_lease_lost).
                async def given_up() -> bool:
                    return await _logged(a, "run.lease_lost") or await _logged(
                        a, "run.stopped_lease_lost"
                    )

                async def decided() -> bool:
                    return await given_up() or await _logged(a, "run.finished")

                await eventually(decided, timeout=15, message=lambda: a.log_text()[-3000:])
                lost = await given_up()
                assert await execs(counters, run_id, "step:s4") == (0 if lost else 1)
                assert a.alive()
        finally:
            await client.close()
    finally:
        if nats.pid is not None:
            os.kill(nats.pid, signal.SIGCONT)
        nats.stop()


# ------------------------------------------------------------ confirm against a real server


async def test_confirm_proves_ownership_and_detects_takeover_and_expiry(client: Client) -> None:
    leases = client.broker.leases
    lease = await leases.acquire(rid())
    assert lease is not None
    # Concurrent batch renewals and confirmations never refuse each other: no false loss.
    lease.renewed_at -= leases.ttl  # looks stale: confirm must ask the server
    results = await asyncio.gather(
        *(leases.confirm(lease) for _ in range(5)), *(leases.renew([lease]) for _ in range(5))
    )
    assert results[:5] == [True] * 5 and results[5:] == [[]] * 5
    assert leases.fresh(lease) and not lease.lost
    assert (await leases.state(lease.run_id)).revision == lease.revision

    # Revoked (as the supervisor does for a stuck run): refused, and remembered.
    await leases.revoke(lease.run_id)
    lease.renewed_at -= leases.ttl
    assert await leases.confirm(lease) is False
    assert lease.lost and not leases.fresh(lease) and leases.expired(lease)

    # Expired while nobody renewed it: the key carries the expiry marker; refused too.
    other = await leases.acquire(rid())
    assert other is not None
    await eventually(lambda: _free(client, other.run_id), timeout=leases.ttl + 5, interval=0.1)
    other.renewed_at -= leases.ttl
    assert await leases.confirm(other) is False


async def _free(client: Client, run_id: str) -> bool:
    return (await client.broker.leases.state(run_id)).holder is None
