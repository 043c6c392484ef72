"""Crash tests: real worker processes, real SIGKILL/SIGSTOP/SIGTERM, real servers."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from stalwart import Client, RunCancelled, RunFailed
from stalwart.checkpoints import Finished, JournalEntry, Started, StepDone, StepError
from stalwart.messages import event_data
from tests.conftest import ROOT, Servers, WorkerFactory
from tests.helpers import (
    at_least,
    eventually,
    execs,
    gate_key,
    journal,
    journaled,
    open_gate,
    owners,
    rid,
)

pytestmark = pytest.mark.slow


def check_single_owner(entries: list[JournalEntry]) -> list[int]:
    """Epochs only grow, and every entry belongs to the epoch of the last Started before it."""
    epochs: list[int] = []
    current = 0
    for je in entries:
        e = je.entry
        if isinstance(e, Started):
            assert e.epoch > current, f"epoch went from {current} to {e.epoch}"
            current = e.epoch
            epochs.append(e.epoch)
        else:
            assert isinstance(e, StepDone | StepError | Finished)
            assert e.epoch == current, (
                f"entry {je.seq} from epoch {e.epoch} while {current} owns the run"
            )
    return epochs


async def test_sigkill_after_step5_resumes_on_another_worker(
    client: Client, workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await workers("a")
    run_id = rid()
    handle = await client.submit("ten", {"pause_after": 5}, run_id=run_id)
    await eventually(lambda: journaled(client, run_id, "step:s5"))
    assert (await handle.status()).worker == "a"
    a.kill()
    await open_gate(counters, run_id, "after")
    await workers("b")

    assert await handle.result(timeout=30) == sum(i * 10 for i in range(1, 11))
    for i in range(1, 11):
        assert await execs(counters, run_id, f"step:s{i}") == 1, f"step s{i} body ran again"
    entries = await journal(client, run_id)
    assert len(check_single_owner(entries)) == 2
    assert owners(entries) == ["a", "b"]
    assert [je.entry.worker for je in entries if isinstance(je.entry, StepDone)] == ["a"] * 5 + [
        "b"
    ] * 5

    # A subscriber attaching now sees every step once, across the crash, with the resume marked.
    events = [ev async for ev in handle.events(follow=False)]
    done = [ev.step for ev in events if ev.type == "step.completed"]
    assert done == [f"step:s{i}" for i in range(1, 11)]
    resumed = [ev for ev in events if ev.type == "run.resumed"]
    assert (
        len(resumed) == 1 and resumed[0].worker == "b" and resumed[0].data == {"journaled_steps": 5}
    )
    assert [ev.jseq for ev in events if ev.jseq] == [je.seq for je in entries]
    # Both owners (and the client) put the run's agent on every event; each has its place
    # in the stream, and the all-runs stream filtered on the agent is the same events.
    assert {ev.agent for ev in events} == {"ten"}
    seqs = [ev.seq for ev in events]
    assert seqs == sorted(set(seqs)) and seqs[0] > 0
    assert [ev async for ev in client.events(agent="ten", follow=False)] == events
    # Every event's data has the shape of its type's struct (raises where it does not).
    types = {ev.type for ev in events}
    assert {"run.accepted", "run.started", "run.resumed", "run.completed"} <= types
    for ev in events:
        assert (event_data(ev) is None) == (ev.type == "run.started"), ev


async def test_sigkill_inside_step6_runs_step6_again(
    client: Client, workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await workers("a")
    run_id = rid()
    handle = await client.submit("ten", {"block_in": 6}, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "step:s6"))
    a.kill()
    await open_gate(counters, run_id, "in")
    await workers("b")

    assert await handle.result(timeout=30) == sum(i * 10 for i in range(1, 11))
    assert await execs(counters, run_id, "step:s6") == 2  # at-least-once: it was in flight
    for i in (1, 2, 3, 4, 5, 7, 8, 9, 10):
        assert await execs(counters, run_id, f"step:s{i}") == 1
    keys = [je.entry.key for je in await journal(client, run_id) if isinstance(je.entry, StepDone)]
    assert keys == [f"step:s{i}" for i in range(1, 11)]  # journaled once each


@pytest.mark.timeout(300)  # 100 runs and three worker processes on a 2-core machine
async def test_hundred_runs_three_workers_one_killed(
    client: Client, workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    procs = [await workers(f"w{i}") for i in range(3)]
    handles = await asyncio.gather(*(client.submit("fast", i) for i in range(100)))

    async def done_count() -> int:
        records = await asyncio.gather(*(h.status() for h in handles))
        return sum(r.status == "completed" for r in records)

    await eventually(lambda: at_least(done_count(), 1), timeout=30)
    procs[0].kill()  # whatever it had in flight moves to the other two

    results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    assert results == [3 * i + 3 for i in range(100)]
    for h in handles:
        entries = await journal(client, h.run_id)
        check_single_owner(entries)
        keys = [je.entry.key for je in entries if isinstance(je.entry, StepDone)]
        assert keys == ["step:q", "step:q#2", "step:q#3"], h.run_id
        assert isinstance(entries[-1].entry, Finished)


async def test_zombie_is_fenced_after_sigstop(
    client: Client, workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await workers("a")
    run_id = rid()
    handle = await client.submit("ten", {"block_in": 3}, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "step:s3"))
    a.pause()  # frozen inside step 3, lease stops being renewed
    try:
        await workers("b")

        async def taken_over() -> bool:
            r = await handle.status()
            return r.worker == "b" and await execs(counters, run_id, "step:s3") == 2

        await eventually(taken_over, timeout=20)
        b_epoch = (await handle.status()).epoch
        # Two tokens: Redis hands one to A's still-pending BLPOP, one to B's.
        await counters.lpush(gate_key(run_id, "in"), "1", "2")
        assert await handle.result(timeout=30) == sum(i * 10 for i in range(1, 11))
    finally:
        a.resume()

    # A wakes up as a zombie: its step 3 finishes, its append must be refused.
    await eventually(lambda: _logged(a, "lease"), timeout=20, message=lambda: a.log_text()[-2000:])
    entries = await journal(client, run_id)
    epochs = check_single_owner(entries)
    assert epochs[-1] == b_epoch
    b_start = next(
        je.seq for je in entries if isinstance(je.entry, Started) and je.entry.epoch == b_epoch
    )
    assert all(
        je.entry.epoch == b_epoch
        for je in entries
        if je.seq > b_start and not isinstance(je.entry, Started)
    )
    assert a.alive(), "the zombie worker should abandon the run, not crash"


async def _logged(proc, needle: str) -> bool:
    return needle in proc.log_text()


async def test_graceful_sigterm_hands_the_run_over_without_supervisor(
    client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    # No supervisor fixture here: only the draining worker's own resume request can move it.
    a = await workers("a")
    run_id = rid()
    handle = await client.submit("sleepy", 3, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "step:wait"))
    a.proc.terminate()  # SIGTERM: drain
    await workers("b")
    await counters.lpush(gate_key(run_id, "in"), "1")  # lets A's in-flight step finish
    await eventually(lambda: execs(counters, run_id, "step:wait#2"), timeout=20)
    await counters.lpush(gate_key(run_id, "in"), "2", "3")
    assert await handle.result(timeout=30) == 3
    assert await asyncio.to_thread(a.proc.wait, 10) == 0
    assert await execs(counters, run_id, "step:wait") == 1  # the drained step was not re-run
    assert owners(await journal(client, run_id)) == ["a", "b"]


async def test_cancel_reaches_a_run_owned_by_another_process(
    client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await workers("a")
    run_id = rid()
    handle = await client.submit("sleepy", 3, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "step:wait"))
    assert await handle.cancel("user pressed stop") == "requested"
    await open_gate(counters, run_id, "in")
    with pytest.raises(RunCancelled, match="user pressed stop"):
        await handle.result(timeout=20)
    assert await execs(counters, run_id, "step:wait#2") == 0
    assert (await handle.status()).status == "cancelled"
    # Durable: a second cancel sees the ended run.
    assert await handle.cancel() == "terminal"


async def test_code_change_between_crash_and_resume_is_nondeterminism(
    client: Client, workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await workers("a", AGENT_VERSION="1")
    run_id = rid()
    handle = await client.submit("versioned", None, run_id=run_id)
    await eventually(lambda: journaled(client, run_id, "step:a"))
    a.kill()
    await open_gate(counters, run_id, "after")
    await workers("b", AGENT_VERSION="2")
    with pytest.raises(RunFailed) as info:
        await handle.result(timeout=30)
    assert info.value.error_type == "NonDeterminismError"
    assert "step:a" in info.value.message and "different arguments" in info.value.message
    assert await execs(counters, run_id, "step:a") == 1  # not re-run with the new arguments


async def test_crash_stage_sets_up_workers_and_a_supervisor_that_resume_a_killed_run(
    servers: Servers, counters: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The examples' harness: it finds the servers from the environment, and a run whose
    owner it kills is re-placed by its supervisor on the other worker."""
    from stalwart.testing import crash_stage

    monkeypatch.setenv("STALWART_NATS_URL", servers.nats_url)
    monkeypatch.setenv("STALWART_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("STALWART_NAMESPACE", f"t{uuid.uuid4().hex[:10]}")
    env = {"COUNTER_REDIS_URL": servers.redis_url, "STALWART_LOG_FORMAT": "json"}
    async with crash_stage("tests.apps:app", path=ROOT, env=env) as stage:
        assert set(stage.workers) == {"worker-a", "worker-b"}
        run_id = rid()
        handle = await stage.client.submit("ten", {"pause_after": 5}, run_id=run_id)
        await eventually(lambda: journaled(stage.client, run_id, "step:s5"))
        owner = (await handle.status()).worker
        assert stage.kill(owner) and not stage.kill(owner)  # killed once
        await open_gate(counters, run_id, "after")
        assert await handle.result(timeout=30) == sum(i * 10 for i in range(1, 11))
        assert (await handle.status()).worker == next(iter(stage.workers))
        for i in range(1, 11):
            assert await execs(counters, run_id, f"step:s{i}") == 1
