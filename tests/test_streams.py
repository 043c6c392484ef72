"""Attempt-aware streams (issue #17): real workers, real SIGKILL/SIGSTOP, real servers.

A consumer of ``handle.stream()`` that applies every part to a ``StreamText`` must end with the
run's output exactly once, whatever happened to the attempts that streamed it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from stalwart import Chunk, Reset, StepDone, StreamEnd, StreamText
from stalwart.messages import EV_STEP_RESET
from tests.conftest import worker_pool
from tests.helpers import (
    eventually,
    execs,
    gated_key,
    mark_gated,
    open_gate,
    outcome,
    rid,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio as aioredis

    from stalwart import Client, RunHandle, Settings, StreamPart
    from tests.conftest import Servers, WorkerFactory

pytestmark = pytest.mark.slow


@pytest.fixture
async def stream_workers(
    settings: Settings, servers: Servers, client: Client
) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving ``tests.stream_apps:app``."""
    async with worker_pool("tests.stream_apps:app", settings, servers, client) as start:
        yield start


def text_of(name: str, chunks: int = 6) -> str:
    return "".join(f"{name}-{i} " for i in range(chunks))


async def consume(handle: RunHandle, parts: list[StreamPart]) -> None:
    async for part in handle.stream():
        parts.append(part)


def chunks(parts: list[StreamPart], step: str) -> list[Chunk]:
    return [p for p in parts if isinstance(p, Chunk) and p.step == step]


def rendered(parts: list[StreamPart]) -> StreamText:
    view = StreamText()
    for part in parts:
        view.apply(part)
    return view


async def stored_chunk(handle: RunHandle, worker: str, text: str) -> bool:
    """Whether the run's event stream holds a chunk with ``text`` from ``worker``."""
    async for ev in handle.events(follow=False):
        if ev.attempt and ev.worker == worker and (ev.data or {}).get("text") == text:
            return True
    return False


async def test_sigkill_mid_stream_resets_the_step_and_shows_the_text_once(
    client: Client, stream_workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await stream_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "step:model1")
    handle = await client.submit("streamer", {"steps": 2}, run_id=run_id)
    parts: list[StreamPart] = []
    consumer = asyncio.create_task(consume(handle, parts))

    async def mid_stream() -> bool:
        return len(chunks(parts, "step:model1")) == 3  # chunks 0..2, then the gate

    await eventually(mid_stream, timeout=30)
    a.kill()
    await counters.delete(gated_key(run_id, "step:model1"))
    b = await stream_workers("b")
    result = await outcome(handle, a, b)
    await asyncio.wait_for(consumer, 30)

    assert result == text_of("model0") + text_of("model1")
    assert rendered(parts).text == result  # exactly once
    resets = [p for p in parts if isinstance(p, Reset)]
    assert [(r.step, r.reason, r.attempt) for r in resets] == [("step:model1", "failover", 1)]
    at = parts.index(resets[0])
    before, after = chunks(parts[:at], "step:model1"), chunks(parts[at:], "step:model1")
    assert [c.worker for c in before] == ["a"] * 3
    assert [c.data["text"] for c in after] == [f"model1-{i} " for i in range(6)]
    assert {c.worker for c in after} == {"b"} and after[0].epoch > before[0].epoch
    done = [(p.step, p.streamed, p.result) for p in parts if isinstance(p, StepDone)]
    assert done == [
        ("step:model0", True, text_of("model0")),
        ("step:model1", True, text_of("model1")),
    ]
    assert parts[-1] == StreamEnd("completed", result)
    assert await execs(counters, run_id, "step:model1") == 2


