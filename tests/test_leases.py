"""Leases in a real JetStream KV bucket: exclusive, renewed, released, expired, taken over."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING

import pytest

from stalwart.broker import Broker, Lease, LeaseManager
from stalwart.config import Settings
from tests.helpers import eventually

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
    assert lease.epoch == lease.revision > 0
    assert await w2.acquire(rid) is None
    assert await broker.leases.acquire(rid) is None  # not re-entrant either
    state = await broker.leases.state(rid)
    assert (state.holder, state.revision) == ("w1", lease.revision)


async def test_lease_renew_moves_revision_keeps_epoch(broker: Broker) -> None:
    rid = uuid.uuid4().hex
    lease = await broker.leases.acquire(rid)
    assert lease is not None
    epoch, rev = lease.epoch, lease.revision
    assert await _renew(broker.leases, [lease]) == []
    assert lease.revision > rev
    assert lease.epoch == epoch
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
    assert taken.epoch > lease.epoch
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
    assert new.epoch > old.epoch
    assert (await w2.state(rid)).holder == "w2"
    assert await _renew(w2, [new]) == []
    # The old owner's renewal must report the lease lost, and must not overwrite the new one.
    assert await _renew(w1, [old]) == [old]
    assert (await w2.state(rid)).holder == "w2"
