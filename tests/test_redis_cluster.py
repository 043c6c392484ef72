"""Redis Cluster: the store, the append pipe per master, sharded indexes, runs end to end, and
a master killed under running runs (3 masters + 3 replicas on loopback)."""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
from redis.crc import key_slot

from stalwart import Client, Settings, Supervisor, Worker
from stalwart.actors import App, RunContext
from stalwart.checkpoints import CheckpointStore, Finished, StepDone
from stalwart.checkpoints._cluster import parse_cluster_url
from stalwart.checkpoints._cluster_pipe import ClusterPipe
from stalwart.checkpoints._keys import KeySchema
from stalwart.errors import ConfigurationError, ServerUnavailableError
from stalwart.testing import RedisClusterServer, free_port
from tests.conftest import Servers
from tests.helpers import eventually, rid, step_done

try:  # imported here, not in the test: a first import of langgraph blocks the loop for 1 s
    from langgraph.checkpoint.conformance import checkpointer_test, validate

    from stalwart.adapters.langgraph import StalwartSaver
except ImportError:
    StalwartSaver = None  # type: ignore[assignment,misc]

pytestmark = pytest.mark.slow

app = App("cluster")


async def _bump(i: int) -> int:
    return i + 1


async def _nap(i: int) -> int:
    await asyncio.sleep(0.1)
    return i + 1


@app.agent("count")
async def count(ctx: RunContext, n: int) -> int:
    total = 0
    for i in range(n):
        total = await ctx.step(f"s{i}", _bump, total)
    return total


@app.agent("slow_count")
async def slow_count(ctx: RunContext, n: int) -> int:
    total = 0
    for i in range(n):
        total = await ctx.step(f"s{i}", _nap, total)
    return total


@app.agent("napper")
async def napper(ctx: RunContext, seconds: float) -> int:
    first = await ctx.step("before", _bump, 0)
    await ctx.sleep(seconds)  # passivated past passivate_after: the timer wakes it
    return await ctx.step("after", _bump, first)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer(masters=3, replicas=1, node_timeout_ms=1500) as c:
        yield c


def _settings(servers: Servers, redis_url: str, namespace: str) -> Settings:
    return Settings(
        nats_url=servers.nats_url,
        redis_url=redis_url,
        namespace=namespace,
        lease_ttl=2,
        reconcile_interval=0.5,
        drain_timeout=10.0,
    )


@pytest.fixture
async def store(cluster: RedisClusterServer, namespace: str) -> AsyncIterator[CheckpointStore]:
    s = await CheckpointStore.connect(cluster.url, namespace, connect_timeout=10)
    yield s
    await s.close()


async def test_store_operations_on_a_cluster(
    cluster: RedisClusterServer, store: CheckpointStore
) -> None:
    assert isinstance(store._runner.pipe, ClusterPipe)
    assert store.keys.index_shards == 16
    raw = msgspec.Raw(msgspec.msgpack.encode(3))
    ids = [rid() for _ in range(12)]
    for run_id in ids:
        assert await store.create_run(run_id, "count", raw) is None
    # The runs are spread over every master, and so are the index shards they went into.
    masters = {cluster.master_of(store.record_key(r)).port for r in ids}
    assert len(masters) >= 2
    shard_masters = {cluster.master_of(k).port for k in store.keys.runs_shards}
    assert len(shard_masters) == 3
    listed = await store.list_runs(100)
    assert [r.run_id for r in listed] == list(reversed(ids))  # newest first, across shards
    assert [r.run_id for r in await store.list_runs(5)] == list(reversed(ids))[:5]
    assert sorted(ids) == await store.active_runs()

    # claim / append / finish on every run, through the pipe of each run's master
    for run_id in ids:
        claim = await store.claim(run_id, agent="count", input=raw, epoch=7, worker="w")
        assert claim.outcome == "ok"
        assert await store.append(run_id, 7, 2, step_done("s0", 1, 7)) == ""
    pipe = store._runner.pipe
    assert len(pipe.pipes) == 3  # one connection per master
    assert sum(p.writes for p in pipe.pipes.values()) >= len(ids)
    done = ids[0]
    await store.finish(
        done,
        7,
        3,
        Finished(
            status="completed",
            epoch=7,
            worker="w",
            at=time.time(),
            result=msgspec.Raw(msgspec.msgpack.encode(1)),
        ),
    )
    assert (await store.get_run(done)).status == "completed"  # type: ignore[union-attr]
    await eventually(lambda: _not_active(store, done), timeout=5)
    assert [je.seq for je in await store.read_journal(done)] == [1, 2, 3]

    # cancel, signals, timers
    victim = ids[1]
    outcome, _ = await store.cancel_run(victim, "stop")
    assert outcome == "requested" and await store.cancel_flag(victim) == "stop"
    target = ids[2]
    outcome, sid, _ = await store.add_signal(target, "go", b"payload")
    assert outcome == "stored"
    assert await store.read_signal(target, sid) == b"payload"
    await store.passivate(ids[3], 7, "timer", time.time() - 1)
    await store.passivate(ids[4], 7, "timer", time.time() - 2)
    await store.passivate(ids[5], 7, "timer", time.time() + 3600)
    assert await store.due_timers(time.time()) == [ids[4], ids[3]]  # earliest first
    await store.remove_timer(ids[4])
    assert await store.due_timers(time.time()) == [ids[3]]

    # fork: source and copy in different slots (and likely different masters)
    copy = rid()
    await store.fork_run(ids[6], copy, "s0")
    assert [je.seq for je in await store.read_journal(copy)] == [1, 2]
    assert copy in await store.active_runs()


