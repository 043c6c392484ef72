"""Requests no worker serves end in a rejection; the runs stream has limits and says so."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from stalwart import Client, PayloadTooLargeError, RunRejected, Settings, Supervisor
from stalwart.broker import Broker
from stalwart.broker._connect import connect
from stalwart.broker._names import Names
from stalwart.broker._setup import ensure_agent_consumer
from stalwart.checkpoints._store import REJECTED_ERROR
from stalwart.errors import QueueFullError
from stalwart.messages import EV_REJECTED, RunRequest, decode_event
from tests.helpers import eventually, rid

pytestmark = pytest.mark.slow


async def _subject_count(client: Client, subject: str) -> int:
    names = client.broker.names
    info = await client.broker.js.stream_info(names.runs_stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_unserved_requests_are_rejected_after_unserved_after(
    settings: Settings, servers
) -> None:
    settings = msgspec.structs.replace(settings, unserved_after=1.0)
    client = await Client.connect(settings=settings)
    sup = Supervisor(settings)
    task = asyncio.create_task(sup.run())
    try:
        names, js = client.broker.names, client.broker.js
        # A submitted run (accepted record) and a raw request (no record) for agents no
        # worker serves, a garbage message, and a request whose agent has a consumer.
        submitted = await client.submit("nobody", 1, require_registered=False)
        raw_id = rid()
        await client.broker.publish_request(RunRequest(run_id=raw_id, agent="ghost"), raw_id)
        await js.publish(names.runs_subject("garbage"), b"\xc1 not msgpack")
        await ensure_agent_consumer(js, names, settings, "served")
        await client.submit("served", 1, require_registered=False)
        rejections = await js.subscribe(names.rejected_subject("garbage"))

        with pytest.raises(RunRejected, match="no worker serves agent 'nobody'"):
            await submitted.result(timeout=15)
        with pytest.raises(RunRejected, match="no worker serves agent 'ghost'"):
            await client.handle(raw_id).result(timeout=15)
        last = await client.broker.last_event(submitted.run_id)
        assert last is not None and last.type == EV_REJECTED
        bad = decode_event((await rejections.next_msg(timeout=15)).data)
        assert bad.type == EV_REJECTED and "garbage" in bad.data["reason"]
        for agent in ("nobody", "ghost", "garbage"):
            assert await _subject_count(client, names.runs_subject(agent)) == 0
        # A request some consumer serves waits for its worker, however old.
        assert await _subject_count(client, names.runs_subject("served")) == 1
        assert sup.unserved_rejected == 3
    finally:
        sup.stop()
        await task
        await client.close()


async def test_full_runs_stream_refuses_new_requests_and_keeps_queued_ones(
    settings: Settings,
) -> None:
    settings = msgspec.structs.replace(settings, runs_max_msgs=3, request_max_bytes=4096)
    client = await Client.connect(settings=settings)
    try:
        queued = [await client.submit("later", i, require_registered=False) for i in range(3)]
        with pytest.raises(QueueFullError, match="runs stream is full") as info:
            await client.submit("later", 4, run_id="overflow", require_registered=False)
        # The refused run is over, with the reason; the queued ones are all still there.
        record = await client.handle("overflow").status()
        assert record.status == "failed" and record.error_type == REJECTED_ERROR
        assert str(info.value) in (record.error or "")
        last = await client.broker.last_event("overflow")
        assert last is not None and last.type == EV_REJECTED
        assert await _subject_count(client, client.broker.names.runs_subject("later")) == 3
        for handle in queued:
            assert (await handle.status()).status == "accepted"
        # Too large for request_max_bytes: refused before anything is stored.
        with pytest.raises(PayloadTooLargeError, match="request_max_bytes"):
            await client.submit("later", "x" * 5000, run_id="big", require_registered=False)
        assert await client.store.get_run("big") is None
        # A raw publish past the stream's max_msg_size is refused by the stream itself.
        names = client.broker.names
        with pytest.raises(Exception, match="message size exceeds"):
            await client.broker.js.publish(names.runs_subject("raw"), b"x" * 5000)
    finally:
        await client.close()


async def test_existing_streams_get_missing_limits_and_keep_chosen_ones(
    settings: Settings,
) -> None:
    names = Names(settings.namespace)
    assert settings.nats_url
    nc = await connect(settings.nats_url)
    js = nc.jetstream()
    try:
        # The runs stream as an older Stalwart created it: no limits, discard old. The
        # events stream with a limit an operator chose.
        await js.add_stream(
            StreamConfig(
                name=names.runs_stream,
                subjects=[names.runs_wildcard],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
            )
        )
        await js.add_stream(
            StreamConfig(
                name=names.events_stream,
                subjects=[names.events_wildcard, names.rejected_wildcard],
                storage=StorageType.FILE,
                max_msgs=777,
            )
        )
        upgraded = await Broker.connect(settings)  # must not fail
        await upgraded.close()
        runs = (await js.stream_info(names.runs_stream)).config
        assert runs.max_msgs == settings.runs_max_msgs
        assert runs.max_msg_size == settings.request_max_bytes
        assert runs.discard == DiscardPolicy.NEW
        assert (runs.max_bytes or -1) < 0  # not asked for: left unlimited
        events = (await js.stream_info(names.events_stream)).config
        assert events.max_msgs == 777  # chosen by someone: kept
    finally:
        await nc.close()


async def test_requests_of_every_consumer_are_served_past_one_listing_page(
    settings: Settings,
) -> None:
    # The server lists consumers 256 at a time: the 257th must count as a consumer too.
    settings = msgspec.structs.replace(settings, unserved_after=0.5)
    client = await Client.connect(settings=settings)
    sup = Supervisor(settings)
    await sup.start()
    try:
        names, js = client.broker.names, client.broker.js
        agents = [f"a{i}" for i in range(300)]
        for agent in agents:
            await ensure_agent_consumer(js, names, settings, agent)
            await client.broker.publish_request(RunRequest(run_id=rid(), agent=agent), rid())
        lost = rid()
        await client.broker.publish_request(RunRequest(run_id=lost, agent="nobody"), lost)

        async def swept() -> int:
            return await sup.reject_unserved()

        assert await eventually(swept, timeout=10) == 1
        info = await js.stream_info(names.runs_stream)
        assert info.state.messages == len(agents)
    finally:
        await sup.close()
        await client.close()
