"""Signal limits (size, name, pending count) and cheap wake-up pokes, with a real worker."""

from __future__ import annotations

import os

import msgspec
import pytest
import redis.asyncio as aioredis

from stalwart import Client, Settings
from stalwart.checkpoints import WaitStarted
from stalwart.errors import InvalidRequestError, SignalRefusedError
from tests.conftest import WorkerFactory
from tests.helpers import eventually, rid

pytestmark = pytest.mark.slow


async def _waiting(client: Client, run_id: str) -> bool:
    journal = await client.store.read_journal(run_id)
    return any(isinstance(je.entry, WaitStarted) for je in journal)


async def _signal_events(client: Client, run_id: str) -> int:
    events = [e async for e in client.handle(run_id).events(follow=False)]
    return sum(e.type == "signal.received" for e in events)


async def test_signals_over_a_limit_are_refused_before_anything_is_stored(
    settings: Settings, workers: WorkerFactory
) -> None:
    limited = msgspec.structs.replace(
        settings, signal_max_bytes=1000, signal_name_max=20, signal_max_pending=3
    )
    client = await Client.connect(settings=limited)
    try:
        run_id = rid()
        handle = await client.submit("approval", 5, run_id=run_id, require_registered=False)
        refused = [
            ("approve", "x" * 2000, "signal_max_bytes"),
            ("n" * 21, None, "signal_name_max"),
            ("n" * 5_000_000, None, "signal_name_max"),  # was a MaxPayloadError after storing
            ("", None, "non-empty"),
        ]
        for name, payload, why in refused:
            with pytest.raises(SignalRefusedError, match=why):
                await handle.signal(name, payload)
        assert await client.store.read_signals(run_id) == []
        assert await _signal_events(client, run_id) == 0

        for name in ("approve", "noise", "noise"):
            assert await handle.signal(name, "yes" if name == "approve" else 1) == "stored"
        with pytest.raises(SignalRefusedError, match="signal_max_pending=3"):
            await handle.signal("noise", 2)
        assert len(await client.store.read_signals(run_id)) == 3

        await workers()  # the run takes "approve"; consumed signals leave the inbox
        assert await handle.result(timeout=20) == {"quote": 5, "decision": "yes"}
        names = [name for _, name, _ in await client.store.read_signals(run_id)]
        assert names == ["noise", "noise"]
    finally:
        await client.close()


async def test_many_pokes_do_not_reread_the_inbox(
    client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await workers()
    run_id = rid()
    handle = await client.submit("approval", 7, run_id=run_id)
    await eventually(lambda: _waiting(client, run_id), timeout=20)

    async def sent_bytes() -> int:
        return int((await counters.info("stats"))["total_net_output_bytes"])

    # An 8 MB inbox of signals the run does not wait for.
    size, count = 200_000, 40
    before_fill = await sent_bytes()
    for _ in range(count):
        await handle.signal("noise", os.urandom(size))

    async def read_once() -> bool:  # the worker has read the new signals (once)
        return await sent_bytes() - before_fill >= size * count

    await eventually(read_once, timeout=20)
    before_pokes = await sent_bytes()
    nc, subject = client.broker.nc, client.broker.names.signals_subject(run_id)
    for _ in range(300):
        await nc.publish(subject, b"")
        await nc.flush()
    assert await handle.signal("approve", "ok") == "stored"
    assert await handle.result(timeout=20) == {"quote": 7, "decision": "ok"}
    # 300 pokes and the wake-up: a few short reads each, not 8 MB each.
    assert await sent_bytes() - before_pokes < 1_000_000


async def test_overlong_cancel_reason_is_refused_before_anything_is_stored(
    client: Client,
) -> None:
    handle = await client.submit("approval", 1, run_id=rid(), require_registered=False)
    with pytest.raises(InvalidRequestError, match="cancel_reason_max"):
        await handle.cancel("r" * 5_000_000)
    assert (await handle.status()).status == "accepted"
    assert await handle.cancel("changed my mind") == "cancelled"