async def _not_active(store: CheckpointStore, run_id: str) -> bool:
    return run_id not in await store.active_runs()


async def test_a_plain_url_of_any_node_is_detected_as_a_cluster(
    cluster: RedisClusterServer, namespace: str
) -> None:
    node = cluster.nodes[-1]
    s = await CheckpointStore.connect(cluster.node_url(node), namespace, connect_timeout=10)
    try:
        assert isinstance(s._runner.pipe, ClusterPipe)
        run_id = rid()
        assert await s.create_run(run_id, "count", msgspec.Raw(b"\x01")) is None
        assert [r.run_id for r in await s.list_runs()] == [run_id]
    finally:
        await s.close()


async def test_wait_for_replicas_is_refused_on_a_cluster(
    cluster: RedisClusterServer, servers: Servers, namespace: str
) -> None:
    """WAIT acknowledges one connection's writes; a cluster's go to several masters, so the
    setting is refused with the reason instead of silently not waiting (both URL forms)."""
    waiting = msgspec.structs.replace(
        _settings(servers, cluster.url, namespace), redis_wait_replicas=1
    )
    for url in (cluster.url, cluster.node_url(cluster.nodes[0])):
        with pytest.raises(ConfigurationError, match="not supported on a Redis Cluster"):
            await CheckpointStore.connect(url, namespace, settings=waiting, connect_timeout=10)


async def test_index_shards_setting_and_bad_cluster_urls(
    cluster: RedisClusterServer, servers: Servers, namespace: str
) -> None:
    settings = _settings(servers, cluster.url, namespace)
    s = await CheckpointStore.connect(
        cluster.url,
        namespace,
        settings=msgspec.structs.replace(settings, redis_index_shards=4),
    )
    try:
        assert len(s.keys.active_shards) == 4
    finally:
        await s.close()
    single = await CheckpointStore.connect(servers.redis_url, namespace)
    try:  # a single Redis keeps today's key names
        assert single.runs_key == f"{namespace}:runs"
        assert not isinstance(single._runner.pipe, ClusterPipe)
    finally:
        await single.close()
    with pytest.raises(ConfigurationError, match="only database 0"):
        parse_cluster_url("redis+cluster://127.0.0.1:7000/3")
    with pytest.raises(ConfigurationError, match="is not host:port"):
        parse_cluster_url("redis+cluster://127.0.0.1:7000,:x")
    assert parse_cluster_url("redis+cluster://u:p@a:1,b:2").seeds == (("a", 1), ("b", 2))


