"""Redis high availability: Sentinel URLs, retryable replies, journal continuity, WAIT.

The failover tests run a real primary, replicas and three Sentinels on loopback
(:class:`stalwart.servers.RedisHA`), real worker processes, and SIGKILL the primary mid-run.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stalwart import Client, Settings
from stalwart.checkpoints import (
    CheckpointStore,
    JournalConflict,
    JournalEntry,
    JournalGap,
    Started,
    StepDone,
    decode_value,
)
from stalwart.checkpoints._reach import parse_redis_url
from stalwart.checkpoints._sentinel import parse_sentinel_url
from stalwart.checkpoints._writer import retryable_error
from stalwart.errors import ConfigurationError, ServerUnavailableError
from stalwart.servers import RedisHA, RedisServer
from stalwart.supervisor import Supervisor
from tests.apps_redis_ha import acks_key
from tests.conftest import worker_pool
from tests.helpers import eventually, outcome, rid, step_done

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.conftest import Servers

# -- URLs ---------------------------------------------------------------------------------------


def test_sentinel_url_forms() -> None:
    u = parse_sentinel_url("redis+sentinel://h1:26380,h2,[::1]:26381/mymaster/3")
    assert u.sentinels == (("h1", 26380), ("h2", 26379), ("::1", 26381))
    assert (u.service, u.db, u.username, u.password) == ("mymaster", 3, "", "")
    u = parse_sentinel_url(
        "redis+sentinel://bob:s%40cret@h1:1/svc?sentinel_password=sp&sentinel_username=su"
    )
    assert (u.username, u.password, u.db) == ("bob", "s@cret", 0)
    assert (u.sentinel_username, u.sentinel_password) == ("su", "sp")
    assert "s@cret" not in repr(u) and "sp" not in repr(u)
    assert u.node_url("10.0.0.1", 6380) == "redis://bob:s%40cret@10.0.0.1:6380/0"
    parse_redis_url("redis+sentinel://h1:26379/svc")  # accepted where any Redis URL is


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h1:26379", "name the Sentinel service"),
        ("redis+sentinel://h1:26379/svc/0/x", "name the Sentinel service"),
        ("redis+sentinel://h1:26379/svc/zero", "database must be a number"),
        ("redis+sentinel://h1:99999/svc", "no valid port"),
        ("redis+sentinel://h1:26379,/svc", "empty Sentinel address"),
        ("redis+sentinel://h1/svc?ssl_ca_certs=x", "unsupported option(s) ssl_ca_certs"),
        ("rediss+sentinel://h1/svc", "not supported yet"),
    ],
)
def test_bad_sentinel_urls_say_why(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=None) as err:
        parse_redis_url(url)
    assert says in str(err.value)


def test_sentinel_url_password_is_masked_in_errors() -> None:
    with pytest.raises(ConfigurationError) as err:
        parse_redis_url("redis+sentinel://bob:hunter2@h1:26379")
    assert "hunter2" not in str(err.value)


# -- which replies are retried ------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        ResponseError("READONLY You can't write against a read only replica. script: x"),
        ReadOnlyError("You can't write against a read only replica."),
        BusyLoadingError("Redis is loading the dataset in memory"),
        ResponseError("LOADING Redis is loading the dataset in memory"),
        ResponseError("MOVED 3999 127.0.0.1:6381"),
        ResponseError("ASK 3999 127.0.0.1:6381"),
        ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
        ResponseError("CLUSTERDOWN The cluster is down"),
        ResponseError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is no"),
        RedisConnectionError("connection lost"),
        RedisTimeoutError("no reply"),
    ],
)
def test_retryable_replies(exc: Exception) -> None:
    assert retryable_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ResponseError("ERR wrong number of arguments"),
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        NoScriptError("NOSCRIPT No matching script"),
        ResponseError("ERR Error running script: ASKED nothing"),
        ValueError("MOVED"),
    ],
)
def test_other_errors_are_not_retried(exc: Exception) -> None:
    assert not retryable_error(exc)


# -- continuity at the store -----------------------------------------------------------------------


@pytest.fixture
async def store(servers: Servers) -> AsyncIterator[CheckpointStore]:
    s = await CheckpointStore.connect(servers.redis_url, f"t{uuid.uuid4().hex[:8]}")
    yield s
    await s.close()


async def _claimed(store: CheckpointStore, epoch: int = 5) -> str:
    run_id = rid()
    claim = await store.claim(run_id, agent="a", input=b"null", epoch=epoch, worker="w1")  # type: ignore[arg-type]
    assert claim.outcome == "ok" and claim.seq == 1
    return run_id


async def test_append_above_a_hole_is_a_gap_and_writes_nothing(store: CheckpointStore) -> None:
    run_id = await _claimed(store)
    await store.append(run_id, 5, 2, step_done("a", 1))
    with pytest.raises(JournalGap) as err:
        await store.append(run_id, 5, 4, step_done("c", 3))
    assert err.value.top == 2 and err.value.seq == 4
    with pytest.raises(JournalGap):
        await store.finish(run_id, 5, 4, _finished())
    assert [je.seq for je in await store.read_journal(run_id)] == [1, 2]


async def test_resend_is_idempotent_and_a_different_entry_conflicts(store: CheckpointStore) -> None:
    run_id = await _claimed(store)
    entry = step_done("a", 1)
    await store.append(run_id, 5, 2, entry)
    await store.append(run_id, 5, 2, entry)  # a resend after a lost reply: ours, fine
    await store.append(run_id, 5, 3, step_done("b", 2))
    await store.append(run_id, 5, 2, entry)  # even with later entries above it
    with pytest.raises(JournalConflict):
        await store.append(run_id, 5, 2, step_done("other", 9))
    assert [je.seq for je in await store.read_journal(run_id)] == [1, 2, 3]


async def test_a_later_append_overtaking_an_earlier_one_waits_for_it(
    store: CheckpointStore,
) -> None:
    """Several appends of one run in flight: the later one reaching Redis first is not a
    hole while the earlier one is still unsettled."""
    run_id = await _claimed(store)
    later = store.append_future(run_id, 5, 3, step_done("b", 2))  # sent first: sees a gap
    earlier = store.append_future(run_id, 5, 2, step_done("a", 1))
    async with asyncio.timeout(10):
        await asyncio.gather(later, earlier)
    assert [je.seq for je in await store.read_journal(run_id)] == [1, 2, 3]


async def test_a_record_back_at_an_older_epoch_is_a_gap(store: CheckpointStore) -> None:
    run_id = await _claimed(store, epoch=7)
    await store.redis.hset(store.record_key(run_id), "epoch", "6")  # as if the claim was lost
    with pytest.raises(JournalGap, match="back at epoch 6"):
        await store.append(run_id, 7, 2, step_done("a", 1))
    await store.redis.hset(store.record_key(run_id), "epoch", "8")  # a newer owner: fenced
    with pytest.raises(Exception, match="no longer owns") as err:
        await store.append(run_id, 7, 2, step_done("a", 1))
    assert not isinstance(err.value, JournalGap)


def _finished() -> object:
    from stalwart.checkpoints import Finished

    return Finished(status="completed", epoch=5, worker="w1", at=0.0, result=b"1")  # type: ignore[arg-type]


async def test_readonly_is_retried_not_a_conflict() -> None:
    """A plain URL pointing at a replica: the write is retried (before: READONLY inside the
    script came back as a JournalConflict) and lands once the node is promoted."""
    primary = RedisServer()
    await primary._start_async()
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    await replica._start_async()
    on_primary = await CheckpointStore.connect(primary.url, "ro")
    on_replica = await CheckpointStore.connect(replica.url, "ro")
    try:
        run_id = await _claimed(on_primary)
        await eventually(lambda: on_replica.get_run(run_id), timeout=10)
        append = asyncio.ensure_future(on_replica.append(run_id, 5, 2, step_done("a", 1)))
        await asyncio.sleep(0.5)
        assert not append.done(), append  # retrying, not failed with a conflict
        await on_replica.redis.execute_command("REPLICAOF", "NO", "ONE")
        async with asyncio.timeout(10):
            await append
        assert [je.seq for je in await on_replica.read_journal(run_id)] == [1, 2]
    finally:
        await on_primary.close()
        await on_replica.close()
        await asyncio.to_thread(replica.stop)
        await asyncio.to_thread(primary.stop)


# -- a primary, replicas and Sentinels ------------------------------------------------------------


async def _ha(replicas: int) -> RedisHA:
    ha = RedisHA(replicas=replicas, sentinels=3)
    await ha.start_async()
    return ha


@pytest.fixture
async def ha() -> AsyncIterator[RedisHA]:
    h = await _ha(1)
    yield h
    await asyncio.to_thread(h.stop)


@pytest.fixture
async def ha2() -> AsyncIterator[RedisHA]:
    h = await _ha(2)
    yield h
    await asyncio.to_thread(h.stop)


async def test_wait_acknowledges_only_replicated_writes(ha: RedisHA) -> None:
    settings = Settings(redis_wait_replicas=1, redis_wait_timeout=50)
    store = await CheckpointStore.connect(ha.url, "w", settings=settings)
    try:
        run_id = await _claimed(store)
        pipe = store._runner.pipe
        assert pipe is not None and pipe.wait_replicas == 1
        writes = pipe.writes
        # Ten appends of ten runs in one turn: one socket write, one WAIT for all of them.
        others = [await _claimed(store) for _ in range(10)]
        writes = pipe.writes
        await asyncio.gather(*(store.append(r, 5, 2, step_done("a", 1)) for r in others))
        assert pipe.writes - writes <= 2  # the first goes out at once, the rest together
        await store.append(run_id, 5, 2, step_done("a", 1))
        replica = ha.replicas()[0]
        await asyncio.to_thread(ha.cut_replication, replica)
        store.retry_for = 0.6
        with pytest.raises(ServerUnavailableError, match="not acknowledged by replicas"):
            await store.append(run_id, 5, 3, step_done("b", 2))
    finally:
        await store.close()


async def test_store_follows_a_manual_failover(ha: RedisHA) -> None:
    """A graceful Sentinel failover: the old primary lives on as a replica (it answers
    READONLY); the pool and the append pipe both end up on the new primary."""
    store = await CheckpointStore.connect(ha.url, "mf")
    try:
        run_id = await _claimed(store)
        await store.append(run_id, 5, 2, step_done("a", 1))
        old = await asyncio.to_thread(ha.primary)
        await asyncio.to_thread(ha._ask, ha.sentinels[0].port, "SENTINEL", "FAILOVER", ha.service)
        new = await asyncio.to_thread(ha.wait_failover, old, 30.0)

        async def demoted() -> bool:
            return await asyncio.to_thread(ha._role, old) == "slave"

        # Until a Sentinel converts it, the old primary still takes writes (which a later
        # resync would drop: the journal check catches that, see the failover tests).
        await eventually(demoted, timeout=20, interval=0.1, message="old primary not demoted")
        async with asyncio.timeout(30):
            await store.append(run_id, 5, 3, step_done("b", 2))
            await store.append(run_id, 5, 4, step_done("c", 3))
        pipe = store._runner.pipe
        assert pipe is not None and pipe._port == new.port
        assert [je.seq for je in await store.read_journal(run_id)] == [1, 2, 3, 4]
    finally:
        await store.close()


# -- failover with running runs ---------------------------------------------------------------------


def _ha_settings(servers: Servers, url: str) -> Settings:
    assert servers.nats_url
    return Settings(
        nats_url=servers.nats_url,
        redis_url=url,
        namespace="t" + uuid.uuid4().hex[:10],
        lease_ttl=2,
        reconcile_interval=0.5,
        drain_timeout=5.0,
    )


def check_contiguous(run_id: str, entries: list[JournalEntry], n: int) -> None:
    """No hole: positions 1..len, epochs only grow, every step journaled once per owner's
    view and all ``n`` steps done."""
    seqs = [je.seq for je in entries]
    assert seqs == list(range(1, len(seqs) + 1)), f"run {run_id}: hole in {seqs}"
    epoch = 0
    for je in entries:
        if isinstance(je.entry, Started):
            assert je.entry.epoch > epoch
            epoch = je.entry.epoch
    done = [je.entry.key for je in entries if isinstance(je.entry, StepDone)]
    assert sorted(set(done)) == sorted(f"step:t{i}" for i in range(n)), done
    assert len(done) == len(set(done)), f"run {run_id}: a step journaled twice: {done}"


async def _acked_lost(client: Client, counters: aioredis.Redis, run_id: str) -> list[str]:
    """Tokens the agent saw acknowledged that the journal does not hold."""
    held = {
        decode_value(je.entry.result)
        for je in await client.store.read_journal(run_id)
        if isinstance(je.entry, StepDone)
    }
    acks = [a.decode() for a in await counters.lrange(acks_key(run_id), 0, -1)]
    return [a for a in acks if a not in held]


async def _failover_scenario(
    servers: Servers,
    counters: aioredis.Redis,
    ha: RedisHA,
    *,
    runs: int,
    steps: int,
    cut: bool,
    wait_replicas: int = 0,
) -> tuple[Client, list[str], list[str]]:
    """Runs in flight on two workers; (optionally cut replication, let them step), SIGKILL
    the primary, let the Sentinels promote a replica; every run must complete with a
    contiguous journal. Returns the client, the run ids and the worker logs."""
    settings = _ha_settings(servers, ha.url)
    client = await Client.connect(settings=settings)
    sup = Supervisor(settings)
    await sup.start()
    sup_task = asyncio.create_task(sup.run())
    env = {"STALWART_REDIS_WAIT_REPLICAS": str(wait_replicas), "STALWART_REDIS_WAIT_TIMEOUT": "100"}
    try:
        async with worker_pool(
            "tests.apps_redis_ha:app", settings, servers, client, **env
        ) as start:
            procs = [await start(), await start()]
            ids = [rid() for _ in range(runs)]
            handles = [
                await client.submit("acked", {"n": steps, "pace": 0.1}, run_id=r) for r in ids
            ]

            async def all_acked(k: int) -> bool:
                lens = [await counters.llen(acks_key(r)) for r in ids]
                return min(lens) >= k

            await eventually(lambda: all_acked(3), timeout=30, message="runs did not start")
            if cut:
                for node in ha.replicas():
                    await asyncio.to_thread(ha.cut_replication, node)
                # Let the runs step on: without WAIT these steps are acknowledged and lost.
                before = [await counters.llen(acks_key(r)) for r in ids]
                await asyncio.sleep(0.6)
                after = [await counters.llen(acks_key(r)) for r in ids]
                if not wait_replicas:
                    assert sum(after) > sum(before), "no step was acknowledged while cut"
            in_flight = [await counters.llen(acks_key(r)) for r in ids]
            assert max(in_flight) < steps, "a run ended before the primary was killed"
            old = await asyncio.to_thread(ha.kill_primary)
            await asyncio.to_thread(ha.wait_failover, old, 30.0)
            results = [await outcome(h, *procs, timeout=40) for h in handles]
            assert results == [steps] * runs
            logs = [p.log_text() for p in procs]
            return client, ids, logs
    finally:
        sup.stop()
        await asyncio.wait({sup_task}, timeout=20)
        await sup.close()


@pytest.mark.slow
async def test_sentinel_failover_during_runs_leaves_no_hole(
    servers: Servers, counters: aioredis.Redis, ha: RedisHA
) -> None:
    client, ids, _ = await _failover_scenario(servers, counters, ha, runs=6, steps=30, cut=False)
    try:
        for r in ids:
            check_contiguous(r, await client.store.read_journal(r), 30)
    finally:
        await client.close()


@pytest.mark.slow
async def test_with_wait_no_acknowledged_step_is_lost(
    servers: Servers, counters: aioredis.Redis, ha2: RedisHA
) -> None:
    client, ids, _ = await _failover_scenario(
        servers, counters, ha2, runs=4, steps=30, cut=True, wait_replicas=1
    )
    try:
        for r in ids:
            check_contiguous(r, await client.store.read_journal(r), 30)
            assert await _acked_lost(client, counters, r) == [], f"run {r} lost acked steps"
    finally:
        await client.close()


@pytest.mark.slow
async def test_without_wait_a_lost_suffix_is_detected_and_replayed(
    servers: Servers, counters: aioredis.Redis, ha: RedisHA
) -> None:
    client, ids, logs = await _failover_scenario(servers, counters, ha, runs=4, steps=30, cut=True)
    try:
        lost = 0
        for r in ids:
            entries = await client.store.read_journal(r)
            check_contiguous(r, entries, 30)
            lost += len(await _acked_lost(client, counters, r))
        # The failover did lose acknowledged steps (without WAIT it can), and the owners
        # saw the hole instead of writing above it: they gave the runs up to be replayed.
        assert lost > 0
        assert any("run.journal_gap" in log for log in logs)
    finally:
        await client.close()