async def test_a_retried_attempt_is_reset_with_reason_retry(
    client: Client, stream_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await stream_workers("a")
    handle = await client.submit("streamer", {"steps": 2, "fail_once": "model1"}, run_id=rid())
    parts = [p async for p in handle.stream()]
    result = await handle.result(timeout=10)

    assert rendered(parts).text == result == text_of("model0") + text_of("model1")
    resets = [p for p in parts if isinstance(p, Reset)]
    assert [(r.step, r.reason, r.attempt) for r in resets] == [("step:model1", "retry", 2)]
    at = parts.index(resets[0])
    assert [c.attempt for c in chunks(parts[:at], "step:model1")] == [1, 1, 1]
    assert [c.attempt for c in chunks(parts[at:], "step:model1")] == [2] * 6
    # The worker published the reset as an event of its own, with the new attempt.
    events = [ev async for ev in handle.events(follow=False)]
    reset_events = [ev for ev in events if ev.type == EV_STEP_RESET]
    assert [(ev.step, ev.attempt, ev.data) for ev in reset_events] == [
        ("step:model1", 2, {"attempt": 2, "reason": "retry"})
    ]


async def test_late_attach_gets_completed_steps_from_the_journal_and_live_chunks(
    client: Client, stream_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await stream_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "step:model2")
    handle = await client.submit("streamer", {"steps": 3}, run_id=run_id)
    await eventually(lambda: stored_chunk(handle, "a", "model2-2 "), timeout=30)

    parts: list[StreamPart] = []
    consumer = asyncio.create_task(consume(handle, parts))

    async def caught_up() -> bool:
        return len(chunks(parts, "step:model2")) == 3

    await eventually(caught_up)
    assert [(p.step, p.streamed, p.result) for p in parts if isinstance(p, StepDone)] == [
        ("step:model0", False, text_of("model0")),
        ("step:model1", False, text_of("model1")),
    ]
    await open_gate(counters, run_id, "step:model2")
    result = await handle.result(timeout=10)
    await asyncio.wait_for(consumer, 10)

    assert not chunks(parts, "step:model0") and not chunks(parts, "step:model1")
    assert rendered(parts).text == text_of("model2") and result.endswith(text_of("model2"))
    assert parts[-2] == StepDone("step:model2", "step", "model2", True, text_of("model2"))
    assert parts[-1] == StreamEnd("completed", result)
    # Attaching after the end: the journal alone, nothing streamed.
    again = [p async for p in handle.stream()]
    assert [type(p) for p in again] == [StepDone] * 3 + [StreamEnd]
    assert not any(p.streamed for p in again if isinstance(p, StepDone))


async def test_a_frozen_old_owners_late_chunks_never_reach_the_consumer(
    client: Client, stream_workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await stream_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "step:model0", "step:model1")
    handle = await client.submit("streamer", {"steps": 2}, run_id=run_id)
    parts: list[StreamPart] = []
    consumer = asyncio.create_task(consume(handle, parts))

    async def mid_stream() -> bool:
        return len(chunks(parts, "step:model0")) == 3

    await eventually(mid_stream, timeout=30)
    a.pause()  # frozen in the middle of model0's stream: its lease runs out
    try:
        await counters.delete(gated_key(run_id, "step:model0"))
        b = await stream_workers("b")
        # B redoes model0 (reset, all six chunks, journaled) and holds inside model1.
        await eventually(lambda: execs(counters, run_id, "step:model1"), timeout=30)
        await open_gate(counters, run_id, "step:model0")  # A's pending gate
    finally:
        a.resume()
    # A wakes up a zombie: fenced from the journal, but its chunks reach the event stream.
    await eventually(lambda: stored_chunk(handle, "a", "model0-3 "), timeout=30)
    await counters.delete(gated_key(run_id, "step:model1"))
    await open_gate(counters, run_id, "step:model1")
    result = await outcome(handle, a, b)
    await asyncio.wait_for(consumer, 30)

    assert rendered(parts).text == result == text_of("model0") + text_of("model1")
    resets = [p for p in parts if isinstance(p, Reset)]
    assert [(r.step, r.reason) for r in resets] == [("step:model0", "failover")]
    at = parts.index(resets[0])
    assert [c.worker for c in chunks(parts[:at], "step:model0")] == ["a"] * 3
    assert {c.worker for c in chunks(parts[at:], "step:model0")} == {"b"}
    assert {c.worker for c in parts[at:] if isinstance(c, Chunk)} == {"b"}