async def test_the_pipe_follows_moved_and_ask(
    cluster: RedisClusterServer, store: CheckpointStore
) -> None:
    pipe = store._runner.pipe
    assert isinstance(pipe, ClusterPipe)
    # MOVED: route a slot to the wrong master; the reply sends the call on to the right one.
    key = f"{store.ns}:{{moved}}:x"
    slot = key_slot(key.encode())
    owner = cluster.master_of(key)
    wrong = next(n for n in cluster.master_nodes() if n.port != owner.port)
    pipe._moved[slot] = ("127.0.0.1", wrong.port)
    before = pipe.redirects
    assert await pipe.call("SADD", key, "a") == 1
    assert pipe.redirects == before + 1
    assert await store.redis.smembers(key) == {b"a"}

    # ASK: a slot being migrated; a key the source no longer has is asked of the target.
    key = f"{store.ns}:{{asked}}:x"
    slot = key_slot(key.encode())
    source = cluster.master_of(key)
    dest = next(n for n in cluster.master_nodes() if n.port != source.port)
    ids = {v.port: v.node_id for v in cluster.view()}
    dest.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[source.port])
    source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[dest.port])
    try:
        before = pipe.redirects
        assert await pipe.call("SADD", key, "b") == 1
        assert pipe.redirects == before + 1
        assert dest.command("DBSIZE") != b":0"  # written on the target, not the source
    finally:
        for node in (source, dest):
            node.command("CLUSTER", "SETSLOT", str(slot), "NODE", ids[source.port])


async def test_twenty_runs_through_a_node_that_does_not_own_the_first_shard(
    cluster: RedisClusterServer, servers: Servers, namespace: str
) -> None:
    first_shard = f"{namespace}:{{idx.0}}:runs"
    other = next(n for n in cluster.master_nodes() if n.port != cluster.master_of(first_shard).port)
    settings = _settings(servers, cluster.node_url(other), namespace)
    worker = Worker(app, settings)
    sup = Supervisor(settings)
    await worker.start()
    task = asyncio.create_task(worker.run())
    await sup.start()
    try:
        async with await Client.connect(settings=settings) as client:
            handles = [await client.submit("count", 5) for _ in range(20)]
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result(timeout=40) for h in handles)), 45
            )
            assert results == [5] * 20
            listed = {r.run_id for r in await client.runs(50)}
            assert {h.run_id for h in handles} <= listed
            # Supervisor passes read every shard without a cross-slot error.
            assert await sup.reconcile() == 0
            await sup.reject_unserved()
            assert sup.store is not None
            await eventually(
                lambda: _none_active(sup.store, {h.run_id for h in handles}), timeout=10
            )
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        await sup.close()


async def _none_active(store: CheckpointStore | None, ids: set[str]) -> bool:
    assert store is not None
    return not ids & set(await store.active_runs())


