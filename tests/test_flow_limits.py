"""Flow control: shared rate limits and the spend guard, with real workers, a real Redis and
a loopback fake OpenAI server that records when each request arrived."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from tests.adapters.fake_llm import FakeLLM, Reply, fake_llm  # noqa: F401  (a fixture)
from tests.conftest import worker_pool
from tests.helpers import outcome

if TYPE_CHECKING:
    from stalwart import Client
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
    arrivals = [r.at for r in fake_llm.requests("fake-rpm")]
    assert len(arrivals) == runs and all(results)
    assert most_in_window(arrivals, per) <= n
    # The limit is what paced them: 200 at 30 per 2 s needs 6 full windows at least.
    assert took >= (runs // n - 1) * per
