"""Hostile and broken run requests and events, against real servers and worker processes.

Every bad input gets a bounded, specific outcome: a rejection with a reason, a failed run
with a clear error, never a crashed placement, a run that loops for ever, or a reader that
dies on a message it cannot decode.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from stalwart import (
    Client,
    InvalidRequestError,
    RunCancelled,
    RunEvent,
    RunFailed,
    RunRejected,
    Settings,
    Supervisor,
    UnknownAgentError,
)
from stalwart._text import ERROR_TEXT_LIMIT
from stalwart.checkpoints import Finished, Started, WaitStarted, encode_value
from stalwart.messages import RunRequest, encode_request, read_event
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import eventually, exec_key, gate_key, rid

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def workers(settings: Settings, servers: Servers, client: Client) -> AsyncIterator[Any]:
    """Worker processes serving ``tests.hostile_apps:app``."""
    async with worker_pool("tests.hostile_apps:app", settings, servers, client) as start:
        yield start


def deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


async def collect(client: Client, run_id: str, *, follow: bool = True) -> list[RunEvent]:
    return [ev async for ev in client.handle(run_id).events(follow=follow)]


async def rejections(client: Client, agent: str) -> list[RunEvent]:
    """Every event on ``agent``'s rejected subject (rejections that concern no run's end)."""
    js, names = client.broker.js, client.broker.names
    subject = names.rejected_subject(agent)
    out: list[RunEvent] = []
    cursor = 1
    while True:
        try:
            msg = await js.get_msg(names.events_stream, seq=cursor, subject=subject, next=True)
        except Exception:
            return out
        event = read_event(msg.data)
        if event is not None:
            out.append(event)
        cursor = int(msg.seq or 0) + 1


async def status_is(client: Client, run_id: str, status: str) -> bool:
    record = await client.store.get_run(run_id)
    return record is not None and record.status == status


async def waiting_live(client: Client, run_id: str) -> bool:
    """The run journaled the start of a wait and is still held by its worker."""
    entries = await client.store.read_journal(run_id)
    record = await client.store.get_run(run_id)
    started = any(isinstance(je.entry, WaitStarted) for je in entries)
    return started and record is not None and record.status == "running"


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """Run ``python -m stalwart ARGS`` against the test servers: (exit code, stdout, stderr)."""
    assert settings.nats_url and settings.redis_url
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stalwart",
        *args,
        "--nats-url",
        settings.nats_url,
        "--redis-url",
        settings.redis_url,
        "--namespace",
        settings.namespace,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


def raw_request(run_id: str, agent: str, input_msgpack: bytes) -> bytes:
    """A msgpack run request whose input is given already encoded (any nesting)."""
    enc = msgspec.msgpack.encode
    return (
        b"\x83"
        + enc("run_id")
        + enc(run_id)
        + enc("agent")
        + enc(agent)
        + enc("input")
        + (input_msgpack)
    )


# -- 3: nesting ---------------------------------------------------------------------------------


async def test_deeply_nested_input_is_refused_by_client_and_cli_and_rejected_by_workers(
    client: Client, workers: WorkerFactory, settings: Settings
) -> None:
    worker = await workers()
    limit = settings.max_nesting
    for n in (limit + 1, 1000, 5000):
        run_id = rid()
        with pytest.raises(InvalidRequestError, match="nested"):
            await client.submit("echo", deep(n), run_id=run_id)
        assert await client.store.get_run(run_id) is None
    fine = await client.submit("echo", deep(limit))
    assert await fine.result(timeout=20) == deep(limit)
    with pytest.raises(InvalidRequestError, match="nested"):
        await fine.signal("x", deep(1000))

    # Published by hand, past the client: each is the run's own submission, so the
    # rejection ends the run, with the reason.
    for n, why in ((1000, "nested too deeply"), (limit + 1, "max_nesting")):
        run_id = rid()
        await client.store.create_run(run_id, "echo", encode_value(None))
        data = raw_request(run_id, "echo", b"\x91" * n + b"\x01")
        await client.broker.js.publish(
            client.broker.names.runs_subject("echo"), data, headers={"Nats-Msg-Id": run_id}
        )
        with pytest.raises(RunRejected, match=why):
            await client.handle(run_id).result(timeout=20)
        record = await client.store.get_run(run_id)
        assert record is not None and record.status == "failed"
        assert int(await client.store.redis.get(exec_key(run_id, "step:count")) or 0) == 0
    assert "place.crashed" not in worker.log_text()

    code, _out, err = await cli(settings, "submit", "echo", "[" * 1000 + "]" * 1000)
    assert code == 2 and "InvalidRequestError" in err and "Traceback" not in err, err
    code, _out, err = await cli(settings, "submit", "echo", "[" * (limit + 1) + "]" * (limit + 1))
    assert code == 2 and "max_nesting" in err and "Traceback" not in err, err


# -- 4: a rejection is not another run's end ------------------------------------------------------


async def test_a_malformed_request_naming_a_live_run_does_not_end_it(
    client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await workers()
    run_id = rid()
    # Started by hand, so that the run's own message id (the bare run id) is still free.
    await client.store.create_run(run_id, "gated", encode_value("v"))
    await client.broker.publish_request(
        RunRequest(run_id=run_id, agent="gated", input="v"), msg_id=f"{run_id}:h"
    )
    await eventually(lambda: status_is(client, run_id, "running"))
    follow = asyncio.create_task(collect(client, run_id))
    waiting = asyncio.create_task(client.handle(run_id).result(timeout=30))

    js, names = client.broker.js, client.broker.names
    subject = names.runs_subject("gated")
    await js.publish(subject, b"\xc1 garbage", headers={"Nats-Msg-Id": run_id})
    await js.publish(subject, b"\xc1 garbage", headers={"Nats-Msg-Id": f"{run_id}:junk"})
    other = encode_request(RunRequest(run_id=run_id, agent="echo"))
    await js.publish(subject, other, headers={"Nats-Msg-Id": f"{run_id}:agent"})
    # A forged rejection on the run's own subject: readers check the record.
    await client.broker.events.publish(
        RunEvent(type="request.rejected", run_id=run_id, at=time.time(), data={"reason": "x"}),
        acked=True,
    )

    async def three_refused() -> bool:
        return len([e for e in await rejections(client, "gated") if e.run_id == run_id]) >= 3

    # A refused submit that reuses the live run's id is not announced on its subject either.
    with pytest.raises(UnknownAgentError):
        await client.submit("nosuch", 1, run_id=run_id)
    await eventually(three_refused, message="the three requests were not rejected")
    await asyncio.sleep(0.3)  # give a wrongly ending reader the time to end
    assert not waiting.done() and not follow.done()
    assert await status_is(client, run_id, "running")

    await counters.rpush(gate_key(run_id, "go"), "1")
    assert await waiting == "v"
    events = await asyncio.wait_for(follow, 20)
    assert events[-1].type == "run.completed"
    assert [e.type for e in events].count("request.rejected") == 1  # only the forged one


# -- 5: a run is only ever placed by its own agent -------------------------------------------------


async def test_a_request_never_runs_another_agents_run(
    client: Client, workers: WorkerFactory
) -> None:
    await workers()
    ghost = rid()
    await client.store.create_run(ghost, "ghost", encode_value("boo"))
    await client.broker.publish_request(
        RunRequest(run_id=ghost, agent="echo", input="boo"), msg_id=ghost
    )
    await client.broker.publish_request(
        RunRequest(run_id=ghost, agent="echo", kind="resume", epoch=3),
        msg_id=f"{ghost}:resume:3",
    )
    nobody, odd = rid(), rid()
    await client.broker.publish_request(
        RunRequest(run_id=nobody, agent="echo", kind="resume", epoch=1),
        msg_id=f"{nobody}:resume:1",
    )
    await client.broker.publish_request(RunRequest(run_id=odd, agent="echo", epoch=7), msg_id=odd)

    async def ghost_refused() -> bool:
        return len([e for e in await rejections(client, "echo") if e.run_id == ghost]) >= 2

    await eventually(ghost_refused, message="the requests for ghost's run were not refused")
    refusals = [e for e in await rejections(client, "echo") if e.run_id == ghost]
    assert all("belongs to agent 'ghost'" in e.data["reason"] for e in refusals)
    with pytest.raises(RunRejected, match="does not exist"):
        await client.handle(nobody).result(timeout=20)
    with pytest.raises(RunRejected, match="no epoch"):
        await client.handle(odd).result(timeout=20)

    record = await client.store.get_run(ghost)
    assert record is not None and (record.agent, record.status) == ("ghost", "accepted")
    assert await client.store.read_journal(ghost) == []
    assert await client.store.redis.get(exec_key(ghost, "step:count")) is None
    assert await client.store.get_run(nobody) is None and await client.store.get_run(odd) is None
    assert await (await client.submit("echo", 5)).result(timeout=20) == 5


# -- 6: garbage on a run's event subject -----------------------------------------------------------


async def test_garbage_on_the_event_subject_is_skipped_by_every_reader(
    client: Client, workers: WorkerFactory, settings: Settings
) -> None:
    await workers(STALWART_PASSIVATE_AFTER="1")
    handle = await client.submit("waiter", None)
    run_id = handle.run_id
    await eventually(lambda: status_is(client, run_id, "waiting"), timeout=20)
    subject = client.broker.names.events_subject(run_id, agent="waiter")
    bad_types = json.dumps({"type": "run.completed", "run_id": run_id, "at": "x"}).encode()
    for payload in (b"\xff\x00 not json", b'{"type": 5}', b"[]", bad_types):
        await client.broker.js.publish(subject, payload, headers={"Stalwart-Jseq": "abc"})

    stored = await collect(client, run_id, follow=False)  # garbage is the newest message
    assert [e.type for e in stored][:2] == ["run.accepted", "run.started"]
    follow = asyncio.create_task(collect(client, run_id))
    waiting = asyncio.create_task(handle.result(timeout=30))
    # The cancel wakes the passivated run; its placement reads the garbage's Stalwart-Jseq.
    assert await handle.cancel("stop it") == "requested"
    with pytest.raises(RunCancelled, match="stop it"):
        await waiting
    events = await asyncio.wait_for(follow, 20)
    assert events[-1].type == "run.cancelled"
    assert all(isinstance(e, RunEvent) and e.run_id == run_id for e in events)

    for args in (("events", run_id), ("events", run_id, "--follow")):
        code, out, err = await cli(settings, *args)
        assert code == 0 and "Traceback" not in err, err
        printed = [json.loads(line) for line in out.splitlines()]
        assert printed[-1]["type"] == "run.cancelled"

    # Garbage in the heartbeat bucket is not a worker, and does not hide the real ones.
    junk = client.broker.names.worker_subject("junk")
    await client.broker.js.publish(junk, b"\xff not a heartbeat")
    assert len(await client.broker.workers()) == 1


# -- 7: huge texts ---------------------------------------------------------------------------------


async def test_huge_texts_are_cut_in_events_and_every_terminal_event_is_published(
    client: Client, workers: WorkerFactory, settings: Settings
) -> None:
    await workers()
    limit = settings.event_text_limit
    payload = client.broker.nc.max_payload

    async def finished(agent: str, value: Any) -> tuple[RunEvent, list[RunEvent], str]:
        run_id = rid()
        follow = asyncio.create_task(collect(client, run_id))
        handle = await client.submit(agent, value, run_id=run_id)
        with pytest.raises(RunFailed) as info:
            await handle.result(timeout=20)
        events = await asyncio.wait_for(follow, 20)
        return events[-1], events, info.value.message

    for size in (limit - 1, limit, limit + 1, payload - 100, payload + 10, 2 * payload):
        last, _, message = await finished("shouty", size)
        assert last.type == "run.failed"
        shown = last.data["error"]["message"]
        assert len(shown) <= limit
        if size <= limit:
            assert shown == "e" * size
        else:
            assert shown.startswith("e" * 100) and "more characters" in shown
        assert len(message) == min(size, ERROR_TEXT_LIMIT)  # the record keeps the full text

    # A cancel reason far over the payload limit, for a placed and a never-placed run: the
    # client refuses it by default (cancel_reason_max); a sender configured otherwise gets
    # it stored, and the event must still be publishable.
    with pytest.raises(InvalidRequestError, match="cancel_reason_max"):
        await client.handle(rid()).cancel("r" * (2 * payload))
    lax = msgspec.structs.replace(client.settings, cancel_reason_max=10 * payload)
    lax_client = Client(client.broker, client.store, lax)
    waiter = await client.submit("waiter", None)
    await eventually(lambda: status_is(client, waiter.run_id, "running"))
    never = await client.submit("nobody_serves_this", None, require_registered=False)
    for handle in (waiter, never):
        follow = asyncio.create_task(collect(client, handle.run_id))
        await lax_client.handle(handle.run_id).cancel("r" * (2 * payload))
        with pytest.raises(RunCancelled):
            await handle.result(timeout=20)
        events = await asyncio.wait_for(follow, 20)
        assert events[-1].type == "run.cancelled"
        assert len(events[-1].data["error"]["message"]) <= limit

    # Step names (so keys) around and far over the limits.
    for size in (limit - 5, limit + 1, payload + 10):
        run_id = rid()
        follow = asyncio.create_task(collect(client, run_id))
        assert await (await client.submit("long_step", size, run_id=run_id)).result(20) == size
        events = await asyncio.wait_for(follow, 20)
        steps = [e.step for e in events if e.type == "step.completed"]
        assert len(steps) == 1 and len(steps[0]) <= limit
        assert events[-1].type == "run.completed"

    # Results around the size that travels in the completed event, and one that grows in JSON.
    for value in ("x" * (64 * 1024 - 10), "x" * (64 * 1024 + 10), "\x01" * (60 * 1024)):
        run_id = rid()
        follow = asyncio.create_task(collect(client, run_id))
        assert await (await client.submit("echo", value, run_id=run_id)).result(20) == value
        events = await asyncio.wait_for(follow, 20)
        assert events[-1].type == "run.completed"
        assert events[-1].data.get("result", value) == value


# -- 8: exceptions that cannot be rendered; runs that crash their actor ---------------------------


async def test_a_cancel_whose_poke_is_lost_still_ends_a_live_wait(
    client: Client, workers: WorkerFactory
) -> None:
    """A cancel's poke is a core NATS message: it reaches no one when it lands between the
    wait's journal entry and its subscription, and it can be dropped. The stored cancel must
    still end a live wait within one inbox recheck, not at passivation (60 s later)."""
    await workers()
    handle = await client.submit("waiter", None)
    await eventually(lambda: waiting_live(client, handle.run_id))
    # The store's cancel alone: the flag is stored, no poke is sent.
    outcome, wake = await client.store.cancel_run(handle.run_id, "poke lost")
    assert (outcome, wake) == ("requested", None)
    with pytest.raises(RunCancelled, match="poke lost"):
        await handle.result(timeout=20)


async def test_an_exception_whose_str_repr_and_name_raise_fails_the_run_cleanly(
    client: Client, workers: WorkerFactory
) -> None:
    await workers()
    for where in ("agent", "step", "retried"):
        handle = await client.submit("unprintable", where)
        with pytest.raises(RunFailed) as info:
            await handle.result(timeout=20)
        assert info.value.error_type in ("Unprintable", "StepFailed"), info.value
        assert "Unprintable" in str(info.value) and "unprintable" in str(info.value)
        journal = await client.store.read_journal(handle.run_id)
        assert sum(isinstance(je.entry, Started) for je in journal) == 1  # never re-placed
        assert isinstance(journal[-1].entry, Finished)


async def test_a_run_that_crashes_its_actor_on_every_placement_fails_after_max_placements(
    client: Client, workers: WorkerFactory, supervisor: Supervisor, counters: aioredis.Redis
) -> None:
    await workers(STALWART_MAX_PLACEMENTS="3")
    follow_id = rid()
    follow = asyncio.create_task(collect(client, follow_id))
    handle = await client.submit("poison", None, run_id=follow_id)
    with pytest.raises(RunFailed) as info:
        await handle.result(timeout=40)
    assert info.value.error_type == "PlacementLimitExceeded"
    assert "max_placements=3" in info.value.message
    journal = await client.store.read_journal(handle.run_id)
    assert sum(isinstance(je.entry, Started) for je in journal) == 3
    assert int(await counters.get(f"poison:{handle.run_id}") or 0) == 3
    events = await asyncio.wait_for(follow, 20)
    assert events[-1].type == "run.failed"
    assert events[-1].data["error"]["type"] == "PlacementLimitExceeded"
    assert await (await client.submit("echo", 1)).result(timeout=20) == 1
