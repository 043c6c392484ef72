"""Attempt-aware streams (issue #17): real workers, real SIGKILL/SIGSTOP, real servers.

A consumer of ``handle.stream()`` that applies every part to a ``StreamText`` must end with the
run's output exactly once, whatever happened to the attempts that streamed it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import msgspec
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
    from pathlib import Path

    import redis.asyncio as aioredis

    from stalwart import Client, RunHandle, Settings, StreamPart
    from stalwart.testing import StalwartProcess
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


async def attached(counters: aioredis.Redis, run_id: str, parts: list[StreamPart]) -> None:
    """Wait until the consumer filling ``parts`` has model0's first chunks (the step holds on
    its gate, so they reach it live or from the stream's store), then let model0 go on: the
    consumer is attached before any step completes, however slow the machine."""

    async def held() -> bool:
        return len(chunks(parts, "step:model0")) == 3

    await eventually(held, timeout=60)
    await open_gate(counters, run_id, "step:model0")


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


async def zombie_chunk(client: Client, handle: RunHandle, a: StalwartProcess) -> bool:
    """Whether frozen worker ``a``'s late chunk ``model0-3`` is in the run's event stream.

    On waking, ``a`` races its gate poll (a Redis read, then the chunk) against its lease
    renewal (refused: the run is cancelled). On a loaded machine the renewal can win, and
    the zombie never streams its late chunk; then the chunk it would have published (its
    worker, epoch and attempt, after the new owner's reset) is published here instead, so
    the consumer's filter is tested either way.
    """
    if await stored_chunk(handle, "a", "model0-3 "):
        return True
    if "lease.lost" not in a.log_text():
        return False
    async for ev in handle.events(follow=False):
        if ev.worker == "a" and ev.attempt and ev.step == "step:model0":
            late = msgspec.structs.replace(
                ev, at=time.time(), data={"text": "model0-3 ", "type": "text"}, seq=0
            )
            await client.broker.events.publish(late, acked=True)
            return False  # stored now: the next poll finds it
    return False


async def test_sigkill_mid_stream_resets_the_step_and_shows_the_text_once(
    client: Client, stream_workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await stream_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "step:model0", "step:model1")
    handle = await client.submit("streamer", {"steps": 2}, run_id=run_id)
    parts: list[StreamPart] = []
    consumer = asyncio.create_task(consume(handle, parts))
    await attached(counters, run_id, parts)

    async def mid_stream() -> bool:
        return len(chunks(parts, "step:model1")) == 3  # chunks 0..2, then the gate

    await eventually(mid_stream, timeout=60)
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
    run_id = rid()
    await mark_gated(counters, run_id, "step:model0")
    handle = await client.submit("streamer", {"steps": 2, "fail_once": "model1"}, run_id=run_id)
    parts: list[StreamPart] = []
    consumer = asyncio.create_task(consume(handle, parts))
    await attached(counters, run_id, parts)
    await asyncio.wait_for(consumer, 60)
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
    await eventually(lambda: stored_chunk(handle, "a", "model2-2 "), timeout=60)

    parts: list[StreamPart] = []
    consumer = asyncio.create_task(consume(handle, parts))

    async def caught_up() -> bool:
        return len(chunks(parts, "step:model2")) == 3

    await eventually(caught_up, timeout=60)
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

    await eventually(mid_stream, timeout=60)
    a.pause()  # frozen in the middle of model0's stream: its lease runs out
    try:
        await counters.delete(gated_key(run_id, "step:model0"))
        b = await stream_workers("b")
        # B redoes model0 (reset, all six chunks, journaled) and holds inside model1.
        await eventually(lambda: execs(counters, run_id, "step:model1"), timeout=60)
        await open_gate(counters, run_id, "step:model0")  # A's pending gate
    finally:
        a.resume()
    # A wakes up a zombie: fenced from the journal, but its chunks reach the event stream.
    await eventually(lambda: zombie_chunk(client, handle, a), timeout=60)
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


async def attached_after(client: Client, consumers: int) -> bool:
    """Whether a new consumer of the events stream exists (a stream reader attached)."""
    js, stream = client.broker.js, client.broker.names.events_stream
    return (await js.stream_info(stream)).state.consumer_count > consumers


async def consumer_count(client: Client) -> int:
    js, stream = client.broker.js, client.broker.names.events_stream
    return (await js.stream_info(stream)).state.consumer_count


@pytest.mark.parametrize("output", ["text", "jsonl"])
async def test_the_stream_command_prints_the_text_and_marks_the_reset(
    client: Client,
    settings: Settings,
    stream_workers: WorkerFactory,
    counters: aioredis.Redis,
    tmp_path: Path,
    output: str,
) -> None:
    from tests.test_cli import _env, run_cli

    await stream_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "step:model1")
    handle = await client.submit("streamer", {"steps": 2, "fail_once": "model1"}, run_id=run_id)
    assert settings.nats_url and settings.redis_url
    consumers = await consumer_count(client)
    urls = ["--nats-url", settings.nats_url, "--redis-url", settings.redis_url]
    args = ["stream", run_id, "-o", output, *urls, "--namespace", settings.namespace]
    cli = asyncio.create_task(run_cli(*args, env=_env(tmp_path)))
    await eventually(lambda: attached_after(client, consumers), timeout=60)
    await counters.delete(gated_key(run_id, "step:model1"))  # attempt 2 goes through
    await open_gate(counters, run_id, "step:model1")  # attempt 1 then fails
    res = await cli
    result = await handle.result(timeout=10)

    assert res.code == 0, res
    if output == "jsonl":
        parts = [json.loads(line) for line in res.out.splitlines()]
        assert [p["part"] for p in parts].count("reset") == 1
        assert parts[-1] == {"part": "end", "status": "completed", "result": result, "error": ""}
        return
    # model0 had completed before the command attached: journaled, not streamed to it.
    first = "".join(f"model1-{i} " for i in range(3))
    assert res.out == (
        f"{first}\n"
        "--- reset step:model1 (attempt 2, retry): its text starts over ---\n"
        f"{text_of('model1')}\n"
    ), res


async def test_a_runner_streams_parts_of_a_new_run_and_of_an_existing_one(
    client: Client, stream_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    from stalwart import App
    from tests.stream_apps import StreamRunner

    await stream_workers("a")
    # Registered into an app of its own here; the workers serve tests.stream_apps' runner.
    runner = StreamRunner("stream_runner", app=App("local"), client=client)
    run_id = rid()
    await mark_gated(counters, run_id, "step:model0")
    parts: list[StreamPart] = []

    async def consume_runner() -> None:
        async for part in runner.stream_parts({"steps": 2}, run_id=run_id, chunks=3):
            parts.append(part)

    consumer = asyncio.create_task(consume_runner())
    await attached(counters, run_id, parts)
    await asyncio.wait_for(consumer, 60)
    expected = text_of("model0", 3) + text_of("model1", 3)
    assert rendered(parts).text == expected
    assert parts[-1] == StreamEnd("completed", expected)
    again = [p async for p in runner.stream_handle(run_id)]
    assert again[-1] == StreamEnd("completed", expected) and len(again) == 3
