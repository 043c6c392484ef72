"""Flow control: shared rate limits and the spend guard, with real workers, a real Redis and
a loopback fake OpenAI server that records when each request arrived."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from msgspec.structs import replace

from stalwart import App
from stalwart._cli_flow import cmd_flow
from stalwart.actors import StepSpec
from stalwart.actors._flow import flow_gate
from stalwart.checkpoints import CheckpointStore
from stalwart.errors import ConfigurationError, RunCancelled
from stalwart.flow import (
    EV_FLOW_WAITING,
    RESUME_SIGNAL,
    FlowGate,
    FlowStore,
    RateLimit,
    SpendLimit,
    flow_snapshot,
    publish_rules,
)
from stalwart.flow._limits import period_bounds
from stalwart.flow._store import flow_key
from stalwart.testing import RedisClusterServer
from tests.adapters.fake_llm import FakeLLM, Reply, fake_llm  # noqa: F401  (a fixture)
from tests.conftest import worker_pool
from tests.helpers import eventually, outcome

if TYPE_CHECKING:
    from collections.abc import Iterator

    from stalwart import Client, RunHandle
    from stalwart.config import Settings
    from stalwart.supervisor import Supervisor
    from tests.conftest import Servers

APP = "tests.flow_apps:app"


def most_in_window(times: list[float], per: float) -> int:
    """The most of ``times`` inside any half-open window of ``per`` seconds."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= per:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_rate_limit_holds_at_the_provider_across_three_workers(
    settings: Settings,
    servers: Servers,
    client: Client,
    supervisor: Supervisor,
    fake_llm: FakeLLM,  # noqa: F811
) -> None:
    """200 runs on 3 workers, provider limited to N=30 requests per 2 s (a short window, so
    the test takes ~15 s, not minutes): never more than N in any 2 s at the provider."""
    n, per, runs = 30, 2.0, 200
    fake_llm.route("fake-rpm", lambda r: Reply(text="ok"))
    env = {"FAKE_LLM_URL": fake_llm.url, "FLOW_RATE_N": str(n), "FLOW_RATE_PER": str(per)}
    async with worker_pool(APP, settings, servers, client, **env) as start:
        procs = [await start() for _ in range(3)]
        t0 = time.monotonic()
        handles = [await client.submit("chat", {"model": "fake-rpm"}) for _ in range(runs)]
        results = await asyncio.gather(*(outcome(h, *procs, timeout=90) for h in handles))
        took = time.monotonic() - t0
        logs = "".join(p.log_text() for p in procs)
        [snap] = [s for s in await flow_snapshot(client) if s.name == "fake-rpm"]
    arrivals = [r.at for r in fake_llm.requests("fake-rpm")]
    assert len(arrivals) == runs and all(results)
    assert most_in_window(arrivals, per) <= n
    # The limit is what paced them: 200 at 30 per 2 s needs 6 full windows at least.
    assert took >= (runs // n - 1) * per
    # Short waits waited in place; long ones gave up their slot (and came back).
    assert '"passivate": false' in logs and "run.passivated" in logs
    assert snap.waiting == [] and snap.limit == {"requests": n}


async def test_spend_guard_pauses_durably_and_resumes_on_signal_and_on_a_raised_limit(
    settings: Settings,
    servers: Servers,
    client: Client,
    supervisor: Supervisor,
    fake_llm: FakeLLM,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each call costs $0.00021 (gpt-4o-mini, 1000 in / 100 out); the tenant's limit is
    $0.0005 a day: the 4th call waits, passivated, until a flow.resume signal lets it
    through; the 5th waits again; a raised limit lets the next run's calls go on."""
    fake_llm.route("gpt-4o-mini", lambda r: Reply(text="ok", input_tokens=1000, output_tokens=100))
    env = {"FAKE_LLM_URL": fake_llm.url, "FLOW_SPEND_USD": "0.0005"}
    async with worker_pool(APP, settings, servers, client, **env) as start:
        proc = await start()
        h = await client.submit("chat", {"model": "gpt-4o-mini", "calls": 5, "tenant": "acme"})

        async def waiting_for_flow() -> bool:
            r = await h.status()
            return r.status == "waiting" and r.waiting_for == RESUME_SIGNAL

        await eventually(waiting_for_flow, timeout=30, message=lambda: proc.log_text()[-3000:])
        assert len(fake_llm.requests("gpt-4o-mini")) == 3
        [snap] = [s for s in await flow_snapshot(client) if s.name == "spend"]
        assert snap.waiting == [h.run_id]
        assert snap.used["tenant:acme"] == pytest.approx(3 * 0.00021)
        assert snap.limit == {"usd": 0.0005}
        # Another tenant's budget is its own.
        other = await client.submit("chat", {"model": "gpt-4o-mini", "tenant": "beta"})
        assert await outcome(other, proc) > 0

        await h.signal(RESUME_SIGNAL)  # lets the held 4th call through; the 5th waits again
        await eventually(
            lambda: _requests_then_waiting(fake_llm, h, 5), timeout=30, message=proc.log_text
        )
        await h.signal(RESUME_SIGNAL)
        assert await outcome(h, proc) > 0
        assert len(fake_llm.requests("gpt-4o-mini")) == 6  # 5 of acme's, 1 of beta's
        events = [e.type async for e in h.events(follow=False)]
        assert events.count(EV_FLOW_WAITING) == 2 and events.count("run.passivated") == 2

        # Over the limit, a new run of acme waits; raising the limit (the CLI) wakes it.
        late = await client.submit("chat", {"model": "gpt-4o-mini", "tenant": "acme"})
        await eventually(lambda: _waiting(late), timeout=30)
        args = argparse.Namespace(flow_command="set-limit", rule="spend", usd=1.0, clear=False)
        await cmd_flow(args, client)
        assert await outcome(late, proc) > 0
        [snap] = [s for s in await flow_snapshot(client) if s.name == "spend"]
        assert snap.limit == {"usd": 1.0} and snap.waiting == []

    # The CLI: every published rule as JSON; clear errors for what cannot be done.
    capsys.readouterr()
    await cmd_flow(argparse.Namespace(flow_command=None, output="json"), client)
    shown = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert shown["spend"]["used"]["tenant:acme"] == pytest.approx(6 * 0.00021)  # 5 + late
    assert shown["fake-rpm"]["kind"] == "RateLimit" and shown["fake-rpm"]["limit"]["requests"]
    for rule, says in (("fake-rpm", "is a RateLimit, not a SpendLimit"), ("nope", "no flow rule")):
        bad = argparse.Namespace(flow_command="set-limit", rule=rule, usd=1.0, clear=False)
        with pytest.raises(ConfigurationError, match=says):
            await cmd_flow(bad, client)


async def _waiting(h: RunHandle) -> bool:
    return (await h.status()).status == "waiting"


async def _requests_then_waiting(fake: FakeLLM, h: RunHandle, n: int) -> bool:
    return len(fake.requests("gpt-4o-mini")) >= n and await _waiting(h)


# -- the Redis side, against a real Redis -------------------------------------------------------


async def test_a_call_counts_while_in_flight_and_for_one_window_after_it_ends(
    store: CheckpointStore,
) -> None:
    fs = FlowStore(store.redis, store.ns)
    args = (0.5, 2, 0, 0, 600.0)  # 2 requests per 0.5 s; in flight for up to 600 s
    assert (await fs.acquire("r", "a", *args))[0]
    assert (await fs.acquire("r", "b", *args))[0]
    ok, wait, what, _ = await fs.acquire("r", "c", *args)
    assert not ok and what == "requests" and 0 < wait <= 0.5  # both in flight: look again soon
    await fs.settle("r", "a", -1)
    ok, wait, _, _ = await fs.acquire("r", "c", *args)
    assert not ok and 0.4 < wait <= 0.51  # a ended just now: it counts for one more window
    await asyncio.sleep(wait)
    ok, _, _, (n, _) = await fs.acquire("r", "c", *args)
    assert ok and n == 2  # b (still in flight) and c
    await fs.settle("r", "b", -1, drop=True)  # never reached the provider: gone at once
    assert (await fs.window("r", 0.5))[0] == 1


async def test_tokens_are_reserved_then_corrected_to_the_reported_usage(
    store: CheckpointStore,
) -> None:
    fs = FlowStore(store.redis, store.ns)
    args = (10.0, 0, 1000)  # 1000 tokens per 10 s
    assert (await fs.acquire("t", "a", *args, 600, 600.0))[0]
    ok, wait, what, _ = await fs.acquire("t", "b", *args, 600, 600.0)
    assert not ok and what == "tokens" and wait > 0
    await fs.settle("t", "a", 100)  # the model reported 100: 500 more fit now
    ok, _, _, (_, tokens) = await fs.acquire("t", "b", *args, 600, 600.0)
    assert ok and tokens == 700
    # A call larger than the whole budget waits for an empty window, then goes alone.
    assert not (await fs.acquire("t", "big", *args, 5000, 600.0))[0]
    await fs.settle("t", "a", 0, drop=True)
    await fs.settle("t", "b", 0, drop=True)
    assert (await fs.acquire("t", "big", *args, 5000, 600.0))[0]


def test_a_rules_keys_share_one_hash_slot() -> None:
    from redis.crc import key_slot

    parts = ("log", "tokens", "waiting", "limit", "spend:2026-12")
    slots = {key_slot(flow_key("ns", "openai", p).encode()) for p in parts}
    assert len(slots) == 1


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: RateLimit(name="has space", requests=1), "must be 1-100 characters"),
        (lambda: RateLimit(name="r{x}", requests=1), "must be 1-100 characters"),
        (lambda: RateLimit(name="r"), "give requests=, tokens= or both"),
        (lambda: RateLimit(name="r", requests=0), "requests must be a positive integer"),
        (lambda: RateLimit(name="r", tokens=True), "tokens must be a positive integer"),
        (lambda: RateLimit(name="r", requests=1, per=float("nan")), "per must be a positive"),
        (lambda: RateLimit(name="r", requests=1, resources=""), "resources must be a non-empty"),
        (lambda: SpendLimit(name="s", limit_usd=-1), "limit_usd must be a non-negative"),
        (lambda: SpendLimit(name="s", limit_usd=1, period="week"), "period must be"),  # type: ignore[arg-type]
        (lambda: SpendLimit(name="s", limit_usd=1, scope="tenant"), "needs tenant="),
        (lambda: App("a", flow=[SpendLimit(name="s", limit_usd=1)] * 2), "is used twice"),
        (lambda: App("a", flow=["model:*"]), "must hold flow rules"),  # type: ignore[list-item]
        (lambda: App("a", flow=3), "must be a sequence of flow rules"),  # type: ignore[arg-type]
    ],
)
def test_bad_rules_are_refused_with_a_clear_error(make: Any, says: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(says)):
        make()


