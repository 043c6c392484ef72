"""Shared circuit breakers and retry budgets against a real Redis, one handle per "worker".

Two handles bound to two stores on the same namespace stand for two workers: what one sees
must hold for the other. The end-to-end tests with worker processes and a failing provider
are in ``test_flow_breakers_e2e.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest

from stalwart import NO_RETRY, RetryPolicy, StepSpec
from stalwart.errors import CircuitOpenError, ConfigurationError
from stalwart.flow import ADMIT, FlowCall, FlowStore, Hold, Outcome, RetryBudget, SharedBreaker
from stalwart.flow._breakers import counts_as_failure
from stalwart.testing import RedisClusterServer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from stalwart.checkpoints import CheckpointStore


class Down(Exception):
    status_code = 503


class Declined(Exception):
    status_code = 402


def call(run: str, attempt: int = 1, name: str = "gpt", policy: Any = None) -> FlowCall:
    spec = StepSpec(key="model:1", kind="model", name=name, fp="x")
    c = FlowCall(run, "agent", f"model:{name}", spec, attempt)
    if policy is not None:
        c.policy = policy
    return c


def fleet(store: CheckpointStore, rule: Any, n: int = 2) -> list[Any]:
    """``n`` handles of ``rule``, as ``n`` workers would bind it."""
    return [rule.bind(FlowStore(store.redis, store.ns)) for _ in range(n)]


async def fail(h: Any, c: FlowCall, exc: BaseException | None = None) -> None:
    assert await h.acquire(c) is ADMIT
    await h.release(c, Outcome(ok=False, error=exc or Down("503")))


def test_rules_refuse_bad_settings_with_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="threshold must be a whole number"):
        SharedBreaker(name="b", threshold=0)
    with pytest.raises(ConfigurationError, match="cooldown must be"):
        SharedBreaker(name="b", cooldown=float("nan"))
    with pytest.raises(ConfigurationError, match="both 0"):
        RetryBudget(name="r", ratio=0, min_per_second=0)
    with pytest.raises(ConfigurationError, match="window must be"):
        RetryBudget(name="r", window=0)
    assert counts_as_failure(Down(), None) and not counts_as_failure(Declined(), None)
    assert not counts_as_failure(Down(), RetryPolicy(non_retryable=(Down,)))


async def test_failures_on_one_worker_open_the_breaker_on_the_other(store) -> None:
    a, b = fleet(store, SharedBreaker(name="llm", threshold=3, cooldown=30))
    await fail(a, call("r1"))
    await fail(b, call("r2"))  # failures add up across workers
    assert a.seen["model:gpt"].failures == 1 and b.seen["model:gpt"].failures == 2
    await fail(a, call("r3"))
    held = await b.acquire(call("r4"))
    assert isinstance(held, Hold) and held.rule == "llm" and "circuit open" in held.limit
    assert 29 < held.until - time.time() < 34  # the rest of the cooldown, jittered
    assert b.seen["model:gpt"].state == "open"
    # Another resource under the same rule has its own breaker.
    assert await b.acquire(call("r5", name="other")) is ADMIT


async def test_a_success_resets_the_count_across_workers(store) -> None:
    a, b = fleet(store, SharedBreaker(name="llm", threshold=2, cooldown=30))
    await fail(a, call("r1"))
    c = call("r2")
    assert await b.acquire(c) is ADMIT
    await b.release(c, Outcome(ok=True))
    await fail(a, call("r3"))  # one failure since the success: still closed
    assert await b.acquire(call("r4")) is ADMIT


async def test_answers_and_interruptions_do_not_count(store) -> None:
    (a,) = fleet(store, SharedBreaker(name="llm", threshold=1, cooldown=30), 1)
    await fail(a, call("r1"), Declined("card declined"))
    c = call("r2")
    assert await a.acquire(c) is ADMIT
    await a.release(c, Outcome(ok=False, abandoned=True))
    assert await a.acquire(call("r3")) is ADMIT


async def test_half_open_lets_exactly_one_probe_through_the_fleet(store) -> None:
    hs = fleet(store, SharedBreaker(name="llm", threshold=1, cooldown=0.2), 4)
    await fail(hs[0], call("r0"))
    await asyncio.sleep(0.25)  # the cooldown is Redis's clock: nothing to await but time
    calls = [call(f"p{i}") for i in range(8)]
    answers = await asyncio.gather(*(hs[i % 4].acquire(c) for i, c in enumerate(calls)))
    admitted = [c for c, ans in zip(calls, answers, strict=True) if ans is ADMIT]
    assert len(admitted) == 1  # one probe, whichever worker asked first
    (probe,) = admitted
    winner = hs[calls.index(probe) % 4]
    # The probe fails: open again for a whole cooldown, for everyone.
    await winner.release(probe, Outcome(ok=False, error=Down()))
    assert isinstance(await hs[1].acquire(call("x")), Hold)
    await asyncio.sleep(0.25)
    probe2 = call("p2")
    assert await hs[2].acquire(probe2) is ADMIT
    assert isinstance(await hs[3].acquire(call("y")), Hold)  # its probe is in flight
    await hs[2].release(probe2, Outcome(ok=True))  # closes for all
    assert all([await h.acquire(call(f"z{i}")) is ADMIT for i, h in enumerate(hs)])


async def test_an_abandoned_probe_hands_the_slot_on_and_a_dead_ones_times_out(store) -> None:
    a, b = fleet(store, SharedBreaker(name="llm", threshold=1, cooldown=0.1, probe_timeout=0.4))
    await fail(a, call("r0"))
    await asyncio.sleep(0.15)
    p = call("p")
    assert await a.acquire(p) is ADMIT
    assert isinstance(await b.acquire(call("q")), Hold)
    await a.release(p, Outcome(ok=False, abandoned=True))  # drained mid-probe
    dead = call("dead")
    assert await b.acquire(dead) is ADMIT  # the slot is free at once
    assert isinstance(await a.acquire(call("q2")), Hold)
    await asyncio.sleep(0.45)  # b "died" holding the probe: it expires after probe_timeout
    assert await a.acquire(call("q3")) is ADMIT


async def test_a_policy_that_will_not_retry_an_open_circuit_fails_at_once(store) -> None:
    (a,) = fleet(store, SharedBreaker(name="llm", threshold=1, cooldown=30), 1)
    await fail(a, call("r0"))
    assert isinstance(await a.acquire(call("r1", policy=NO_RETRY)), Hold)  # waiting is no retry
    strict = RetryPolicy(non_retryable=(CircuitOpenError,))
    with pytest.raises(CircuitOpenError, match="model:gpt"):
        await a.acquire(call("r2", policy=strict))


async def test_retries_draw_from_a_budget_shared_by_all_workers(store) -> None:
    a, b = fleet(store, RetryBudget(name="rb", ratio=0.5, min_per_second=0.2, window=10), 2)
    assert await a.acquire(call("first")) is ADMIT  # first attempts never draw
    granted = [await h.acquire(call(f"r{i}", attempt=2)) for i, h in enumerate([a, b, a])]
    assert granted[:2] == [ADMIT, ADMIT]  # the floor: 0.2/s x 10 s = 2 retries
    held = granted[2]
    assert isinstance(held, Hold) and "retry budget empty" in held.limit
    assert 0 < held.until - time.time() <= 11
    for i in range(4):  # 4 successes x 0.5 = 2 more retries
        ok = call(f"s{i}")
        assert await b.acquire(ok) is ADMIT
        await b.release(ok, Outcome(ok=True))
    await b.flush()
    assert await a.acquire(call("x", attempt=3)) is ADMIT
    give_back = call("y", attempt=2)
    assert await a.acquire(give_back) is ADMIT
    assert isinstance(await b.acquire(call("z", attempt=2)), Hold)
    await a.release(give_back, Outcome(ok=False, abandoned=True))  # held by a later rule
    assert await b.acquire(call("z", attempt=2)) is ADMIT
    assert b.seen["model:gpt"].available == 0 and a.seen["model:gpt"].available == 1


async def test_retries_leave_the_budget_with_the_window(store) -> None:
    (a,) = fleet(store, RetryBudget(name="rb", ratio=0.0, min_per_second=1, window=0.5), 1)
    assert await a.acquire(call("r0", attempt=2)) is ADMIT
    held = await a.acquire(call("r1", attempt=2))
    assert isinstance(held, Hold) and held.until - time.time() <= 0.6
    await asyncio.sleep(max(held.until - time.time(), 0) + 0.05)
    assert await a.acquire(call("r1", attempt=2)) is ADMIT


async def test_snapshots_and_the_flow_command_show_breakers_and_budgets(store, capsys) -> None:
    import argparse
    import json
    from types import SimpleNamespace

    from stalwart._cli_flow import cmd_flow
    from stalwart.flow import breaker_snapshot, publish_rules, retry_budget_snapshot

    brk = SharedBreaker(name="llm", threshold=2, cooldown=30)
    rb = RetryBudget(name="rb", ratio=0.5, min_per_second=0.3, window=10)
    fs = FlowStore(store.redis, store.ns)
    await publish_rules(fs, [brk, rb], "app")  # as a worker does when it starts
    client = SimpleNamespace(store=store)
    assert await breaker_snapshot(client) == [] and await retry_budget_snapshot(client) == []
    (h,) = fleet(store, brk, 1)
    await fail(h, call("r1"))
    await fail(h, call("r2"))
    (b,) = await breaker_snapshot(client)
    assert (b.rule, b.breaker, b.state, b.failures, b.opens, b.probing) == (
        "llm",
        "model:gpt",
        "open",
        2,
        1,
        False,
    )
    assert 29 < b.retry_in <= 30
    (r,) = fleet(store, rb, 1)
    assert await r.acquire(call("x", attempt=2)) is ADMIT
    (level,) = await retry_budget_snapshot(client)
    assert (level.budget, level.retries, level.allowed, level.available) == ("model:gpt", 1, 3, 2)

    await cmd_flow(argparse.Namespace(output="text", flow_command=None), client)  # type: ignore[arg-type]
    text = capsys.readouterr().out
    assert "model:gpt: open (2 failures, next probe in" in text
    assert "model:gpt: 2 of 3 retries left (1 used, 0 successes in 10s)" in text
    await cmd_flow(argparse.Namespace(output="json", flow_command=None), client)  # type: ignore[arg-type]
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["llm"]["details"][0]["state"] == "open"
    assert rows["rb"]["details"][0]["available"] == 2


async def test_in_a_worker_the_shared_breaker_replaces_its_own_and_a_strict_policy_fails_fast(
    settings, client
) -> None:
    """A worker whose app has a SharedBreaker for ``tool:flaky`` leaves its own breaker out of
    it; a step whose policy will not retry an open circuit fails at once, journaled."""
    from stalwart import App, Policies, RunFailed, Worker
    from stalwart.checkpoints import StepError
    from tests.helpers import entries_of

    strict = RetryPolicy(max_attempts=3, initial_interval=0.01, non_retryable=(CircuitOpenError,))
    app = App(
        "sharedbrk",
        policies=Policies(retry={"tool": strict}),
        flow=[SharedBreaker(name="brk", resources="tool:flaky", threshold=2, cooldown=30)],
    )
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError("upstream down")

    @app.agent("caller")
    async def caller(ctx, _: None) -> str:
        return await ctx.call(StepSpec(key="tool:1", kind="tool", name="flaky", fp="x"), flaky)

    worker = Worker(app, settings)
    await worker.start()
    try:
        h = await client.submit("caller", None)
        with pytest.raises(RunFailed) as info:
            await h.result(timeout=20)
        # Attempt 1 and 2 reached the upstream and opened the shared breaker; attempt 3 was
        # refused by it, and the policy does not retry CircuitOpenError.
        assert info.value.error_type == "CircuitOpenError" and calls == 2
        (err,) = await entries_of(client, h.run_id, StepError)
        assert (err.error.type, err.attempt, err.error.retryable) == ("CircuitOpenError", 3, False)
        assert worker.breakers.states() == {}  # the worker's own breaker never saw it
        assert worker.breaker_states() == {"tool:flaky": "open"}
        assert await worker._shared_breakers() == {"tool:flaky": "open"}
    finally:
        worker.stop()
        await worker._shutdown()


@pytest.fixture
def cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer(masters=3, replicas=0) as c:  # sync fixture: it blocks to start
        yield c


async def test_breakers_and_budgets_work_on_a_redis_cluster(
    namespace: str, cluster: RedisClusterServer
) -> None:
    """Every script touches one key: on a cluster (down the store's per-master pipe) the
    breakers and budgets of rules spread over the masters behave as on one Redis."""
    from stalwart import App
    from stalwart.actors._flow import flow_gate
    from stalwart.checkpoints import CheckpointStore
    from stalwart.flow import breaker_snapshot, publish_rules, retry_budget_snapshot

    cs = await CheckpointStore.connect(cluster.url, namespace, connect_timeout=10)
    try:
        rules: list[Any] = [SharedBreaker(name=f"b{i}", threshold=1) for i in range(4)]
        rules += [RetryBudget(name=f"rb{i}", ratio=0, min_per_second=0.1) for i in range(4)]
        gate = flow_gate(App("c", flow=rules), cs, 60.0)
        assert gate is not None and gate.store.pipe is not None
        await publish_rules(gate.store, gate.rules, "c")
        for h in gate.handles[:4]:
            await fail(h, call("r"))
            assert isinstance(await h.acquire(call("s")), Hold)
        for h in gate.handles[4:]:
            assert await h.acquire(call("r", attempt=2)) is ADMIT  # the floor: 1 per 10 s
            assert isinstance(await h.acquire(call("s", attempt=2)), Hold)
        client = _StoreOnly(cs)
        assert [(b.rule, b.state) for b in await breaker_snapshot(client)] == [
            (f"b{i}", "open") for i in range(4)
        ]
        assert [(r.rule, r.available) for r in await retry_budget_snapshot(client)] == [
            (f"rb{i}", 0) for i in range(4)
        ]
    finally:
        await cs.close()


class _StoreOnly:
    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
