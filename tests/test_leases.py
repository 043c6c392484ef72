"""Leases in a real JetStream KV bucket: exclusive, renewed, released, expired, taken over."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from typing import TYPE_CHECKING

import pytest

from stalwart.broker import Broker, Lease, LeaseManager
from stalwart.broker._lease import LeaseState
from stalwart.config import Settings
from stalwart.servers import NatsServer
from tests.helpers import eventually, start_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    b = await Broker.connect(settings, owner="w1")
    yield b
    streams = [
        b.names.runs_stream,
        b.names.events_stream,
        b.names.lease_stream,
        b.names.workers_stream,
        f"KV_{b.names.agents_bucket}",
    ]
    for stream in streams:
        with contextlib.suppress(Exception):
            await b.js.delete_stream(stream)
    await b.close()


async def _renew(manager: LeaseManager, leases: list[Lease]) -> list[Lease]:
    """``manager.renew`` with a deadline, so a renewal that never answers fails the test."""
    try:
        return await asyncio.wait_for(manager.renew(leases), timeout=3)
    except TimeoutError:
        raise AssertionError(
            f"LeaseManager.renew({[lease.run_id for lease in leases]}) did not return within 3 s"
        ) from None


async def test_lease_acquire_is_exclusive(broker: Broker) -> None:
    rid = uuid.uuid4().hex
    w2 = LeaseManager(broker.js, broker.names, broker.settings.lease_ttl, "w2")
    lease = await broker.leases.acquire(rid)
    assert isinstance(lease, Lease)
    assert lease.run_id == rid
    assert lease.acquired == lease.revision > 0
    assert await w2.acquire(rid) is None
    assert await broker.leases.acquire(rid) is None  # not re-entrant either
    state = await broker.leases.state(rid)
    assert (state.holder, state.revision) == ("w1", lease.revision)


async def test_lease_renew_moves_revision_keeps_epoch(broker: Broker) -> None:
    rid = uuid.uuid4().hex
    lease = await broker.leases.acquire(rid)
    assert lease is not None
    epoch, rev = lease.acquired, lease.revision
    assert await _renew(broker.leases, [lease]) == []
    assert lease.revision > rev
    assert lease.acquired == epoch
    state = await broker.leases.state(rid)
    assert (state.holder, state.revision) == ("w1", lease.revision)
    assert await _renew(broker.leases, []) == []


async def test_lease_release_and_reacquire(broker: Broker) -> None:
    rid = uuid.uuid4().hex
    w2 = LeaseManager(broker.js, broker.names, broker.settings.lease_ttl, "w2")
    lease = await broker.leases.acquire(rid)
    assert lease is not None
    assert await broker.leases.release(lease) is True
    assert (await broker.leases.state(rid)).holder is None
    taken = await w2.acquire(rid)
    assert taken is not None
    assert taken.acquired > lease.acquired
    assert (await w2.state(rid)).holder == "w2"
    # The old lease is no longer ours: neither release nor renew may touch it.
    assert await broker.leases.release(lease) is False
    assert await _renew(broker.leases, [lease]) == [lease]
    assert (await w2.state(rid)).holder == "w2"


async def test_lease_state_of_unknown_run_is_free(broker: Broker) -> None:
    state = await broker.leases.state(uuid.uuid4().hex)
    assert state.holder is None and state.revision == 0


async def test_lease_expires_without_renewal_and_is_taken_over(broker: Broker) -> None:
    rid = uuid.uuid4().hex
    w1 = LeaseManager(broker.js, broker.names, 1, "w1")
    w2 = LeaseManager(broker.js, broker.names, 1, "w2")
    old = await w1.acquire(rid)
    assert old is not None
    assert await w2.acquire(rid) is None

    async def expired() -> bool:
        return (await w1.state(rid)).holder is None

    await eventually(expired, timeout=5, message="a 1 s lease did not expire within 5 s")
    new = await w2.acquire(rid)
    assert new is not None
    assert new.acquired > old.acquired
    assert (await w2.state(rid)).holder == "w2"
    assert await _renew(w2, [new]) == []
    # The old owner's renewal must report the lease lost, and must not overwrite the new one.
    assert await _renew(w1, [old]) == [old]
    assert (await w2.state(rid)).holder == "w2"


# -- a lease is lost only when the server refuses its renewal (issue #15) ------------------
# The old rule also counted a lease lost after one TTL without an answered renewal; a NATS
# cluster electing the lease stream's leader (silent for 3-6 s) then dropped every run of
# every worker. Now silence proves nothing: the epoch fence stops zombies, the pre-step
# confirm keeps user code from starting, and a lease that really ran out is refused once
# the server answers (the tests below).


async def test_renewal_of_an_expired_lease_is_refused_by_its_marker(broker: Broker) -> None:
    """Nobody took the run over, but the lease ran out: the key's last message is the expiry
    marker, so the renewal is refused (lost), as a takeover's would be."""
    rid = uuid.uuid4().hex
    w1 = LeaseManager(broker.js, broker.names, 1, "w1")
    lease = await w1.acquire(rid)
    assert lease is not None

    async def expired() -> bool:
        return (await w1.state(rid)).holder is None

    await eventually(expired, timeout=5, message="a 1 s lease did not expire within 5 s")
    assert await _renew(w1, [lease]) == [lease]
    assert lease.lost
    assert (await w1.state(rid)).holder is None  # the refused write changed nothing


