"""Every run's events (``Client.events``): stream order, ``seq``, agents, resuming, and the
events stored before the agent token (old subject layout), against real servers."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from msgspec.structs import replace as msgspec_replace

from stalwart import Client, ConfigurationError, RunEvent
from stalwart.broker import _all_events
from stalwart.messages import encode_event
from tests.conftest import WorkerFactory
from tests.helpers import collect_events, eventually, rid


def _terminal_of(events: list[RunEvent], run_id: str) -> bool:
    return any(e.run_id == run_id and e.type == "run.completed" for e in events)


async def _follow_until(client: Client, run_ids: set[str], **kw: object) -> list[RunEvent]:
    """``client.events(**kw)`` until every run of ``run_ids`` has completed."""
    seen: list[RunEvent] = []
    events = client.events(**kw)  # type: ignore[arg-type]
    async for event in events:
        seen.append(event)
        if all(_terminal_of(seen, r) for r in run_ids):
            break
    await events.aclose()  # type: ignore[attr-defined]
    return seen


async def test_every_runs_events_in_stream_order_with_seq_and_agent(
    client: Client, workers: WorkerFactory
) -> None:
    await workers()
    start = await anext(aiter(client.events(follow=False)), None)  # empty stream: none
    assert start is None
    # Followed from before the runs exist: both agents' events arrive live.
    fast_id, typed_id = rid(), rid()
    live = asyncio.create_task(_follow_until(client, {fast_id, typed_id}))
    fast = await client.submit("fast", 1, run_id=fast_id)
    typed = await client.submit("typed", {"sku": "a", "qty": 2}, run_id=typed_id)
    assert await fast.result(timeout=30) == 6
    assert (await typed.result(timeout=30))["total"] == 4
    followed = await asyncio.wait_for(live, 20)

    stored = await asyncio.wait_for(collect_events(client.events(follow=False)), 20)
    assert [e.seq for e in stored] == [e.seq for e in followed]
    seqs = [e.seq for e in stored]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] >= 1
    agents = {e.run_id: e.agent for e in stored}
    assert agents == {fast.run_id: "fast", typed.run_id: "typed"}
    assert {e.type for e in stored if e.run_id == fast.run_id} >= {
        "run.accepted",
        "run.started",
        "step.completed",
        "run.completed",
    }

    # One agent's filter, and resuming after a position.
    only_fast = await collect_events(client.events(agent="fast", follow=False))
    assert only_fast == [e for e in stored if e.agent == "fast"]
    middle = stored[len(stored) // 2].seq
    after = await collect_events(client.events(after=middle, follow=False))
    assert after == [e for e in stored if e.seq > middle]
    assert await collect_events(client.events(after=stored[-1].seq, follow=False)) == []

    # A run's own stream carries the same seq and agent.
    own = await collect_events(fast.events(follow=False))
    assert own == [e for e in stored if e.run_id == fast.run_id]
    followed_own = await asyncio.wait_for(collect_events(fast.events()), 20)
    assert followed_own == own

    with pytest.raises(ValueError, match="after"):
        client.events(after=-1)
    with pytest.raises(ConfigurationError, match="invalid agent name"):
        client.events(agent="a.>")


async def test_garbage_and_forged_seq_are_not_taken(client: Client) -> None:
    js, names = client.broker.js, client.broker.names
    run_id = rid()
    subject = names.events_subject(run_id, agent="fast")
    forged = RunEvent(type="run.started", run_id=run_id, at=time.time(), seq=10**9, agent="x")
    await js.publish(subject, b"\xff not an event")
    ack = await js.publish(subject, encode_event(forged))
    events = await collect_events(client.events(follow=False))
    assert [(e.seq, e.agent) for e in events] == [(ack.seq, "fast")]


async def test_events_stored_before_the_agent_token_are_still_read(client: Client) -> None:
    """A stream upgraded in place holds events on ``<ns>.events.<run_id>.<source>``: every
    reader still reads them, merged in stream order with the run's newer events."""
    js, names = client.broker.js, client.broker.names
    run_id = rid()
    old = f"{names.namespace}.events.{run_id}"

    def body(type: str) -> bytes:
        return json.dumps({"type": type, "run_id": run_id, "at": time.time()}).encode()

    acks = [
        await js.publish(f"{old}.client", body("run.accepted")),
        await js.publish(f"{old}.sys", body("run.started")),
        # After the upgrade: the same run's next event has the agent token.
        await js.publish(names.events_subject(run_id, agent="fast"), body("step.completed")),
        await js.publish(f"{old}.sys", body("run.completed")),  # a worker not yet upgraded
    ]
    want = [
        ("run.accepted", acks[0].seq, ""),
        ("run.started", acks[1].seq, ""),
        ("step.completed", acks[2].seq, "fast"),
        ("run.completed", acks[3].seq, ""),
    ]
    handle = client.handle(run_id)
    stored = await collect_events(handle.events(follow=False))
    assert [(e.type, e.seq, e.agent) for e in stored] == want
    followed = await asyncio.wait_for(collect_events(handle.events()), 20)
    assert [(e.type, e.seq, e.agent) for e in followed] == want
    last = await client.broker.last_event(run_id)
    assert last is not None and (last.type, last.seq) == ("run.completed", acks[3].seq)
    everything = await collect_events(client.events(follow=False))
    assert [(e.type, e.seq, e.agent) for e in everything] == want
    assert await collect_events(client.events(agent="fast", follow=False)) == [stored[2]]


async def test_a_slow_reader_gets_everything_in_batches_and_a_follower_is_woken(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches are asked for one at a time (what bounds a slow reader's memory: nothing is
    pushed at it, so nothing overflows and is dropped), and a follower hears of a new event
    from its wake-up subscription, not from the idle poll."""
    monkeypatch.setattr(_all_events, "BATCH", 50)
    monkeypatch.setattr(_all_events, "_IDLE_POLL", 60.0)  # only a wake-up can be in time
    nc, names = client.broker.nc, client.broker.names
    body = RunEvent(type="step.completed", run_id="r1", at=1.0, data={"x": "y" * 500})
    for _ in range(1200):
        await nc.publish(names.events_subject("r1", agent="a"), encode_event(body))
    await nc.flush()

    async def stored() -> bool:
        return len(await collect_events(client.events(follow=False))) == 1200

    await eventually(stored, timeout=20)
    got: list[int] = []
    follower = client.events(agent="a")
    async for event in follower:
        got.append(event.seq)
        if len(got) % 100 == 0:
            await asyncio.sleep(0.01)  # a slow reader
        if len(got) == 1200:
            break
    assert got == list(range(got[0], got[0] + 1200))
    late = asyncio.create_task(anext(follower))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)  # the follower is waiting now
    ack = await client.broker.js.publish(
        names.events_subject("r2", agent="a"), encode_event(msgspec_replace(body, run_id="r2"))
    )
    event = await asyncio.wait_for(late, 10)
    assert (event.run_id, event.seq) == ("r2", ack.seq)
    await follower.aclose()  # type: ignore[attr-defined]
