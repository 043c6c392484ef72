from __future__ import annotations

from stalwart import Client
from tests.conftest import WorkerFactory
from tests.helpers import execs


async def test_run_completes_on_a_worker_process(
    client: Client, workers: WorkerFactory, counters
) -> None:
    await workers()
    handle = await client.submit("fast", 10)
    assert await handle.result(timeout=20) == 10 + 11 + 12
    for key in ("step:q", "step:q#2", "step:q#3"):
        assert await execs(counters, handle.run_id, key) == 1
