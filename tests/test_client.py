"""Client behaviour against real servers and worker processes: duplicates, events, bad input."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
import redis.asyncio as aioredis

from stalwart import (
    Client,
    InvalidRequestError,
    PayloadTooLargeError,
    RunEvent,
    RunFailed,
    RunHandle,
    RunRejected,
    UnknownAgentError,
)
from stalwart.checkpoints import Started, StepError, encode_value
from stalwart.messages import RunRequest, decode_event
from tests.conftest import WorkerFactory
from tests.helpers import eventually, execs, rid


async def collect(client: Client, run_id: str, *, follow: bool = True) -> list[RunEvent]:
    return [ev async for ev in client.handle(run_id).events(follow=follow)]


async def test_duplicate_submit_is_one_run(
    client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await workers()
    run_id = rid()
    first, second = await asyncio.gather(
        client.submit("fast", 1, run_id=run_id), client.submit("fast", 1, run_id=run_id)
    )
    assert await first.result(timeout=20) == await second.result(timeout=20) == 6
    again = await client.submit("fast", 1, run_id=run_id)  # after completion
    assert await again.result(timeout=5) == 6
    journal = await client.store.read_journal(run_id)
    assert sum(isinstance(je.entry, Started) for je in journal) == 1
    assert await execs(counters, run_id, "step:q") == 1
    assert [r.run_id for r in await client.runs()].count(run_id) == 1


async def test_reusing_a_run_id_for_another_agent_is_refused(
    client: Client, workers: WorkerFactory
) -> None:
    await workers()
    run_id = rid()
    await (await client.submit("fast", 1, run_id=run_id)).result(timeout=20)
    with pytest.raises(InvalidRequestError, match="already belongs to a run of agent 'fast'"):
        await client.submit("typed", {"sku": "a", "qty": 1}, run_id=run_id)


async def test_live_and_late_subscribers_see_the_same_complete_sequence(
    client: Client, workers: WorkerFactory
) -> None:
    await workers()
    run_id = rid()
    live = asyncio.create_task(collect(client, run_id))
    handle = await client.submit("ten", {}, run_id=run_id)
    assert await handle.result(timeout=20) == 550
    live_events = await asyncio.wait_for(live, 10)
    late_events = await collect(client, run_id, follow=False)

    assert [e.type for e in live_events] == [e.type for e in late_events]
    types = [e.type for e in live_events]
    assert types[0] == "run.accepted" and types[1] == "run.started" and types[-1] == "run.completed"
    completed = [e.step for e in live_events if e.type == "step.completed"]
    assert completed == [f"step:s{i}" for i in range(1, 11)]
    # A step that ended within the event batch window (2 ms) is announced by its end alone.
    started = [e.step for e in live_events if e.type == "step.started"]
    assert set(started) <= set(completed)
    assert started == sorted(started, key=completed.index)
    journaled = [e.jseq for e in live_events if e.jseq]
    assert journaled == list(range(1, len(await client.store.read_journal(run_id)) + 1))
    assert live_events[-1].data == {"result": 550}


async def test_malformed_request_is_rejected_and_worker_keeps_serving(
    client: Client, workers: WorkerFactory
) -> None:
    await workers()
    names = client.broker.names
    run_id = rid()
    await client.broker.js.publish(
        names.runs_subject("fast"), b"\xc1 not msgpack", headers={"Nats-Msg-Id": run_id}
    )
    events = await asyncio.wait_for(collect(client, run_id), 20)
    assert events[-1].type == "request.rejected"
    assert "malformed run request" in events[-1].data["reason"]

    # Without a usable run id the rejection goes to the agent's rejected subject.
    await client.broker.js.publish(names.runs_subject("fast"), b"garbage")

    async def rejected() -> RunEvent | None:
        try:
            msg = await client.broker.js.get_msg(
                names.events_stream, subject=names.rejected_subject("fast")
            )
        except Exception:
            return None
        return decode_event(msg.data)

    event = await eventually(rejected)
    assert event.type == "request.rejected" and "malformed" in event.data["reason"]

    # A request whose agent field disagrees with its subject is refused too.
    bad = msgspec.msgpack.encode({"run_id": "x1" + rid()[:6], "agent": "typed", "input": 1})
    await client.broker.js.publish(names.runs_subject("fast"), bad)
    assert await (await client.submit("fast", 2)).result(timeout=20) == 9


async def test_unknown_agent_is_refused_with_the_registered_names(
    client: Client, workers: WorkerFactory
) -> None:
    await workers()
    run_id = rid()
    with pytest.raises(UnknownAgentError, match=r"'nosuch'.*fast"):
        await client.submit("nosuch", 1, run_id=run_id)
    events = await collect(client, run_id, follow=False)
    assert [e.type for e in events] == ["request.rejected"]
    assert await client.store.get_run(run_id) is None


async def test_input_that_fails_the_agent_type_fails_the_run(
    client: Client, workers: WorkerFactory
) -> None:
    await workers()
    handle = await client.submit("typed", {"sku": 7})
    with pytest.raises(RunFailed) as info:
        await handle.result(timeout=20)
    assert info.value.error_type == "InvalidInput"
    assert "typed" in info.value.message and "Expected `str`" in info.value.message
    good = await client.submit("typed", {"sku": "a", "qty": 3})
    assert await good.result(timeout=20) == {"sku": "a", "total": 6}


async def test_step_that_raises_fails_the_run_and_is_journaled(
    client: Client, workers: WorkerFactory
) -> None:
    await workers()
    handle = await client.submit("failing", "disk")
    with pytest.raises(RunFailed) as info:
        await handle.result(timeout=20)
    assert info.value.error_type == "ValueError"
    assert info.value.message == "tool broke on disk"
    errors = [
        je.entry
        for je in await client.store.read_journal(handle.run_id)
        if isinstance(je.entry, StepError)
    ]
    assert [(e.key, e.error.type) for e in errors] == [("step:boom", "ValueError")]
    types = [e.type for e in await collect(client, handle.run_id, follow=False)]
    assert "step.failed" in types and types[-1] == "run.failed"


async def test_oversized_and_unencodable_inputs_are_refused_before_anything_is_stored(
    client: Client, workers: WorkerFactory
) -> None:
    await workers()
    run_id = rid()
    with pytest.raises(PayloadTooLargeError, match="max_payload"):
        await client.submit("fast", "x" * (client.broker.nc.max_payload + 1), run_id=run_id)
    assert await client.store.get_run(run_id) is None
    with pytest.raises(InvalidRequestError, match="cannot be encoded"):
        await client.submit("fast", object())
    with pytest.raises(InvalidRequestError, match="invalid run id"):
        await client.submit("fast", 1, run_id="has.dots")


async def test_a_step_still_running_when_its_batch_leaves_is_announced_by_step_started(
    client: Client, workers: WorkerFactory
) -> None:
    await workers()
    run_id = rid()
    live = asyncio.create_task(collect(client, run_id))
    handle = await client.submit("steady", 3, run_id=run_id)
    assert await handle.result(timeout=20) == 3
    events = await asyncio.wait_for(live, 10)
    steps = [(e.type, e.step) for e in events if e.type.startswith("step.")]
    # 150 ms steps: each start leaves long before the step ends, and comes first.
    keys = ["step:p", "step:p#2", "step:p#3"]
    assert steps == [(t, k) for k in keys for t in ("step.started", "step.completed")]


async def test_result_reports_a_rejection_made_before_and_after_it_started_waiting(
    client: Client, workers: WorkerFactory
) -> None:
    await workers()

    async def rejected_request(run_id: str) -> None:
        # A request on fast's subject that names another agent: the worker rejects it.
        data = client.broker.encode_request(RunRequest(run_id=run_id, agent="typed", input=1))
        await client.broker.js.publish(
            client.broker.names.runs_subject("fast"), data, headers={"Nats-Msg-Id": run_id}
        )

    early, late = rid(), rid()
    for run_id in (early, late):
        await client.store.create_run(run_id, "fast", encode_value(1))
    await rejected_request(early)
    await eventually(
        lambda: _last_is_rejection(client, early), message="the early request was not rejected"
    )
    with pytest.raises(RunRejected, match="names agent 'typed'"):
        await RunHandle(client, early, "fast").result(timeout=10)
    waiting = asyncio.create_task(RunHandle(client, late, "fast").result(timeout=10))
    # No public signal tells that the waiter has subscribed: give it a moment, so the
    # rejection below is (most likely) heard live rather than found by the first look.
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await rejected_request(late)
    with pytest.raises(RunRejected, match="names agent 'typed'"):
        await waiting


async def _last_is_rejection(client: Client, run_id: str) -> bool:
    last = await client.broker.last_event(run_id)
    return last is not None and last.type == "request.rejected"


async def test_a_step_start_is_dropped_only_when_its_end_is_in_the_same_batch(
    client: Client,
) -> None:
    events = client.broker.events
    run_id = rid()

    def ev(type: str, step: str, jseq: int = 0) -> RunEvent:
        return RunEvent(type=type, run_id=run_id, at=time.time(), step=step, jseq=jseq)

    # Same batch: the start of step a never leaves.
    await events.publish(ev("step.started", "step:a"))
    await events.publish(ev("step.completed", "step:a", jseq=1))
    await events.send_queued()
    # Separate batches: the start of step b has already left when it ends.
    await events.publish(ev("step.started", "step:b"))
    await events.send_queued()
    await events.publish(ev("step.completed", "step:b", jseq=2))
    await events.flush()
    stored = [(e.type, e.step) for e in await collect(client, run_id, follow=False)]
    assert stored == [
        ("step.completed", "step:a"),
        ("step.started", "step:b"),
        ("step.completed", "step:b"),
    ]