def test_rules_match_resources_by_glob_and_the_gate_caches_what_matches() -> None:
    rate = RateLimit(name="r", resources=("model:gpt-4o*", "tool:search"), requests=1)
    assert rate.matches("model:gpt-4o-mini") and rate.matches("tool:search")
    assert not rate.matches("model:o3") and not rate.matches("tool:search2")
    rules = [rate, SpendLimit(name="s", limit_usd=1)]
    gate = FlowGate(rules, FlowStore(aioredis.Redis(), "ns"))  # never connects
    assert [h.rule.name for h in gate.match("model", "gpt-4o")] == ["r", "s"]
    assert [h.rule.name for h in gate.match("model", "o3")] == ["s"]
    assert gate.match("step", "plan") == ()
    assert App("a").flow == () and App("a", flow=[rate]).flow == (rate,)
    # A rule on everything still leaves ctx.patched's markers alone (they call no resource).
    every = FlowGate([RateLimit(name="all", resources="*", requests=1)], gate.store)
    assert [h.rule.name for h in every.match("step", "plan")] == ["all"]
    assert every.match("patch", "new-prompt") == ()


def test_periods_are_utc_days_and_months() -> None:
    ts = datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp()
    assert period_bounds("day", ts) == ("2026-12-31", datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    assert period_bounds("month", ts) == ("2026-12", datetime(2027, 1, 1, tzinfo=UTC).timestamp())


async def test_a_call_in_flight_on_a_killed_worker_keeps_its_place_until_its_hold_ends(
    settings: Settings,
    servers: Servers,
    client: Client,
    supervisor: Supervisor,
    fake_llm: FakeLLM,  # noqa: F811
) -> None:
    """1 request per second, hold 3 s: the worker dies (SIGKILL) with the call in flight at
    the provider; the new owner's attempt waits until the dead call's place is free (hold
    plus one window), then the run completes. The provider never sees two within a second."""
    fake_llm.route("fake-crash", lambda r: Reply(text="ok"))
    held = fake_llm.hold(lambda r: r.model == "fake-crash")
    env = {
        "FAKE_LLM_URL": fake_llm.url,
        "FLOW_RATE_N": "1",
        "FLOW_RATE_PER": "1.0",
        "FLOW_RATE_HOLD": "3.0",
    }
    try:
        async with worker_pool(APP, settings, servers, client, **env) as start:
            first = await start()
            h = await client.submit("chat", {"model": "fake-crash"})
            await held.arrived()
            first.kill()
            second = await start()
            assert await outcome(h, second, timeout=30) > 0
    finally:
        held.release()
    arrivals = [r.at for r in fake_llm.requests("fake-crash")]
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 3.0  # the dead call counted until its hold ended


@pytest.fixture
def cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer(masters=3, replicas=0) as c:  # sync fixture: it blocks to start
        yield c


async def test_limits_work_on_a_redis_cluster_through_the_gate_of_a_worker(
    namespace: str, cluster: RedisClusterServer
) -> None:
    """A rule's keys share a slot: its scripts run (down the store's per-master pipe) on a
    cluster, and the snapshot reads them back."""
    cs = await CheckpointStore.connect(cluster.url, namespace, connect_timeout=10)
    try:
        rules = [
            RateLimit(name=f"r{i}", resources="model:*", requests=2, tokens=100, per=5)
            for i in range(6)  # spread over the masters
        ] + [SpendLimit(name="s", limit_usd=0.5)]
        gate = flow_gate(App("c", flow=rules), cs, 60.0)
        assert gate is not None and gate.store.pipe is not None
        fs = gate.store
        for i in range(6):
            assert (await fs.acquire(f"r{i}", "a", 5.0, 2, 100, 60, 600.0))[0]
            assert not (await fs.acquire(f"r{i}", "b", 5.0, 2, 100, 60, 600.0))[0]
            await fs.settle(f"r{i}", "a", 10)
            assert (await fs.acquire(f"r{i}", "b", 5.0, 2, 100, 60, 600.0))[0]
        await fs.add_spend("s", "2026-12-03", "agent:x", 0.25)
        await fs.mark_waiting("s", "run-1", time.time() + 100)
        await publish_rules(fs, rules, "c")
        snaps = {s.name: s for s in await flow_snapshot(_StoreOnly(cs))}
        assert snaps["r3"].used == {"requests": 2, "tokens": 70}
        assert snaps["s"].waiting == ["run-1"] and snaps["s"].limit == {"usd": 0.5}
    finally:
        await cs.close()


class _StoreOnly:
    def __init__(self, store: CheckpointStore) -> None:
        self.store = store


async def test_a_garbled_operator_limit_or_spend_counter_falls_back_instead_of_failing(
    store: CheckpointStore,
) -> None:
    fs = FlowStore(store.redis, store.ns)
    await store.redis.set(fs.key("s", "limit"), "lots")
    await store.redis.hset(fs.key("s", "spend:2026-12"), mapping={"a": "nan", "b": "x"})
    assert await fs.limit_override("s") is None
    assert await fs.spent("s", "2026-12", "a") == 0.0
    assert await fs.spend_table("s", "2026-12") == {"a": 0.0, "b": 0.0}


def test_the_token_estimate_is_the_rules_then_the_steps_hint_then_the_default() -> None:
    spec = StepSpec(key="model:m", kind="model", name="m", fp="", tokens_hint=321)
    assert RateLimit(name="r", tokens=10, estimate=7).want(spec) == 7
    assert RateLimit(name="r", tokens=10, estimate=lambda s: s.tokens_hint * 2).want(spec) == 642
    assert RateLimit(name="r", tokens=10).want(spec) == 321
    assert (
        RateLimit(name="r", tokens=10, default_estimate=5).want(replace(spec, tokens_hint=0)) == 5
    )
    assert RateLimit(name="r", tokens=10, estimate=lambda s: 1 / 0).want(spec) == 1000  # default
    assert RateLimit(name="r", requests=10).want(spec) == 0  # no token limit: nothing reserved


async def test_agent_code_cannot_swallow_a_flow_wait_and_a_waiting_run_can_be_cancelled(
    settings: Settings,
    servers: Servers,
    client: Client,
    supervisor: Supervisor,
    fake_llm: FakeLLM,  # noqa: F811
) -> None:
    fake_llm.route("gpt-4o", lambda r: Reply(text="ok"))
    env = {"FAKE_LLM_URL": fake_llm.url, "FLOW_SPEND_USD": "0"}  # every call is held
    async with worker_pool(APP, settings, servers, client, **env) as start:
        proc = await start()
        sw = await client.submit("swallow", {"model": "gpt-4o"})
        cancelled = await client.submit("chat", {"model": "gpt-4o"})
        for h in (sw, cancelled):
            await eventually(lambda h=h: _waiting(h), timeout=30, message=proc.log_text)
        # The wait is not an error the agent can catch and carry on from: the run waits.
        await sw.signal(RESUME_SIGNAL)
        assert await outcome(sw, proc) == "called"
        await cancelled.cancel("no budget today")
        with pytest.raises(RunCancelled):
            await outcome(cancelled, proc)
    assert len(fake_llm.requests("gpt-4o")) == 1


def test_the_flow_command_line_keeps_connection_options_given_before_the_sub_command() -> None:
    from stalwart.cli import _parser

    ns = _parser().parse_args(
        ["flow", "--namespace", "x", "-o", "json", "resume", "r", "--run", "a"]
    )
    assert (ns.namespace, ns.output, ns.flow_command, ns.rule, ns.runs) == (
        "x",
        "json",
        "resume",
        "r",
        ["a"],
    )
    ns = _parser().parse_args(["flow", "set-limit", "daily", "2.5"])
    assert (ns.flow_command, ns.rule, ns.usd, ns.clear) == ("set-limit", "daily", 2.5, False)


async def test_an_app_that_drops_a_rule_stops_publishing_it(store: CheckpointStore) -> None:
    fs = FlowStore(store.redis, store.ns)
    a, b = RateLimit(name="a", requests=1), RateLimit(name="b", requests=1)
    await publish_rules(fs, [a, b], "shop")
    await publish_rules(fs, [SpendLimit(name="x", limit_usd=1)], "other")
    await publish_rules(fs, [a], "shop")  # redeployed without b
    snaps = await flow_snapshot(_StoreOnly(store))
    assert sorted(s.name for s in snaps) == ["a", "x"]
    assert all(s.published_at > time.time() - 60 for s in snaps)