async def test_a_master_killed_under_running_runs(servers: Servers, namespace: str) -> None:
    """Its replica is promoted; every run completes with a contiguous journal."""
    async with RedisClusterServer(masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        # Room for every run at once, so all are mid-way when the master dies.
        settings = msgspec.structs.replace(
            _settings(servers, cluster.url, namespace), concurrency=32
        )
        worker = Worker(app, settings)
        sup = Supervisor(settings)
        await worker.start()
        task = asyncio.create_task(worker.run())
        await sup.start()
        sup_task = asyncio.create_task(sup.run())
        try:
            async with await Client.connect(settings=settings) as client:
                handles = [await client.submit("slow_count", 30) for _ in range(20)]
                store = client.store

                async def all_started() -> bool:
                    for h in handles:
                        if len(await store.read_journal(h.run_id)) < 4:
                            return False
                    return True

                await eventually(all_started, timeout=20)
                running = [(await store.get_run(h.run_id)) for h in handles]
                unfinished = sum(1 for r in running if r is not None and r.status == "running")
                # The master holding the most of these runs.
                by_port: dict[int, int] = {}
                views = await asyncio.to_thread(cluster.view)
                for h in handles:
                    slot = key_slot(store.record_key(h.run_id).encode())
                    port = next(v.port for v in views if v.owns(slot) and not v.failed)
                    by_port[port] = by_port.get(port, 0) + 1
                victim = cluster.node_at(max(by_port, key=lambda p: by_port[p]))
                await asyncio.to_thread(cluster.kill, victim)
                promoted = await asyncio.to_thread(cluster.wait_failover, victim, 20)
                assert promoted.port != victim.port
                assert unfinished >= 15, [r and r.status for r in running]
                results = await asyncio.wait_for(
                    asyncio.gather(*(h.result(timeout=50) for h in handles)), 55
                )
                assert results == [30] * 20
                # After the failover the worker's appends went down a pipe to the promoted
                # replica (the slot map was refreshed), not only through the fallback.
                pipe = worker.store._runner.pipe if worker.store is not None else None
                assert isinstance(pipe, ClusterPipe)
                promoted_pipe = pipe.pipes.get(("127.0.0.1", promoted.port))
                assert promoted_pipe is not None and promoted_pipe.writes > 0
                for h in handles:
                    seqs = [je.seq for je in await store.read_journal(h.run_id)]
                    assert seqs == list(range(1, len(seqs) + 1)), (h.run_id, seqs)
                    done = [
                        je.entry.key
                        for je in await store.read_journal(h.run_id)
                        if isinstance(je.entry, StepDone)
                    ]
                    assert sorted(done) == sorted(f"step:s{i}" for i in range(30))  # each once
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
            sup.stop()
            await asyncio.wait_for(sup_task, 30)  # closes its connections


@pytest.mark.skipif(StalwartSaver is None, reason="needs langgraph")
async def test_the_langgraph_saver_passes_its_conformance_suite_on_a_cluster(
    cluster: RedisClusterServer,
) -> None:
    @checkpointer_test(name="StalwartSaver on a cluster")
    async def factory() -> AsyncIterator[StalwartSaver]:
        s = StalwartSaver.from_url(cluster.url, namespace="conf" + uuid.uuid4().hex[:8])
        yield s
        await s.aclose()

    report = await validate(factory)
    failures = {cap: r.failures for cap, r in report.results.items() if not r.passed}
    assert not failures, failures
    assert sum(r.tests_passed for r in report.results.values()) == 81


def test_the_key_schema_splits_indexes_only_when_asked() -> None:
    one = KeySchema("ns")
    assert (one.runs, one.active, one.timers) == ("ns:runs", "ns:active", "ns:timers")
    assert one.runs_of("r1") == "ns:runs" and one.active_shards == ["ns:active"]
    many = KeySchema("ns", 16)
    assert many.active_of("r1") == f"ns:{{idx.{zlib.crc32(b'r1') % 16}}}:active"
    assert len(set(many.timers_shards)) == 16
    # Every shard key has its own hash tag, so the shards spread over the slots.
    assert len({key_slot(k.encode()) for k in many.runs_shards}) == 16
    with pytest.raises(ValueError, match="split into 16 shards"):
        _ = many.runs
    for bad in (0, 1025, True, "4"):
        with pytest.raises(ValueError, match="index shards must be an integer from 1 to 1024"):
            KeySchema("ns", bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="redis_index_shards"):
        Settings(redis_index_shards=-1)


async def test_a_client_role_user_works_on_a_cluster(
    cluster: RedisClusterServer, namespace: str
) -> None:
    """The ACL rules of ``stalwart security`` are enough for the cluster client, and the
    plain URL of a node with them is still detected as a cluster."""
    from stalwart.roles import redis_acl_rules

    user, password = f"client-{namespace}", uuid.uuid4().hex
    rules = " ".join(redis_acl_rules("client", namespace))
    for node in cluster.nodes:
        assert node.command(f"ACL SETUSER {user} reset on >{password} {rules}") == b"+OK"
    node = cluster.nodes[1]
    url = f"redis://{user}:{password}@127.0.0.1:{node.port}"
    s = await CheckpointStore.connect(url, namespace, connect_timeout=10)
    try:
        assert isinstance(s._runner.pipe, ClusterPipe)
        ids = [rid() for _ in range(6)]
        for run_id in ids:
            assert await s.create_run(run_id, "count", msgspec.Raw(b"\x01")) is None
        assert [r.run_id for r in await s.list_runs()] == list(reversed(ids))
        outcome, _, _ = await s.add_signal(ids[0], "go", b"x")
        assert outcome == "stored"
        assert await s.request_cancel(ids[1]) == "cancelled"  # never placed: ends at once
    finally:
        await s.close()


async def test_runs_are_paged_across_the_index_shards(
    cluster: RedisClusterServer, servers: Servers, namespace: str
) -> None:
    """stalwart.operations.list_runs merges the 16 index shards newest first and its cursor
    goes on across them (each shard its own slot)."""
    from stalwart.operations import RunQuery, list_runs

    client = await Client.connect(settings=_settings(servers, cluster.url, namespace))
    try:
        ids = [rid() for _ in range(11)]
        for i, run_id in enumerate(ids):
            await client.submit("a" if i % 2 else "b", i, run_id=run_id, require_registered=False)
        seen: list[str] = []
        cursor = None
        for _ in range(5):
            page = await list_runs(client, RunQuery(limit=3, cursor=cursor))
            seen += [r.run_id for r in page.runs]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == list(reversed(ids))
        odd = await list_runs(client, RunQuery(agent="a", limit=100))
        assert [r.run_id for r in odd.runs] == list(reversed(ids[1::2]))
    finally:
        await client.close()


async def test_a_cluster_url_that_cannot_be_used_says_why(servers: Servers, namespace: str) -> None:
    dead = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailableError, match="connection refused"):
        await CheckpointStore.connect(dead, namespace, connect_timeout=1)
    # A single Redis named as a cluster: refused with the reason, not a traceback.
    single = servers.redis_url.replace("redis://", "redis+cluster://").removesuffix("/0")
    with pytest.raises(ServerUnavailableError, match=r"(?i)cluster"):
        await CheckpointStore.connect(single, namespace, connect_timeout=5)


