"""Claims ordered by lease position (generation, revision), epochs assigned by the claim, and
the generations of lease-bucket instances, against a real Redis."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
import structlog

from stalwart import Settings
from stalwart.actors._generation import LeaseGenerations
from stalwart.broker import Broker
from stalwart.checkpoints import CheckpointStore, Started, encode_value
from stalwart.checkpoints._generations import generation_of, newest_generation, renumber
from stalwart.errors import LeaseLost
from tests.conftest import Servers
from tests.helpers import step_done

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def store(servers: Servers, namespace: str) -> AsyncIterator[CheckpointStore]:
    assert servers.redis_url
    s = await CheckpointStore.connect(servers.redis_url, namespace)
    yield s
    keys = [k async for k in s.redis.scan_iter(match=f"{namespace}:*")]
    if keys:
        await s.redis.delete(*keys)
    await s.close()


async def _run(store: CheckpointStore) -> str:
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(1))
    return rid


async def test_newer_bucket_claims_below_recorded_revision(store: CheckpointStore) -> None:
    # A new NATS: its lease bucket's revisions restart far below what Redis recorded.
    rid = await _run(store)
    first = await store.claim(rid, agent="fast", input=encode_value(1), revision=900, worker="a")
    assert (first.outcome, first.epoch) == ("ok", 900)
    await store.append(rid, 900, 2, step_done("step:q", 1))
    second = await store.claim(
        rid, agent="fast", input=encode_value(1), revision=3, generation=2, worker="b"
    )
    assert (second.outcome, second.epoch) == ("ok", 901)  # one above the record's epoch
    journal = await store.read_journal(rid)
    started = journal[-1].entry
    assert isinstance(started, Started) and started.resumed and started.epoch == 901
    with pytest.raises(LeaseLost, match="current epoch 901"):
        await store.append(rid, 900, 4, step_done("step:q#2", 2))
    assert await store.append(rid, 901, 4, step_done("step:q#2", 2)) == ""


async def test_late_claims_are_refused(store: CheckpointStore) -> None:
    rid = await _run(store)
    ok = await store.claim(
        rid, agent="fast", input=encode_value(1), revision=40, generation=2, worker="a"
    )
    assert ok.outcome == "ok"
    # Same bucket, an older lease (expired and taken over): refused, nothing written.
    late = await store.claim(
        rid, agent="fast", input=encode_value(1), revision=39, generation=2, worker="b"
    )
    assert late.outcome == "stale" and late.epoch == ok.epoch
    assert late.position is not None and (late.position.generation, late.position.revision) == (
        2,
        40,
    )
    # An older bucket instance, whatever its revision: refused too.
    older = await store.claim(
        rid, agent="fast", input=encode_value(1), revision=10_000, generation=1, worker="c"
    )
    assert older.outcome == "stale"
    rec = await store.get_run(rid)
    assert rec is not None and (rec.worker, rec.epoch) == ("a", ok.epoch)
    assert len(await store.read_journal(rid)) == 1


async def test_resent_claim_gets_the_same_answer(store: CheckpointStore) -> None:
    rid = await _run(store)
    one = await store.claim(rid, agent="fast", input=encode_value(1), revision=7, worker="a")
    again = await store.claim(rid, agent="fast", input=encode_value(1), revision=7, worker="a")
    assert (again.outcome, again.epoch, again.seq) == ("ok", one.epoch, one.seq)
    assert len(await store.read_journal(rid)) == 1


async def test_wrong_epoch_guess_is_corrected(store: CheckpointStore) -> None:
    rid = await _run(store)
    await store.claim(rid, agent="fast", input=encode_value(1), revision=50, worker="a")
    # The resume request said the lost epoch was 10: the claim still lands, at 51.
    claim = await store.claim(
        rid, agent="fast", input=encode_value(1), revision=5, generation=3, worker="b",
        prior_epoch=10, kind="resume",
    )  # fmt: skip
    assert (claim.outcome, claim.epoch) == ("ok", 51)
    started = (await store.read_journal(rid))[-1].entry
    assert isinstance(started, Started) and started.epoch == 51


async def test_record_of_the_previous_version_takes_a_claim(store: CheckpointStore) -> None:
    # Written before lease positions existed: an epoch that was a lease revision, no position.
    rid = await _run(store)
    await store.redis.hset(store.record_key(rid), mapping={"status": "running", "epoch": "500"})
    claim = await store.claim(rid, agent="fast", input=encode_value(1), revision=20, worker="a")
    assert (claim.outcome, claim.epoch) == ("ok", 501)


async def test_claim_refuses_a_position_below_one(store: CheckpointStore) -> None:
    with pytest.raises(ValueError, match="generation and revision >= 1"):
        await store.claim("r", agent="fast", input=encode_value(1), revision=0, worker="a")


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
        await store.claim(
            rid, agent="fast", input=encode_value(1), revision=10**6, generation=first, worker="a"
        )
        lease = await broker.leases.acquire(rid)
        assert lease is not None
        refused = await store.claim(
            rid, agent="fast", input=encode_value(1), revision=lease.revision,
            generation=first, worker="b",
        )  # fmt: skip
        assert refused.outcome == "stale"
        newer = await gens.after_stale(first, refused)
        assert newer is not None and newer > first and gens.generation == newer
        placed = await store.claim(
            rid, agent="fast", input=encode_value(1), revision=lease.revision,
            generation=newer, worker="b",
        )  # fmt: skip
        assert (placed.outcome, placed.epoch) == ("ok", 10**6 + 1)

        # A late claim (the record's revision is one this bucket has reached) stays refused.
        late = await store.claim(
            rid, agent="fast", input=encode_value(1), revision=lease.revision,
            generation=newer, worker="c",
        )  # fmt: skip
        assert late.outcome == "stale"
        assert await gens.after_stale(newer, late) is None
    finally:
        await broker.close()
