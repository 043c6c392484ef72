"""Agents for the shared breaker and retry budget tests (``tests.flow_breaker_apps:app``).

Each run makes one model step, a real HTTP call to the test's loopback fake OpenAI server
(``FAKE_LLM_URL``). Retries are fast and many, so only the flow rules pace them: the tests
measure at the provider what the rules let through.
"""

from __future__ import annotations

from stalwart import App, Policies, RetryPolicy, RunContext
from stalwart.actors import StepSpec
from stalwart.flow import RetryBudget, SharedBreaker
from tests.flow_apps import _complete  # one copy of the call to the fake provider

FAST = RetryPolicy(max_attempts=200, initial_interval=0.05, max_interval=0.1, jitter=0.2)


app = App(
    "flowbreakers",
    policies=Policies(retry={"model": FAST}),
    flow=[
        RetryBudget(
            name="budget", resources="model:fake-budget", ratio=0.5, min_per_second=2, window=1.0
        ),
        # A probe whose worker is SIGKILLed hands the slot on after 2 s (default 60 s).
        SharedBreaker(
            name="breaker", resources="model:fake-brk", threshold=3, cooldown=1.0, probe_timeout=2
        ),
    ],
)


@app.agent("ask")
async def ask(ctx: RunContext, model: str) -> str:
    spec = StepSpec(key="model:1", kind="model", name=model, fp=model)
    reply = await ctx.call(spec, lambda: _complete(model, ctx.run_id))
    return str(reply["choices"][0]["message"]["content"])
