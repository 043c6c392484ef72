"""CheckpointStore against a real Redis: create, claim, append, fencing, finish, cancel."""

from __future__ import annotations

import uuid

import pytest

from stalwart.checkpoints import (
    CheckpointStore,
    Finished,
    JournalConflict,
    Started,
    decode_value,
    encode_value,
)
from stalwart.errors import LeaseLost
from tests.helpers import step_done


async def test_store_create_run_twice_returns_existing(store: CheckpointStore) -> None:
    rid = uuid.uuid4().hex
    assert await store.create_run(rid, "fast", encode_value(5)) is None
    assert await store.create_run(rid, "other", encode_value(6)) == ("accepted", "fast")
    rec = await store.get_run(rid)
    assert rec is not None
    assert (rec.status, rec.agent, rec.epoch) == ("accepted", "fast", 0)
    assert rec.decode_input() == 5  # the second create changed nothing
    assert rid in await store.active_runs()
    assert [r.run_id for r in await store.list_runs()] == [rid]


async def test_store_claim_append_fencing_and_finish(store: CheckpointStore) -> None:
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(5))

    claim = await store.claim(rid, agent="fast", input=encode_value(5), epoch=5, worker="w1")
    assert claim.outcome == "ok"
    assert claim.seq == 1
    assert decode_value(claim.input) == 5
    assert claim.cancel == ""
    rec = await store.get_run(rid)
    assert rec is not None and (rec.status, rec.epoch, rec.worker) == ("running", 5, "w1")

    stale = await store.claim(rid, agent="fast", input=encode_value(5), epoch=3, worker="w2")
    assert stale.outcome == "stale"
    rec = await store.get_run(rid)
    assert rec is not None and (rec.epoch, rec.worker) == (5, "w1")

    step = step_done("step:q", 5)
    assert await store.append(rid, 5, 2, step) == ""

    with pytest.raises(LeaseLost, match="epoch 4"):
        await store.append(rid, 4, 3, step_done("step:q#2", 6, epoch=4))

    with pytest.raises(JournalConflict):
        await store.append(rid, 5, 2, step_done("step:other", 99))

    # A retry of the same append after a lost reply: recognised, not written twice.
    assert await store.append(rid, 5, 2, step) == ""
    journal = await store.read_journal(rid)
    assert [je.seq for je in journal] == [1, 2]
    assert isinstance(journal[0].entry, Started)
    assert journal[0].entry.epoch == 5 and not journal[0].entry.resumed
    assert journal[1].entry == step

    assert await store.append(rid, 5, 3, step_done("step:q#2", 6)) == ""
    later = await store.read_journal(rid, after=1)
    assert [je.seq for je in later] == [2, 3]
    assert [je.seq for je in await store.read_journal(rid, after=3)] == []

    fin = Finished(status="completed", epoch=5, worker="w1", at=2.0, result=encode_value(11))
    await store.finish(rid, 5, 4, fin)
    rec = await store.get_run(rid)
    assert rec is not None
    assert rec.status == "completed" and rec.terminal
    assert rec.decode_result() == 11
    assert rid not in await store.active_runs()
    assert (await store.read_journal(rid))[-1].entry == fin

    after = await store.claim(rid, agent="fast", input=encode_value(5), epoch=9, worker="w2")
    assert after.outcome == "terminal"
    assert after.status == "completed"
    assert len(await store.read_journal(rid)) == 4
    assert await store.request_cancel(rid) == "terminal"


async def test_store_claim_by_newer_epoch_resumes(store: CheckpointStore) -> None:
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(1))
    await store.claim(rid, agent="fast", input=encode_value(1), epoch=5, worker="w1")
    await store.append(rid, 5, 2, step_done("step:q", 1))
    claim = await store.claim(rid, agent="fast", input=encode_value(1), epoch=8, worker="w2")
    assert claim.outcome == "ok" and claim.seq == 3
    journal = await store.read_journal(rid)
    resumed = journal[-1].entry
    assert isinstance(resumed, Started)
    assert resumed.resumed and resumed.epoch == 8 and resumed.worker == "w2"
    # The old owner is fenced out from now on.
    with pytest.raises(LeaseLost):
        await store.append(rid, 5, 4, step_done("step:q#2", 2))


async def test_store_finish_with_stale_epoch_raises(store: CheckpointStore) -> None:
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(1))
    await store.claim(rid, agent="fast", input=encode_value(1), epoch=5, worker="w1")
    with pytest.raises(LeaseLost):
        await store.finish(rid, 4, 2, Finished(status="completed", epoch=4, worker="w0", at=1.0))
    rec = await store.get_run(rid)
    assert rec is not None and rec.status == "running"


async def test_store_cancel_accepted_run_ends_it(store: CheckpointStore) -> None:
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(1))
    assert await store.request_cancel(rid, "user said stop") == "cancelled"
    rec = await store.get_run(rid)
    assert rec is not None
    assert rec.status == "cancelled"
    assert rec.error_type == "RunCancelled"
    assert rec.error == "user said stop"
    assert rid not in await store.active_runs()
    journal = await store.read_journal(rid)
    assert len(journal) == 1
    assert isinstance(journal[0].entry, Finished) and journal[0].entry.status == "cancelled"
    # A worker that fetches the request afterwards finds it terminal.
    claim = await store.claim(rid, agent="fast", input=encode_value(1), epoch=2, worker="w1")
    assert (claim.outcome, claim.status) == ("terminal", "cancelled")


async def test_store_cancel_running_run_flags_next_append(store: CheckpointStore) -> None:
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(1))
    await store.claim(rid, agent="fast", input=encode_value(1), epoch=5, worker="w1")
    assert await store.request_cancel(rid, "stop please") == "requested"
    rec = await store.get_run(rid)
    assert rec is not None and rec.status == "running" and rec.cancel == "stop please"
    assert await store.append(rid, 5, 2, step_done("step:q", 1)) == "stop please"
    # A new owner learns of the cancellation from its claim.
    claim = await store.claim(rid, agent="fast", input=encode_value(1), epoch=6, worker="w2")
    assert claim.outcome == "ok" and claim.cancel == "stop please"


async def test_store_cancel_unknown_run_is_missing(store: CheckpointStore) -> None:
    assert await store.request_cancel(uuid.uuid4().hex) == "missing"
    assert await store.get_run(uuid.uuid4().hex) is None
    assert await store.read_journal(uuid.uuid4().hex) == []


async def test_store_keys_use_namespace_and_hash_tag(
    store: CheckpointStore, namespace: str
) -> None:
    assert store.record_key("r1") == f"{namespace}:{{r1}}:run"
    assert store.journal_key("r1") == f"{namespace}:{{r1}}:journal"
    rid = uuid.uuid4().hex
    await store.create_run(rid, "fast", encode_value(1))
    assert await store.redis.exists(store.record_key(rid)) == 1
