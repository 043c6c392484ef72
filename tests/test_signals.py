"""Signals and durable waits across crashes, with passivation."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from stalwart import Client, RunCancelled
from stalwart.checkpoints import StepDone, WaitStarted
from tests.conftest import WorkerFactory
from tests.helpers import entries_of, eventually, execs, rid

pytestmark = pytest.mark.slow


async def status_is(client: Client, run_id: str, status: str) -> bool:
    record = await client.store.get_run(run_id)
    return record is not None and record.status == status


async def test_signal_sent_before_the_wait_is_not_lost(
    client: Client, workers: WorkerFactory
) -> None:
    run_id = rid()
    handle = await client.submit("approval", 5, run_id=run_id, require_registered=False)
    assert await handle.signal("approve", {"by": "ana"}) == "stored"  # no worker yet
    await workers()
    assert await handle.result(timeout=20) == {"quote": 5, "decision": {"by": "ana"}}


async def test_wait_survives_sigkill_passivates_and_wakes_on_signal(
    client: Client, workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await workers("a", STALWART_PASSIVATE_AFTER="1.5")
    run_id = rid()
    handle = await client.submit("approval", 9, run_id=run_id)
    await eventually(lambda: entries_of(client, run_id, WaitStarted))
    a.kill()  # inside the wait, before passivation
    await workers("b", STALWART_PASSIVATE_AFTER="0.5")

    await eventually(lambda: status_is(client, run_id, "waiting"), timeout=20)
    record = await handle.status()
    assert record.worker == "b" and record.waiting_for == "approve"

    async def b_idle() -> bool:
        return any(w.worker_id == "b" and w.active == 0 for w in await client.broker.workers())

    await eventually(b_idle, timeout=10)  # passivated: no slot held
    assert await handle.signal("approve", "yes") == "woke"
    assert await handle.result(timeout=20) == {"quote": 9, "decision": "yes"}
    assert await execs(counters, run_id, "step:quote") == 1
    assert len(await entries_of(client, run_id, WaitStarted)) == 1  # one wait, continued
    types = [e.type async for e in handle.events(follow=False)]
    assert "run.passivated" in types and "signal.received" in types


async def test_durable_sleep_passivates_and_the_timer_wakes_it(
    client: Client, workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    await workers("a", STALWART_PASSIVATE_AFTER="0.3")
    run_id = rid()
    t0 = time.time()
    handle = await client.submit("napper", 2.5, run_id=run_id)
    await eventually(lambda: status_is(client, run_id, "waiting"), timeout=10)
    assert (await handle.status()).wake_at == pytest.approx(t0 + 2.5, abs=1.0)
    assert await handle.result(timeout=20) == "rested"
    assert time.time() - t0 >= 2.5
    done = [e.key for e in await entries_of(client, run_id, StepDone)]
    assert done == ["step:before", "sleep", "step:after"]
    assert await execs(counters, run_id, "step:before") == 1


async def test_wait_timeout_is_journaled_and_raised(client: Client, workers: WorkerFactory) -> None:
    await workers()
    handle = await client.submit("impatient", None)
    assert await handle.result(timeout=20) == "timed out"
    (wait,) = [e for e in await entries_of(client, handle.run_id, StepDone) if e.kind == "signal"]
    assert wait.key == "signal:never"


async def test_cancel_reaches_a_passivated_run(
    client: Client, workers: WorkerFactory, supervisor
) -> None:
    await workers("a", STALWART_PASSIVATE_AFTER="0.3")
    run_id = rid()
    handle = await client.submit("approval", 1, run_id=run_id)
    await eventually(lambda: status_is(client, run_id, "waiting"), timeout=10)
    assert await handle.cancel("nobody approved") == "requested"
    with pytest.raises(RunCancelled, match="nobody approved"):
        await handle.result(timeout=20)
    with pytest.raises(Exception, match="has ended"):
        await handle.signal("approve", "late")
