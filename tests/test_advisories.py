"""Forged max-deliveries advisories: a real supervisor checks them and deletes nothing."""

from __future__ import annotations

import json
import uuid

import pytest

from stalwart import Client, Supervisor
from stalwart.broker._setup import ensure_agent_consumer
from tests.helpers import eventually

pytestmark = pytest.mark.slow


async def _seq_of(client: Client, stream: str, subject: str) -> int:
    msg = await client.broker.js.get_msg(stream, subject=subject)
    assert msg.seq is not None
    return msg.seq


async def test_forged_advisories_are_ignored(client: Client, supervisor: Supervisor) -> None:
    broker, names = client.broker, client.broker.names
    js = broker.js
    # Two queued runs whose agents have a consumer but no worker; one was delivered once.
    other = await client.submit("ghost2", 1, run_id=uuid.uuid4().hex, require_registered=False)
    queued = await client.submit("ghost", 1, run_id=uuid.uuid4().hex, require_registered=False)
    for agent in ("ghost", "ghost2"):
        await ensure_agent_consumer(js, names, client.settings, agent)
    other_seq = await _seq_of(client, names.runs_stream, names.runs_subject("ghost2"))
    queued_seq = await _seq_of(client, names.runs_stream, names.runs_subject("ghost"))
    event_seq = await _seq_of(client, names.events_stream, names.run_events(queued.run_id))
    sub = await js.pull_subscribe_bind(names.consumer("ghost"), stream=names.runs_stream)
    [delivered] = await sub.fetch(1, timeout=5)
    await delivered.nak(delay=60)  # delivered once; the consumer's delivered seq passes it

    subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{names.runs_stream}.agent_ghost"

    async def forge(body: object) -> None:
        await broker.nc.publish(subject, json.dumps(body).encode())

    # The supervisor subscribes once it leads: probe until it has seen one.
    await eventually(
        lambda: _probe(forge, supervisor), timeout=15, message="supervisor never saw advisories"
    )
    base = supervisor.advisories_ignored
    never_delivered = await client.submit("ghost", 2, require_registered=False)
    never_seq = await _seq_of(client, names.runs_stream, names.runs_subject("ghost"))
    ok = {"stream": names.runs_stream, "consumer": "agent_ghost", "deliveries": 20}
    forged = [
        {**ok, "stream": names.events_stream, "stream_seq": event_seq},  # events stream
        {**ok, "stream": "OTHER_STREAM", "stream_seq": queued_seq},  # foreign stream
        {**ok, "consumer": "agent_nobody", "stream_seq": queued_seq},  # no such consumer
        {**ok, "consumer": "someone_else", "stream_seq": queued_seq},  # not our pattern
        {**ok, "consumer": "agent_ghost2", "stream_seq": queued_seq},  # other agent's
        {**ok, "stream_seq": other_seq},  # ghost2's request under ghost's consumer
        {**ok, "stream_seq": never_seq},  # queued, never delivered
        {**ok, "stream_seq": 99999},  # no such message
        {**ok, "stream_seq": queued_seq, "deliveries": 1},  # below max_deliver
        {**ok, "stream_seq": "1"},  # wrong types
        ["not", "an", "object"],
    ]
    for body in forged:
        await forge(body)
    await eventually(
        lambda: _at_least(supervisor, base + len(forged)),
        message=lambda: f"ignored {supervisor.advisories_ignored - base} of {len(forged)}",
    )
    assert supervisor.dead_lettered == 0
    # Nothing was deleted and no run was failed.
    await js.get_msg(names.events_stream, event_seq)
    for seq in (other_seq, queued_seq, never_seq):
        await js.get_msg(names.runs_stream, seq)
    for handle in (other, queued, never_delivered):
        assert (await handle.status()).status == "accepted"


async def _probe(forge, supervisor: Supervisor) -> bool:  # type: ignore[no-untyped-def]
    await forge({"probe": True})
    return await _at_least(supervisor, 1)


async def _at_least(supervisor: Supervisor, n: int) -> bool:
    return supervisor.advisories_ignored >= n