async def test_an_unanswered_renewal_that_was_stored_is_adopted_not_lost(broker: Broker) -> None:
    """A renewal whose answer was lost (a timeout in an election) may have been stored: the
    next renewal names a stale revision and is refused although the key is still ours.
    With the unanswered write outstanding (``unsure``) it is adopted; without, lost."""
    rid = uuid.uuid4().hex
    lease = await broker.leases.acquire(rid)
    assert lease is not None
    stale = lease.revision
    await broker.leases._cas(rid, stale)  # stored, its answer "lost"
    lease.unsure = True
    assert await _renew(broker.leases, [lease]) == []
    assert not lease.lost and not lease.unsure
    assert lease.revision > stale
    assert (await broker.leases.state(rid)).revision == lease.revision

    # Another owner's write since then is a refusal, unsure or not.
    other = uuid.uuid4().hex
    mine = await broker.leases.acquire(other)
    assert mine is not None
    w2 = LeaseManager(broker.js, broker.names, broker.settings.lease_ttl, "w2")
    await w2._cas(other, mine.revision)  # w2 took the key over
    mine.unsure = True
    assert await _renew(broker.leases, [mine]) == [mine]
    assert mine.lost

    # This worker's own new lease on a run whose old lease ran out is not the old one's
    # write: the old lease is lost, not adopted (two actors would run the same run).
    w1 = LeaseManager(broker.js, broker.names, 1, "w1")
    run = uuid.uuid4().hex
    old = await w1.acquire(run)
    assert old is not None

    async def expired() -> bool:
        return (await w1.state(run)).holder is None

    await eventually(expired, timeout=5, message="a 1 s lease did not expire within 5 s")
    new = await w1.acquire(run)
    assert new is not None and new.acquired > old.acquired
    old.unsure = True
    assert await _renew(w1, [old]) == [old]
    assert old.lost and (await w1.state(run)).revision == new.revision


def _all_threads_stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is in the stopped state (``T``)."""
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/stat") as f:
            states.append(f.read().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in ("T", "t") for state in states)


@pytest.mark.timeout(60)
async def test_a_silent_server_loses_no_lease(namespace: str) -> None:
    """NATS stops answering (SIGSTOP) for longer than a renewal waits: the renewal fails
    without an answer and the lease is kept; once NATS answers, the next renewal renews it
    (adopting the unanswered write that was stored meanwhile)."""
    nats = NatsServer()
    await start_server(nats)
    b = await Broker.connect(
        Settings(nats_url=nats.url, redis_url="redis://unused", namespace=namespace, lease_ttl=30)
    )
    try:
        leases = LeaseManager(b.js, b.names, 30, "w1")
        lease = await leases.acquire(uuid.uuid4().hex)
        assert lease is not None
        before = lease.renewed_at
        assert nats.pid is not None
        os.kill(nats.pid, signal.SIGSTOP)
        try:
            # Every thread of the server stopped before the renewal is sent: a thread still
            # running on a loaded machine could answer it (nats-server is multi-threaded).
            await eventually(lambda: asyncio.to_thread(_all_threads_stopped, nats.pid or 0))
            # nats-py gives a JetStream publish 5 s: the renewal ends without an answer.
            assert await asyncio.wait_for(leases.renew([lease]), timeout=15) == []
            assert not lease.lost and lease.unsure and lease.renewed_at == before
        finally:
            os.kill(nats.pid, signal.SIGCONT)
        assert await _renew(leases, [lease]) == []
        assert not lease.lost and not lease.unsure and lease.renewed_at > before
        assert (await leases.state(lease.run_id)) == LeaseState("w1", lease.revision)
        assert await leases.confirm(lease) is True
    finally:
        await b.close()
        if nats.pid is not None:
            os.kill(nats.pid, signal.SIGCONT)
        await asyncio.to_thread(nats.stop)


@pytest.mark.timeout(60)
async def test_an_unanswered_acquire_fails_within_its_timeout(namespace: str) -> None:
    """A placement's lease write (a prebuilt command, one future and a timer) that NATS
    never answers raises ``TimeoutError`` after the writer's timeout rather than hanging;
    once NATS answers, the same run's lease is taken (the unanswered write, if stored, was
    this worker's own and has expired)."""
    nats = NatsServer()
    await start_server(nats)
    b = await Broker.connect(
        Settings(nats_url=nats.url, redis_url="redis://unused", namespace=namespace)
    )
    try:
        leases = LeaseManager(b.js, b.names, 2, "w1", nc=b.nc)
        assert (await leases.acquire(uuid.uuid4().hex)) is not None  # the reply inbox is up
        assert nats.pid is not None
        os.kill(nats.pid, signal.SIGSTOP)
        try:
            await eventually(lambda: asyncio.to_thread(_all_threads_stopped, nats.pid or 0))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(leases.acquire(uuid.uuid4().hex), timeout=15)
            assert loop.time() - t0 < 10
        finally:
            os.kill(nats.pid, signal.SIGCONT)
        assert (await leases.acquire(uuid.uuid4().hex)) is not None
    finally:
        await b.close()
        if nats.pid is not None:
            os.kill(nats.pid, signal.SIGCONT)
        await asyncio.to_thread(nats.stop)


