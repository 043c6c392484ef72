"""Long human waits done right (issue #17 item 4): an approval that arrives while no worker is
alive, after every worker was restarted, still reaches the run (it is stored, and the run
finds it when it is placed again: no in-memory timer anywhere), and the wait's deadline is
visible in the run's status (record, run detail, ``stalwart status``)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stalwart import Client
from stalwart.checkpoints import WaitStarted
from stalwart.operations import run_detail
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import entries_of, eventually, rid
from tests.test_cli import cli  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow


@pytest.fixture
async def wait_workers(settings, servers: Servers, client: Client) -> AsyncIterator[WorkerFactory]:
    async with worker_pool("tests.conversation_apps:app", settings, servers, client) as start:
        yield start


async def waiting_on(client: Client, run_id: str, signal: str) -> bool:
    record = await client.store.get_run(run_id)
    return record is not None and record.wait_signal == signal


async def test_an_approval_sent_while_no_worker_lives_reaches_the_run(
    client: Client,
    wait_workers: WorkerFactory,
    supervisor,
    cli: Any,  # noqa: F811  (the fixture imported above)
) -> None:
    a = await wait_workers("a")
    t0 = time.time()
    run_id = rid()
    handle = await client.submit("approve_by", 600.0, run_id=run_id)
    await eventually(lambda: waiting_on(client, run_id, "approve"))
    # The deadline shows in the record, the run detail and `stalwart status`.
    record = await handle.status()
    assert record.status == "running"  # hosted, not passivated: wake_at says nothing
    assert record.wait_deadline == pytest.approx(t0 + 600, abs=5)
    detail = await run_detail(client, run_id)
    assert (detail.wait_signal, detail.wait_deadline) == ("approve", record.wait_deadline)
    shown = await cli("status", run_id, "-o", "json")
    assert shown.code == 0, shown
    assert json.loads(shown.out)["wait_deadline"] == record.wait_deadline
    table = await cli("status", run_id)
    assert "wait_deadline" in table.out and "wait_signal" in table.out

    a.kill()  # every worker is gone
    assert await handle.signal("approve", "yes") == "stored"  # nobody to tell: stored
    await wait_workers("b")  # workers come back; the supervisor re-places the run
    assert await handle.result(timeout=40) == "yes"
    (started,) = await entries_of(client, run_id, WaitStarted)  # one wait, continued
    assert started.until == pytest.approx(t0 + 600, abs=5)
    done = await handle.status()
    assert (done.wait_signal, done.wait_deadline) == ("", 0.0)


async def test_a_passivated_wait_is_woken_by_a_signal_sent_while_no_worker_lives(
    client: Client, wait_workers: WorkerFactory, supervisor
) -> None:
    a = await wait_workers("a", STALWART_PASSIVATE_AFTER="0.5")
    run_id = rid()
    handle = await client.submit("approve_by", 600.0, run_id=run_id)

    async def passivated() -> bool:
        record = await client.store.get_run(run_id)
        return record is not None and record.status == "waiting"

    await eventually(passivated, timeout=20)
    record = await handle.status()
    assert record.wait_signal == "approve" and record.wait_deadline > time.time() + 500
    a.kill()  # the worker that passivated it is gone too: a full restart
    assert await handle.signal("approve", "late but fine") == "woke"  # a resume request waits
    await wait_workers("b")
    assert await handle.result(timeout=40) == "late but fine"


async def test_a_wait_deadline_passes_while_no_worker_lives(
    client: Client, wait_workers: WorkerFactory, supervisor
) -> None:
    a = await wait_workers("a", STALWART_PASSIVATE_AFTER="0.5")
    handle = await client.submit("approve_by", 3.0)

    async def passivated() -> bool:
        record = await client.store.get_run(handle.run_id)
        return record is not None and record.status == "waiting"

    await eventually(passivated, timeout=20)
    a.kill()
    await wait_workers("b")  # the timer is in Redis: the supervisor wakes the run when due
    assert await handle.result(timeout=40) == "expired"
