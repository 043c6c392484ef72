"""Shared breakers and retry budgets end to end: worker processes, a real Redis and NATS, and
a loopback fake OpenAI server that fails on cue and records when each request came and went.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import TYPE_CHECKING

from stalwart.flow import retry_budget_snapshot
from tests.adapters.fake_llm import FakeLLM, Reply, Request, fake_llm  # noqa: F401  (a fixture)
from tests.conftest import worker_pool
from tests.helpers import eventually, outcome

if TYPE_CHECKING:
    from stalwart import Client
    from stalwart.config import Settings
    from stalwart.supervisor import Supervisor
    from tests.conftest import Servers

APP = "tests.flow_breaker_apps:app"


class Provider:
    """A fake model that answers 500 (slowly, so overlapping calls show) while ``down``,
    and logs every call's (start, end) on the server's clock."""

    def __init__(self, fake: FakeLLM, model: str, fail_for: float = 0.0) -> None:
        self.down = threading.Event()
        self.calls: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._fail_for = fail_for
        fake.route(model, self.answer)

    def answer(self, request: Request) -> Reply:
        start = time.time()
        if self.down.is_set():
            time.sleep(self._fail_for)
            reply = Reply(status=500, text="provider down")
        else:
            reply = Reply(text="ok")
        with self._lock:
            self.calls.append((start, time.time()))
        return reply

    def between(self, t0: float, t1: float) -> list[tuple[float, float]]:
        with self._lock:
            return sorted(c for c in self.calls if t0 <= c[0] < t1)


async def test_an_outage_sees_a_trickle_within_the_retry_budget_and_every_run_completes(
    settings: Settings,
    servers: Servers,
    client: Client,
    supervisor: Supervisor,
    fake_llm: FakeLLM,  # noqa: F811
) -> None:
    """10 runs on 2 workers while the provider answers 500 for 3 s, retrying every ~0.1 s
    (without a budget: ~300 requests). Budget: floor 2 per 1 s window, 50% of successes
    (none in an outage). Bound at the provider: each run's first attempt plus at most
    2 retries per window of the outage, ``10 + 2 x (3 + 1)`` = 18."""
    runs, outage, floor, window = 10, 3.0, 2, 1.0
    provider = Provider(fake_llm, "fake-budget")
    # The workers' own breakers off (they would open after 5 failures and hold for 30 s):
    # the budget alone paces the retries here.
    env = {"FAKE_LLM_URL": fake_llm.url, "STALWART_BREAKER_THRESHOLD": "100000"}
    async with worker_pool(APP, settings, servers, client, **env) as start:
        procs = [await start(), await start()]
        provider.down.set()
        t0 = time.time()
        handles = [await client.submit("ask", "fake-budget") for _ in range(runs)]
        await asyncio.sleep(outage)  # the outage is a span of time: nothing to await
        t1 = time.time()
        provider.down.clear()
        results = await asyncio.gather(*(outcome(h, *procs, timeout=40) for h in handles))
        (level,) = await retry_budget_snapshot(client)
    assert (level.rule, level.budget, level.window) == ("budget", "model:fake-budget", window)
    assert level.allowed >= floor and level.available <= level.allowed
    assert results == ["ok"] * runs  # nobody failed: held retries waited, then ran
    during = provider.between(t0, t1)
    bound = runs + floor * (int(outage / window) + 1)
    assert 0 < len(during) <= bound, (len(during), bound)
    waited = [
        ev.data
        for h in handles
        async for ev in h.events(follow=False)
        if ev.type == "flow.waiting" and ev.data.get("rule") == "budget"
    ]
    assert waited and "retry budget empty" in waited[0]["limit"]


async def test_a_breaker_opened_on_one_worker_holds_the_other_and_probes_one_at_a_time(
    settings: Settings,
    servers: Servers,
    client: Client,
    supervisor: Supervisor,
    fake_llm: FakeLLM,  # noqa: F811
) -> None:
    """Worker A's runs open the breaker (3 failures); then A is SIGKILLed and B serves all
    runs: B never calls the provider while the breaker is open, only one probe per cooldown
    (1 s) goes out, probes never overlap, and once the provider is back every run ends."""
    provider = Provider(fake_llm, "fake-brk", fail_for=0.3)
    from stalwart.flow import FlowStore, breaker_snapshot
    from stalwart.flow._breakers import breaker_key

    key = breaker_key(FlowStore(client.store.redis, client.store.ns), "breaker", "model:fake-brk")

    async def opened_at() -> float:
        raw = await client.store.redis.hget(key, "opened_at")
        return float(raw) if raw else 0.0

    async with worker_pool(APP, settings, servers, client, FAKE_LLM_URL=fake_llm.url) as start:
        a = await start("a")
        provider.down.set()
        first = await client.submit("ask", "fake-brk")
        opened = await eventually(opened_at, timeout=20)
        b = await start("b")
        a.kill()  # its run moves to B, where the breaker it opened is open too
        later = [await client.submit("ask", "fake-brk") for _ in range(4)]
        (shown,) = await breaker_snapshot(client)
        assert shown.breaker == "model:fake-brk" and shown.failures >= 3  # A's probe may add one
        assert shown.state in ("open", "half_open") and shown.opens == 1

        async def b_reports_it() -> bool:  # B never failed a call, yet its heartbeat shows it
            hb = {w.worker_id: w for w in await client.broker.workers()}.get("b")
            return hb is not None and hb.breakers.get("model:fake-brk") in ("open", "half_open")

        await eventually(b_reports_it, timeout=10)
        await asyncio.sleep(3.5)  # three cooldowns of outage: only time to await
        t_up = time.time()
        provider.down.clear()
        results = await asyncio.gather(*(outcome(h, b, timeout=30) for h in [first, *later]))
    assert results == ["ok"] * 5
    after_open = provider.between(opened + 0.35, t_up)  # calls in flight when it opened aside
    # One probe per cooldown (1 s) at most (plus one for the edge), none before the first
    # cooldown. The outage lasts from the opening to t_up: 3.5 s after B reported the breaker,
    # but B's start and report take longer on a loaded machine, so the bound is that span's.
    assert 1 <= len(after_open) <= max(4, int(t_up - opened - 1.0) + 1), after_open
    assert after_open[0][0] >= opened + 1.0 - 0.05  # the Redis and test clocks are one host's
    for (_, end), (nxt, _) in itertools.pairwise(after_open):
        assert nxt >= end  # never two probes at once, across the fleet
        assert nxt - end >= 0.9  # a failed probe opens it for another cooldown
