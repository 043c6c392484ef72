"""Delivery of run requests across workers (issue #15): no request waits in a busy worker's
buffer while another worker has free slots, and an idle worker sends almost nothing.

In-process workers on the suite's real servers: the agents below block on events the test
holds, so the test decides which slots are busy and sees at once when a run starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
import redis.asyncio as aioredis

from stalwart import App, Client, RunContext, Settings, Supervisor, Worker
from stalwart._ids import check_lane
from stalwart.broker import Names
from stalwart.broker._provision import provision
from stalwart.broker._pull import allot, heartbeat_for
from stalwart.errors import ConfigurationError, UnknownAgentError
from stalwart.testing import NatsServer
from tests.conftest import Servers, WorkerFactory
from tests.helpers import eventually, journal, journaled, open_gate, outcome, owners

app = App("delivery")
started: dict[str, float] = {}
"""Run id -> monotonic time its agent code started (every worker of this process)."""
gates: dict[str, asyncio.Event] = {}
_ids = itertools.count()
"""Worker ids: unique in the process (a worker id is a lease owner)."""


def gate(run_id: str) -> asyncio.Event:
    return gates.setdefault(run_id, asyncio.Event())


@app.agent("hold")
async def hold(ctx: RunContext, _: int) -> int:
    started[ctx.run_id] = time.monotonic()
    await gate(ctx.run_id).wait()
    return 1


@app.agent("other")
async def other(ctx: RunContext, _: int) -> int:
    started[ctx.run_id] = time.monotonic()
    await gate(ctx.run_id).wait()
    return 2


async def opened(run_id: str) -> bool:
    return gate(run_id).is_set()


@app.agent("ticker")
async def ticker(ctx: RunContext, _: int) -> int:
    """Steps until its gate opens: a draining worker hands it over at the next step."""
    started[ctx.run_id] = time.monotonic()
    n = 0
    while not await ctx.step("check", opened, ctx.run_id):  # journaled: replays the same
        n += 1
        await asyncio.sleep(0.02)
    return n


@contextlib.asynccontextmanager
async def in_process(
    settings: Settings, *concurrency: int, **overrides: float | str
) -> AsyncIterator[list[Worker]]:
    """In-process workers with these concurrencies, started one after the other."""
    ws: list[Worker] = []
    try:
        for n in concurrency:
            i = next(_ids)
            w = Worker(
                app,
                msgspec.structs.replace(settings, concurrency=n, worker_id=f"w{i}", **overrides),
            )
            await w.start()
            ws.append(w)
        yield ws
    finally:
        for ev in gates.values():
            ev.set()
        running = [w for w in ws if not w.fetch_closed.is_set()]  # not drained by the test
        for w in running:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*(w._shutdown() for w in running)), timeout=30)


async def start_time(
    client: Client, agent: str, limit: float = 10.0, lane: str = ""
) -> tuple[str, float]:
    """Submit a run of ``agent``; its id and the seconds until its agent code started."""
    t0 = time.monotonic()
    handle = await client.submit(agent, 0, lane=lane)
    await eventually(
        lambda: asyncio.sleep(0, handle.run_id in started),
        timeout=limit,
        interval=0.005,
        message=f"run {handle.run_id} did not start within {limit} s",
    )
    return handle.run_id, started[handle.run_id] - t0


# -- the credit split, without servers ----------------------------------------------------------


def test_allot_asks_only_for_free_slots_and_keeps_every_feed_reachable() -> None:
    assert allot(8, [0], 2) == [8]  # one feed: all free slots
    assert allot(8, [8], 2) == [0]  # already asked for
    assert allot(8, [7], 2) == [0]  # one freed slot: not worth a pull request yet...
    assert allot(8, [0, 0], 2) == [4, 4]  # ...split evenly across agents
    assert allot(8, [6], 2) == [2]  # ...until threshold slots have gathered
    assert allot(0, [0, 0], 1) == [0, 0]  # full: nothing
    # One free slot, two agents: both stay reachable (one over-ask, given back if used).
    assert allot(1, [0, 0], 1) == [1, 1]
    assert allot(1, [1, 0], 1) == [0, 1]
    assert allot(3, [3, 3], 1) == [0, 0]
    assert sum(allot(16, [0, 0, 0], 4)) == 16


def test_allot_gives_the_slots_to_busy_feeds() -> None:
    """Issue #19: with credits split evenly over idle feeds, a busy agent's feed got a few
    slots and then one credit (a pull request) per run, one run in flight at a time."""
    busy = [False, True, False]
    assert allot(12, [0, 0, 0], 4, [False] * 3) == [1, 1, 1]  # no demand seen: reachable
    assert allot(11, [0, 0, 0], 4, busy) == [1, 9, 1]  # idle feeds: one credit, reachable
    assert allot(9, [1, 0, 1], 4, busy) == [0, 7, 0]
    assert allot(9, [1, 5, 1], 4, busy) == [0, 0, 0]  # the busy feed still has credits
    # Idle feeds holding more than the free slots: the busy feed still gets one.
    assert allot(2, [4, 0, 4], 4, busy) == [0, 1, 0]
    assert allot(2, [4, 3, 4], 4, busy) == [0, 0, 0]
    assert allot(0, [0, 0, 0], 4, busy) == [0, 0, 0]
    assert allot(5, [0], 2, [False]) == [5]  # one feed: nothing to leave idle
    assert allot(6, [0, 0], 2, [True, True]) == [3, 3]


def test_pull_expires_is_bounded_and_sets_the_heartbeat() -> None:
    assert heartbeat_for(30.0) == 5.0
    assert heartbeat_for(2.5) == 0.0  # lapses before a lost request would be noticed
    assert Settings(lease_ttl=5).effective_pull_expires == 2.5
    assert Settings(lease_ttl=1).effective_pull_expires == 1.0
    assert Settings(pull_expires=30).effective_pull_expires == 30.0
    with pytest.raises(ConfigurationError, match="pull_expires"):
        Settings(pull_expires=0.5)
    with pytest.raises(ConfigurationError, match="pull_expires"):
        Settings(pull_expires=301)


# -- real servers ----------------------------------------------------------------------------


async def test_a_request_never_waits_in_a_busy_workers_buffer(
    settings: Settings, client: Client
) -> None:
    """A (3 slots, one busy) and B (8 free) idle across several pull cycles; bursts of 3
    requests each start within 0.5 s. Before the pull feeds, a request could land in a pull
    request nats-py's fetch had left open and wait there for A's next fetch (0.2-0.8 s
    here), and without bound when A was full."""
    async with in_process(settings, 3) as (a,):
        busy, _ = await start_time(client, "hold")
        async with in_process(settings, 8) as (b,):
            for burst in range(8):
                # Gaps that sample the old 1 s fetch cycle at different phases (a 408 that
                # came after the client's own timeout opened the second request).
                await asyncio.sleep(1.0 + 0.23 * burst)
                times = [await start_time(client, "hold") for _ in range(3)]
                slow = [(run, round(t, 3)) for run, t in times if t > 0.5]
                assert not slow, f"burst {burst}: started late {slow}"
                for run, _ in times:
                    gate(run).set()
                await eventually(
                    lambda: asyncio.sleep(0, len(a.hosted) + len(b.hosted) == 1),
                    message="the burst's runs did not end",
                )
            assert busy in a.hosted


async def test_a_full_worker_holds_no_request_while_another_has_slots(
    settings: Settings, client: Client
) -> None:
    """A full (both slots busy) never takes a request: B places every one at once and
    JetStream delivered each once (A asked for nothing, so nothing was given back)."""
    async with in_process(settings, 2) as (a,):
        for _ in range(2):
            await start_time(client, "hold")
        assert len(a.hosted) == 2
        async with in_process(settings, 4) as (b,):
            for _ in range(3):
                run, took = await start_time(client, "hold")
                assert took < 0.5 and run in b.hosted
        info = await client.broker.js.consumer_info(
            client.broker.names.runs_stream, client.broker.names.consumer("hold")
        )
        assert info.num_redelivered == 0


async def test_a_worker_full_with_one_agent_gives_back_anothers_request(
    settings: Settings, client: Client
) -> None:
    """A (1 slot, two agents) keeps one credit per agent; once its slot is taken by `hold`,
    an `other` request that reaches it is given back at once and B places it."""
    async with in_process(settings, 1) as (a,):
        await start_time(client, "hold")
        async with in_process(settings, 2) as (b,):
            run, took = await start_time(client, "other")
            assert took < 0.5 and run in b.hosted
            assert len(a.hosted) == 1


async def test_a_request_is_given_back_once_at_most(settings: Settings, client: Client) -> None:
    """Every give-back costs a delivery (of max_deliver): the second full worker that gets
    an `other` request (its reachability credit) places it beyond its concurrency instead
    of handing it on again."""
    async with in_process(settings, 1, pull_expires=30.0) as (a,):
        await start_time(client, "hold")
        async with in_process(settings, 1, pull_expires=30.0) as (b,):
            await start_time(client, "hold")
            assert len(a.hosted) == len(b.hosted) == 1  # both full
            # A (older request first) gives it back; B, full too, keeps it.
            run, took = await start_time(client, "other")
            assert took < 0.5 and run in b.hosted and len(b.hosted) == 2
            assert run not in a.hosted


async def test_an_idle_worker_sends_one_pull_request_per_expiry(
    settings: Settings, client: Client
) -> None:
    """Idle traffic: over 2 s an idle worker sent its first pull request per agent and no
    more (pull_expires 30 s), and that request covers all its slots."""
    async with in_process(settings, 5, pull_expires=30.0) as (w,):
        before = [f.pulls for f in w._subs]
        await asyncio.sleep(2.0)  # nothing to await: the point is that nothing happens
        # Two feeds per agent: new runs, and resumes of runs of this worker's build.
        assert len(w._subs) == 2 * len(app.agents)
        assert [f.pulls for f in w._subs] == before == [1] * len(w._subs)
        # One credit per feed: the other slots go to a feed once it shows demand.
        assert [f.outstanding for f in w._subs] == [1] * len(w._subs)
        run, took = await start_time(client, "hold")  # and it still answers at once
        assert took < 0.5 and run in w.hosted


async def test_a_busy_agent_gets_the_slots_idle_agents_do_not_use(
    settings: Settings, client: Client
) -> None:
    """Issue #19: idle, every feed holds one credit; a burst of `hold` runs makes its feed
    busy, and it then asks for all the free slots the idle feeds do not hold: the burst is
    placed from two pull requests, not one per run (credits split evenly, the other agents'
    feeds held most of the slots), and once its request expired unused it is idle again."""
    # 16 slots: one held by the first run, one reachability credit on each of the 5 other
    # feeds (two per agent: new runs and this build's resumes), 10 left for the busy feed.
    async with in_process(settings, 16, pull_expires=1.0) as (w,):
        first, _ = await start_time(client, "hold")
        hold = next(f for f in w._subs if f.durable == client.broker.names.consumer("hold"))
        idle = lambda: asyncio.sleep(0, all(f.outstanding == 1 and not f.busy for f in w._subs))  # noqa: E731
        await eventually(idle, timeout=10, message="the feeds did not go back to one credit")
        pulls = hold.pulls
        handles = [await client.submit("hold", 0) for _ in range(8)]
        await eventually(
            lambda: asyncio.sleep(0, all(h.run_id in w.hosted for h in handles)),
            timeout=10,
            message="the burst was not placed",
        )
        assert hold.busy
        assert hold.pulls - pulls <= 2, f"{hold.pulls - pulls} pull requests for 8 runs"
        assert first in w.hosted
        await eventually(idle, timeout=10, message="the busy feed did not go back to idle")


async def test_a_draining_worker_takes_no_request_published_after_it_stopped_pulling(
    settings: Settings, client: Client
) -> None:
    """Closing a feed unsubscribes its inbox and the server drops its open pull requests:
    a request published after A drained goes straight to B, delivered once."""
    async with in_process(settings, 4, 4) as (a, b):
        a.stop()
        await asyncio.wait_for(a._shutdown(), timeout=15)
        run, took = await start_time(client, "hold")
        assert took < 0.5 and run in b.hosted
        info = await client.broker.js.consumer_info(
            client.broker.names.runs_stream, client.broker.names.consumer("hold")
        )
        assert info.num_redelivered == 0


# -- lanes ---------------------------------------------------------------------------------


def test_lane_names_subjects_and_consumers() -> None:
    names = Names("ns")
    assert names.runs_subject("a") == "ns.runs.a"
    assert names.runs_subject("a", "hi") == "ns.runs.a.hi"
    assert names.agent_lane("ns.runs.a.hi") == ("a", "hi")
    assert names.agent_lane("ns.runs.a") == ("a", "")
    assert names.consumer("a", "hi") == "agent_a@hi"
    assert Names.consumer_lane("agent_a@hi") == ("agent_a", "hi")
    assert Settings(lanes="default, hi,hi").lane_list == ["", "hi"]
    for bad in ("Hi", "a.b", "", "x,,y", "default2!"):
        with pytest.raises(ConfigurationError, match="lanes"):
            Settings(lanes=bad)
    with pytest.raises(ConfigurationError, match="invalid lane"):
        check_lane("default")  # the default lane is ""


async def test_lanes_keep_their_runs_apart(settings: Settings, client: Client) -> None:
    """A worker serving lane "hi" takes no default-lane run and the default lane's worker
    no "hi" run, whoever has slots free; the run record keeps the lane."""
    async with in_process(settings, 4) as (plain,):
        with pytest.raises(UnknownAgentError, match="lane 'hi'"):
            await client.submit("hold", 0, lane="hi")  # no worker has served the lane yet
        async with in_process(settings, 4, lanes="hi") as (hi,):
            for _ in range(3):
                run, took = await start_time(client, "hold", lane="hi")
                assert took < 0.5 and run in hi.hosted
                assert (await client.handle(run).status()).lane == "hi"
                run, took = await start_time(client, "hold")
                assert took < 0.5 and run in plain.hosted
                assert (await client.handle(run).status()).lane == ""


async def test_a_runs_resume_requests_stay_in_its_lane(settings: Settings, client: Client) -> None:
    """A draining "hi" worker hands its run over with a resume request in lane "hi": the
    other "hi" worker resumes it, never the idle default-lane worker."""
    async with (
        in_process(settings, 4) as (plain,),
        in_process(settings, 4, lanes="hi") as (first,),
    ):
        run, _ = await start_time(client, "ticker", lane="hi")
        assert run in first.hosted
        async with in_process(settings, 4, lanes="default,hi") as (second,):
            first.stop()
            await asyncio.wait_for(first._shutdown(), timeout=15)
            await eventually(
                lambda: asyncio.sleep(0, run in second.hosted),
                timeout=10,
                message=lambda: f"not resumed in lane hi (default worker has {plain.hosted})",
            )
            assert run not in plain.hosted
            gate(run).set()
            assert await client.handle(run).result(timeout=10) >= 1


async def test_provision_creates_the_consumers_of_the_lanes(
    settings: Settings, client: Client
) -> None:
    """`stalwart provision` with STALWART_LANES=default,hi: both consumers, no overlap."""
    names = client.broker.names
    lanes = msgspec.structs.replace(settings, lanes="default,hi")
    lines = await provision(client.broker.js, names, lanes, ["hold"])
    assert any(f"{names.consumer('hold', 'hi')}: created" in line for line in lines), lines
    for lane in ("", "hi"):
        info = await client.broker.js.consumer_info(names.runs_stream, names.consumer("hold", lane))
        assert info.config.filter_subject == names.runs_subject("hold", lane)


async def test_the_supervisor_resumes_a_killed_workers_run_in_its_lane(
    client: Client, workers: WorkerFactory, supervisor: Supervisor, counters: aioredis.Redis
) -> None:
    """SIGKILL the "hi" worker holding a run: the supervisor's resume request (lane from the
    run record) goes to the other "hi" worker, never to the idle default-lane worker."""
    plain = await workers("plain")
    a = await workers("a", STALWART_LANES="hi")
    handle = await client.submit("ten", {"pause_after": 3}, run_id=uuid.uuid4().hex, lane="hi")
    await eventually(lambda: journaled(client, handle.run_id, "step:s3"))
    assert (await handle.status()).worker == "a"
    a.kill()
    await open_gate(counters, handle.run_id, "after")
    b = await workers("b", STALWART_LANES="hi")
    assert await outcome(handle, plain, a, b) == sum(i * 10 for i in range(1, 11))
    assert owners(await journal(client, handle.run_id)) == ["a", "b"]


async def test_pull_requests_lost_with_a_nats_restart_are_sent_again(
    servers: Servers, namespace: str
) -> None:
    """A NATS crash loses every open pull request without a word to the worker: it notices
    the reconnect and asks again at once, not after two missed heartbeats (11 s) or its 30 s
    requests' expiry."""
    nats = NatsServer()
    await asyncio.to_thread(nats.start)
    try:
        s = Settings(nats_url=nats.url, redis_url=servers.redis_url, namespace=namespace)
        client = await Client.connect(settings=s)
        try:
            async with in_process(s, 2, pull_expires=30.0) as (w,):
                nats.kill()  # a crash: no 409 tells the worker its requests are gone
                await asyncio.to_thread(nats.restart)
                # The client reconnects too; its submit waits for that.
                run, took = await start_time(client, "hold", limit=15)
                assert took < 8 and run in w.hosted
                assert all(f.pulls >= 2 for f in w._subs)  # each feed asked again
        finally:
            await client.close()
    finally:
        await asyncio.to_thread(nats.stop)
