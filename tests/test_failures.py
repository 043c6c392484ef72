"""Failure handling across real crashes: retries, timeouts, deadlines, budgets, at-most-once."""

from __future__ import annotations

import time
import uuid

import pytest
import redis.asyncio as aioredis

from stalwart import Client, RunFailed, RunHandle
from stalwart.checkpoints import StepAttempt, StepDone, StepError, StepIntent
from stalwart.messages import RunRequest
from tests.conftest import WorkerFactory
from tests.helpers import entries_of, eventually, execs, open_gate, rid

pytestmark = pytest.mark.slow


async def test_flaky_step_resumes_its_retry_sequence_after_a_crash(
    client: Client, workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await workers("a", WORKER_NAME="a")
    run_id = rid()
    handle = await client.submit("flaky", 2, run_id=run_id)
    # Attempt 1 failed and is journaled; the worker dies during the 2 s backoff.
    await eventually(lambda: entries_of(client, run_id, StepAttempt))
    a.kill()
    await workers("b", WORKER_NAME="b")
    assert await handle.result(timeout=30) == "ok after 3"

    attempts = await entries_of(client, run_id, StepAttempt)
    assert [(e.attempt, e.error.type) for e in attempts] == [
        (1, "ConnectionError"),
        (2, "ConnectionError"),
    ]
    assert [e.worker for e in attempts] == ["a", "b"]
    (done,) = await entries_of(client, run_id, StepDone)
    assert done.attempt == 3
    assert await execs(counters, run_id, "step:flaky") == 3  # not restarted at 1
    assert await counters.lrange(f"attempts:{run_id}", 0, -1) == [b"1:a", b"2:b", b"3:b"]
    # Each failed attempt is announced once across the crash: a new owner's republish of
    # attempt 1's event is the same event (same jseq, same message id) and is dropped.
    events = [ev async for ev in handle.events(follow=False)]
    assert [ev.data["attempt"] for ev in events if ev.type == "step.retrying"] == [1, 2]


async def test_non_retryable_error_fails_on_the_first_attempt(
    client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await workers()
    handle = await client.submit("nonretryable", None)
    with pytest.raises(RunFailed) as info:
        await handle.result(timeout=20)
    assert (info.value.error_type, info.value.message) == ("NonRetryableError", "card declined")
    assert await execs(counters, handle.run_id, "step:refuse") == 1
    (err,) = await entries_of(client, handle.run_id, StepError)
    assert err.attempt == 1 and not err.error.retryable


async def test_step_timeout_is_retried_then_fails(
    client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await workers()
    handle = await client.submit("slow_step", None)
    with pytest.raises(RunFailed) as info:
        await handle.result(timeout=20)
    assert info.value.error_type == "StepTimeoutError"
    assert "0.3s start-to-close timeout" in info.value.message
    assert await execs(counters, handle.run_id, "step:too_slow") == 2
    assert [e.error.type for e in await entries_of(client, handle.run_id, StepAttempt)] == [
        "StepTimeoutError"
    ]


async def test_run_deadline_holds_across_a_crash(
    client: Client, workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await workers("a")
    run_id = rid()
    handle = await client.submit("deadline", None, run_id=run_id)
    await eventually(lambda: entries_of(client, run_id, StepDone))
    a.kill()
    await open_gate(counters, run_id, "after")
    await workers("b")
    with pytest.raises(RunFailed) as info:
        await handle.result(timeout=30)
    assert info.value.error_type == "RunDeadlineExceeded"
    record = await handle.status()
    assert record.deadline == pytest.approx(record.created_at + 4.0, abs=0.01)
    assert record.worker == "b"  # the resumed owner enforced the original deadline


@pytest.mark.parametrize(
    ("agent", "budget", "figure"),
    [
        ("chatty", "max_iterations", "reached 4"),
        ("tokens", "max_tokens", "reached 300"),
        ("costly", "max_cost_usd", "reached 0.00055"),
    ],
)
async def test_budgets_end_the_run_naming_the_budget(
    client: Client,
    workers: WorkerFactory,
    counters: aioredis.Redis,
    agent: str,
    budget: str,
    figure: str,
) -> None:
    await workers()
    handle = await client.submit(agent, 10)
    with pytest.raises(RunFailed) as info:
        await handle.result(timeout=20)
    assert info.value.error_type == "BudgetExceeded"
    assert budget in info.value.message and figure in info.value.message
    assert len(await entries_of(client, handle.run_id, StepDone)) < 10


async def test_loop_detection_ends_the_run(client: Client, workers: WorkerFactory) -> None:
    await workers()
    handle = await client.submit("looping", None)
    with pytest.raises(RunFailed) as info:
        await handle.result(timeout=20)
    assert info.value.error_type == "BudgetExceeded"
    assert "max_repeated_tool_calls" in info.value.message and "'search'" in info.value.message
    assert len(await entries_of(client, handle.run_id, StepDone)) == 4  # the 5th repeat is refused


async def test_at_most_once_step_is_not_rerun_after_a_crash_mid_call(
    client: Client, workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await workers("a")
    run_id = rid()
    handle = await client.submit("pay", 42, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "step:charge"))
    a.kill()  # mid-call: the outcome of the charge is unknown
    await open_gate(counters, run_id, "in")
    await workers("b")
    with pytest.raises(RunFailed) as info:
        await handle.result(timeout=30)
    assert info.value.error_type == "ToolOutcomeUnknown"
    assert f"{run_id}:step:charge" in info.value.message
    assert await execs(counters, run_id, "step:charge") == 1
    assert [e.attempt for e in await entries_of(client, run_id, StepIntent)] == [1]


async def test_at_most_once_step_with_reconcile_hook_sees_the_same_idempotency_key(
    client: Client, workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await workers("a")
    run_id = rid()
    handle = await client.submit("pay_reconciled", 7, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "step:charge"))
    a.kill()
    await workers("b")
    assert await handle.result(timeout=30) == "reconciled 7"
    called_with = await counters.lrange(f"idem:{run_id}", 0, -1)
    reconciled_with = await counters.lrange(f"reconciled:{run_id}", 0, -1)
    assert called_with == reconciled_with == [f"{run_id}:step:charge".encode()]
    assert await execs(counters, run_id, "step:charge") == 1


# -- pure policy logic ------------------------------------------------------------------------


async def test_circuit_breaker_opens_shows_in_heartbeat_and_recovers(
    settings, client: Client
) -> None:
    import asyncio

    import msgspec

    from stalwart import NO_RETRY, App, Policies, StepSpec, Worker

    app = App("breaker", policies=Policies(retry={"tool": NO_RETRY}))
    healthy = asyncio.Event()

    async def flaky_api() -> str:
        if not healthy.is_set():
            raise ConnectionError("upstream down")
        return "up"

    @app.agent("caller")
    async def caller(ctx, _: None) -> str:
        return await ctx.call(
            StepSpec(key="tool:1", kind="tool", name="flaky_api", fp="x"), flaky_api
        )

    s = msgspec.structs.replace(settings, breaker_threshold=2, breaker_cooldown=1.0)
    worker = Worker(app, s)
    await worker.start()
    try:
        errors = []
        for _ in range(3):
            with pytest.raises(RunFailed) as info:
                await (await client.submit("caller", None)).result(timeout=20)
            errors.append(info.value.error_type)
        assert errors == ["ConnectionError", "ConnectionError", "CircuitOpenError"]
        await worker._heartbeat()
        (hb,) = [w for w in await client.broker.workers() if w.worker_id == worker.worker_id]
        assert hb.breakers == {"tool:flaky_api": "open"}
        healthy.set()

        async def half_open() -> bool:
            return worker.breakers.get("tool:flaky_api").state() == "half_open"

        await eventually(half_open, timeout=5)
        assert await (await client.submit("caller", None)).result(timeout=20) == "up"
        assert worker.breakers.states() == {}
    finally:
        worker.stop()
        await worker._shutdown()


async def test_a_journal_write_finishes_even_when_its_task_is_cancelled() -> None:
    import asyncio

    from stalwart.actors._journal import _uncancellable, _WrittenThenCancelled

    started, release, landed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def write() -> str:
        started.set()
        await release.wait()
        landed.set()
        return "ok"

    task = asyncio.create_task(_uncancellable(write()))
    await started.wait()
    task.cancel()
    await asyncio.sleep(0)  # let the cancellation reach the shield
    release.set()
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    assert landed.is_set()  # the write was not abandoned mid-flight
    assert isinstance(info.value, _WrittenThenCancelled) and info.value.value == "ok"


async def test_at_most_once_step_can_wait_for_a_human_to_say_what_happened(
    client: Client, workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await workers("a")
    run_id = rid()
    handle = await client.submit("pay_ask_human", 5, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "step:charge"))
    a.kill()  # mid-call: nobody knows whether the card was charged
    await workers("b")

    async def asked() -> dict | None:
        async for ev in handle.events(follow=False):
            if ev.type == "step.outcome_unknown":
                return ev.data
        return None

    question = await eventually(asked, timeout=30)
    assert question == {"signal": "outcome:step:charge", "idempotency_key": f"{run_id}:step:charge"}
    await handle.signal(question["signal"], "charged 5 (checked in the PSP dashboard)")
    assert await handle.result(timeout=30) == "charged 5 (checked in the PSP dashboard)"
    assert await execs(counters, run_id, "step:charge") == 1  # never re-run


async def test_a_placement_that_fails_on_redis_hands_back_lease_and_request_at_once(
    client: Client, workers: WorkerFactory
) -> None:
    """A claim that raises (here: the record key holds the wrong type) must not leave the
    lease held or the request waiting out ack_wait (30 s): both are handed back, and the
    run is placed as soon as Redis can take the claim."""
    proc = await workers()
    rid = f"r-{uuid.uuid4().hex[:10]}"
    record_key = client.store.record_key(rid)
    await client.store.redis.set(record_key, b"not a hash")  # CLAIM now fails: WRONGTYPE
    await client.broker.publish_request(
        RunRequest(run_id=rid, agent="fast", input=2, submitted_at=time.time()), msg_id=rid
    )
    await eventually(
        lambda: _log_has(proc.log_text(), '"place.crashed"'),
        message=lambda: f"no failed placement:\n{proc.log_text()[-2000:]}",
    )
    state = await client.broker.leases.state(rid)
    assert state.holder is None, "the failed placement kept the lease"
    await client.store.redis.delete(record_key)  # Redis can take the claim again
    t0 = time.monotonic()
    assert await RunHandle(client, rid, "fast").result(timeout=20) == 2 + 3 + 4
    # Redelivered after the nak's delay (1 s, doubling), not after ack_wait (30 s).
    assert time.monotonic() - t0 < 10
    assert proc.log_text().count('"place.crashed"') >= 1


async def _log_has(text: str, needle: str) -> bool:
    return needle in text