@pytest.mark.parametrize("pipelined", [True, False], ids=["prebuilt-commands", "nats-py"])
async def test_a_renewal_pass_settles_each_lease_on_its_own(
    broker: Broker, pipelined: bool
) -> None:
    """Both write paths (prebuilt HPUB commands on one reply subscription, and one
    ``js.publish`` per lease) renew the held leases of a pass and report exactly the ones
    another owner took over as lost."""
    ttl = broker.settings.lease_ttl
    mgr = LeaseManager(broker.js, broker.names, ttl, "w1", nc=broker.nc if pipelined else None)
    w2 = LeaseManager(broker.js, broker.names, ttl, "w2")
    leases = [await mgr.acquire(uuid.uuid4().hex) for _ in range(40)]
    assert all(lease is not None for lease in leases)
    held = [lease for lease in leases if lease is not None]
    taken = {held[3].run_id, held[17].run_id}
    for lease in held:
        if lease.run_id in taken:
            await w2._cas(lease.run_id, lease.revision)
    before = {lease.run_id: lease.revision for lease in held}
    lost = await _renew(mgr, held)
    assert {lease.run_id for lease in lost} == taken
    for lease in held:
        state = await mgr.state(lease.run_id)
        if lease.run_id in taken:
            assert lease.lost and state.holder == "w2"
        else:
            assert not lease.lost and lease.revision > before[lease.run_id]
            assert (state.holder, state.revision) == ("w1", lease.revision)


async def test_confirms_asked_together_share_one_write_pass(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a burst of work many runs find their lease unconfirmed at once: their confirms
    go to the server as one pipelined pass, not one write each in turn (which outlasted
    the TTL with thousands of runs), and each still gets its own answer."""
    mgr = broker.leases
    leases = [await mgr.acquire(uuid.uuid4().hex) for _ in range(60)]
    held = [lease for lease in leases if lease is not None]
    assert len(held) == 60
    for lease in held:
        lease.renewed_at -= mgr.ttl  # not fresh: confirming must ask the server
    w2 = LeaseManager(broker.js, broker.names, mgr.ttl, "w2")
    await w2._cas(held[5].run_id, held[5].revision)  # taken over meanwhile
    passes: list[int] = []
    real_pass = mgr._cas_pass

    async def counted(todo: list[Lease]) -> list[bool | BaseException]:
        passes.append(len(todo))
        return await real_pass(todo)

    monkeypatch.setattr(mgr, "_cas_pass", counted)
    answers = await asyncio.wait_for(asyncio.gather(*(mgr.confirm(x) for x in held)), 5)
    assert passes == [60]
    assert answers == [i != 5 for i in range(60)]
    assert held[5].lost
    assert all(mgr.fresh(lease) for i, lease in enumerate(held) if i != 5)
    # Fresh leases are answered without a pass.
    assert await mgr.confirm(held[0]) is True
    assert passes == [60]


async def test_a_confirm_whose_pass_was_cancelled_is_sent_by_the_next_call(
    broker: Broker,
) -> None:
    """A confirm's pass cancelled before it ran (the worker shutting down, say) must not
    strand the lease's waiter: the caller's next confirm starts a pass for it."""
    mgr = broker.leases
    lease = await mgr.acquire(uuid.uuid4().hex)
    assert lease is not None
    lease.renewed_at -= mgr.ttl  # not fresh: confirming must ask the server
    async with mgr._renewing:  # a pass in flight: the confirm's own pass waits for it
        first = asyncio.create_task(mgr.confirm(lease))
        await eventually(lambda: asyncio.sleep(0, mgr._confirming is not None))
        stranded = mgr._confirming
        assert stranded is not None
        stranded.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stranded
    assert await asyncio.wait_for(mgr.confirm(lease), 5) is True
    assert await asyncio.wait_for(first, 5) is True  # the same waiter, answered by that pass
    assert mgr.fresh(lease)
