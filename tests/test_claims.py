"""Claims ordered by lease position (generation, revision), epochs assigned by the claim, and
the generations of lease-bucket instances, against a real Redis."""

from __future__ import annotations

import uuid

import pytest
import structlog

from stalwart import Settings
from stalwart.actors._generation import LeaseGenerations
from stalwart.broker import Broker
from stalwart.checkpoints import CheckpointStore, Claim, Started, encode_value
from stalwart.checkpoints._generations import generation_of, newest_generation, renumber
from stalwart.checkpoints._runs import LeasePosition
from stalwart.errors import LeaseLost
from tests.conftest import Servers
from tests.helpers import step_done


async def _run(store: CheckpointStore) -> str:
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(1))
    return rid


def _at(generation: int, revision: int) -> int:
    return LeasePosition(generation, revision).epoch


async def _claim(store: CheckpointStore, rid: str, epoch: int, worker: str) -> Claim:
    return await store.claim(rid, agent="fast", input=encode_value(1), epoch=epoch, worker=worker)


async def test_newer_bucket_claims_below_recorded_revision(store: CheckpointStore) -> None:
    # A new NATS: its lease bucket's revisions restart far below what Redis recorded.
    rid = await _run(store)
    first = await _claim(store, rid, _at(1, 900), "a")
    assert first.outcome == "ok"
    await store.append(rid, _at(1, 900), 2, step_done("step:q", 1))
    second = await _claim(store, rid, _at(2, 3), "b")
    assert (second.outcome, second.epoch) == ("ok", _at(2, 3))
    started = (await store.read_journal(rid))[-1].entry
    assert isinstance(started, Started) and started.resumed and started.epoch == _at(2, 3)
    with pytest.raises(LeaseLost, match=f"current epoch {_at(2, 3)}"):
        await store.append(rid, _at(1, 900), 4, step_done("step:q#2", 2))
    assert await store.append(rid, _at(2, 3), 4, step_done("step:q#2", 2)) == ""


async def test_late_claims_are_refused(store: CheckpointStore) -> None:
    rid = await _run(store)
    ok = await _claim(store, rid, _at(2, 40), "a")
    assert ok.outcome == "ok"
    # Same bucket, an older lease (expired and taken over): refused, nothing written.
    late = await _claim(store, rid, _at(2, 39), "b")
    assert (late.outcome, late.epoch) == ("stale", _at(2, 40))
    assert LeasePosition.of_epoch(late.epoch) == LeasePosition(2, 40)
    # An older bucket instance, whatever its revision: refused too.
    older = await _claim(store, rid, _at(1, 10**9), "c")
    assert older.outcome == "stale"
    rec = await store.get_run(rid)
    assert rec is not None and (rec.worker, rec.epoch) == ("a", _at(2, 40))
    assert len(await store.read_journal(rid)) == 1


async def test_record_of_the_previous_version_takes_a_claim(store: CheckpointStore) -> None:
    # Written before lease positions existed: the epoch was a bare lease revision.
    rid = await _run(store)
    await store.redis.hset(store.record_key(rid), mapping={"status": "running", "epoch": "5000"})
    assert LeasePosition.of_epoch(5000) == LeasePosition(0, 5000)
    claim = await _claim(store, rid, _at(1, 20), "a")
    assert (claim.outcome, claim.epoch) == ("ok", _at(1, 20))


def test_lease_positions_pack_into_epochs_in_order() -> None:
    positions = [(0, 7), (1, 1), (1, 2), (2, 1), (2, 2**40 - 1), (3, 0), (8191, 5)]
    epochs = [_at(g, r) for g, r in positions]
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)
    assert all(
        LeasePosition.of_epoch(e) == LeasePosition(*p)
        for e, p in zip(epochs, positions, strict=True)
    )
    assert max(epochs) < 2**53  # exact in Lua's doubles
    with pytest.raises(ValueError, match="used up its revisions"):
        LeasePosition(1, 2**40)
    with pytest.raises(ValueError, match="generation 8192"):
        LeasePosition(8192, 1)


async def test_generations_number_identities_in_order_of_first_sight(
    store: CheckpointStore,
) -> None:
    r, ns = store.redis, store.ns
    assert await newest_generation(r, ns) == 0
    a = await generation_of(r, ns, "KV_X@2026-01-01")
    b = await generation_of(r, ns, "KV_X@2026-02-01")
    assert (a, b) == (1, 2)
    assert await generation_of(r, ns, "KV_X@2026-01-01") == 1  # stable
    # A restored bucket (same identity, rewound): renumbered once, as the newest.
    assert await renumber(r, ns, "KV_X@2026-01-01", 1) == 3
    assert await renumber(r, ns, "KV_X@2026-01-01", 1) == 3  # a second finder: no change
    assert await newest_generation(r, ns) == 3
    with pytest.raises(ValueError, match="not a lease bucket identity"):
        await generation_of(r, ns, "")


async def test_worker_generation_follows_a_rewound_bucket(
    servers: Servers, namespace: str, store: CheckpointStore
) -> None:
    settings = Settings(nats_url=servers.nats_url, redis_url=servers.redis_url, namespace=namespace)
    broker = await Broker.connect(settings, owner="w")
    try:
        gens = LeaseGenerations(broker, store, structlog.get_logger("test"))
        first = await gens.current()
        assert first >= 1 and await gens.current() == first  # read once

        # A record claimed at a revision this bucket never reached: the bucket was restored
        # from a backup older than the record.
        rid = await _run(store)
        await _claim(store, rid, _at(first, 10**6), "a")
        lease = await broker.leases.acquire(rid)
        assert lease is not None
        refused = await _claim(store, rid, _at(first, lease.revision), "b")
        assert refused.outcome == "stale"
        newer = await gens.after_stale(first, refused)
        assert newer is not None and newer > first and gens.generation == newer
        placed = await _claim(store, rid, _at(newer, lease.revision), "b")
        assert placed.outcome == "ok"

        # A late claim (the record's revision is one this bucket has reached) stays refused.
        late = await _claim(store, rid, _at(newer, lease.revision), "c")
        assert late.outcome == "stale"
        assert await gens.after_stale(newer, late) is None
    finally:
        await broker.close()