async def test_a_tls_cluster(
    tmp_path_factory: pytest.TempPathFactory, servers: Servers, namespace: str
) -> None:
    """rediss+cluster:// with the CA from the settings: the cluster client and every
    master's pipe speak TLS."""
    from stalwart.testing import ServerTLS
    from tests.transport_material import make_material

    material = make_material(tmp_path_factory.mktemp("cluster-tls"))
    p = material.path
    # The nodes present the client certificate to each other on the cluster bus; clients
    # need none (no mutual TLS on the client port).
    tls = ServerTLS(
        p("server.pem"),
        p("server.key"),
        p("ca.pem"),
        client_cert_file=p("client.pem"),
        client_key_file=p("client.key"),
    )
    async with RedisClusterServer(masters=3, replicas=0, tls=tls) as cluster:
        assert cluster.url.startswith("rediss+cluster://")
        settings = msgspec.structs.replace(
            _settings(servers, cluster.url, namespace), redis_tls_ca=p("ca.pem")
        )
        s = await CheckpointStore.connect(cluster.url, namespace, settings=settings)
        try:
            raw = msgspec.Raw(msgspec.msgpack.encode(1))
            ids = [rid() for _ in range(9)]
            for run_id in ids:
                assert await s.create_run(run_id, "count", raw) is None
                claim = await s.claim(run_id, agent="count", input=raw, epoch=3, worker="w")
                assert claim.outcome == "ok"
                assert await s.append(run_id, 3, 2, step_done("s0", 1, 3)) == ""
            pipe = s._runner.pipe
            assert isinstance(pipe, ClusterPipe)
            assert len(pipe.pipes) == 3 and all(x.connects == 1 for x in pipe.pipes.values())
            assert [r.run_id for r in await s.list_runs()] == list(reversed(ids))
        finally:
            await s.close()
        # Without the CA the server's certificate is refused, and the message says so.
        with pytest.raises(ServerUnavailableError, match="certificate"):
            await CheckpointStore.connect(cluster.url, namespace, connect_timeout=3)


async def test_passivated_runs_are_woken_by_their_timers_on_a_cluster(
    cluster: RedisClusterServer, servers: Servers, namespace: str
) -> None:
    settings = msgspec.structs.replace(
        _settings(servers, cluster.url, namespace), passivate_after=0.2
    )
    worker = Worker(app, settings)
    sup = Supervisor(settings)
    await worker.start()
    task = asyncio.create_task(worker.run())
    sup_task = asyncio.create_task(sup.run())
    try:
        async with await Client.connect(settings=settings) as client:
            handles = [await client.submit("napper", 2.0) for _ in range(8)]
            store = client.store

            seen: set[str] = set()

            async def armed() -> bool:  # every run waited on a timer, spread over the shards
                seen.update(await store.due_timers(time.time() + 60))
                return seen >= {h.run_id for h in handles}

            await eventually(armed, timeout=10)
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result(timeout=30) for h in handles)), 35
            )
            assert results == [2] * 8
            assert await store.due_timers(time.time() + 60) == []  # fired and removed
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        sup.stop()
        await asyncio.wait_for(sup_task, 30)
