"""Agents the test suite runs in real worker processes (``tests.apps:app``).

Step bodies count their executions in Redis (``COUNTER_REDIS_URL``), outside the worker, so a
test can prove which bodies ran how often across SIGKILLs. Gates are Redis lists a body or
the agent blocks on until the test pushes a token: they hold a run at an exact point.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgspec

from stalwart import App, RunContext, current_step
from tests.helpers import count_execution, counters, exec_key, wait_gate

app = App("tests")


class TenSteps(msgspec.Struct):
    pause_after: int = 0
    """Block in agent code (outside any step) after this step until the 'after' gate opens."""
    block_in: int = 0
    """Block inside this step's body (after counting it) until the 'in' gate opens."""


async def numbered(i: int) -> int:
    await count_execution()
    return i * 10


@app.agent("ten")
async def ten(ctx: RunContext, inp: TenSteps) -> int:
    total = 0
    for i in range(1, 11):
        if i == inp.block_in:
            total += await ctx.step(f"s{i}", blocking, i)
        else:
            total += await ctx.step(f"s{i}", numbered, i)
        if i == inp.pause_after:
            await wait_gate(ctx.run_id, "after")
    return total


async def blocking(i: int) -> int:
    await count_execution()
    info = current_step()
    assert info is not None
    await wait_gate(info.run_id, "in")
    return i * 10


async def quick(i: int) -> int:
    await count_execution()
    return i


@app.agent("fast")
async def fast(ctx: RunContext, n: int) -> int:
    """Three short steps; for load tests."""
    total = 0
    for i in range(3):
        total += await ctx.step("q", quick, n + i)
    return total


class Order(msgspec.Struct):
    sku: str
    qty: int


@app.agent("typed")
async def typed(ctx: RunContext, order: Order) -> dict[str, Any]:
    price = await ctx.step("price", quick, order.qty)
    return {"sku": order.sku, "total": price * 2}


def explode(what: str) -> None:
    raise ValueError(f"tool broke on {what}")


@app.agent("failing")
async def failing(ctx: RunContext, what: str) -> str:
    await ctx.step("ok", quick, 1)
    await ctx.step("boom", explode, what)
    return "unreachable"


async def versioned(x: int) -> int:
    await count_execution()
    return x


@app.agent("versioned")
async def versioned_agent(ctx: RunContext, _: None) -> int:
    """Step a's argument depends on AGENT_VERSION: a code change between crash and resume."""
    a = await ctx.step("a", versioned, int(os.environ.get("AGENT_VERSION", "1")))
    await wait_gate(ctx.run_id, "after")
    b = await ctx.step("b", versioned, 1)
    return a + b


@app.agent("sleepy")
async def sleepy(ctx: RunContext, n: int) -> int:
    """n steps that each wait on the 'in' gate: lets a test cancel or drain between steps."""
    for i in range(n):
        await ctx.step("wait", blocking, i)
    return n


# -- failure handling (issue: retries, timeouts, budgets, at-most-once) -------------------------

from stalwart import (  # noqa: E402
    NO_RETRY,
    Limits,
    NonRetryableError,
    Policies,
    RetryPolicy,
    StepSpec,
    durable,
)
from stalwart.actors import Usage  # noqa: E402

STEADY_RETRY = RetryPolicy(max_attempts=5, initial_interval=2.0, backoff=1.0, jitter=0.0)


@durable(retry=STEADY_RETRY)
async def flaky(fail_times: int) -> str:
    """Fails its first ``fail_times`` executions (counted in Redis), then succeeds."""
    await count_execution()
    info = current_step()
    assert info is not None
    n = int(await counters().get(exec_key(info.run_id, info.key)) or 0)
    await counters().rpush(
        f"attempts:{info.run_id}", f"{info.attempt}:{os.environ.get('WORKER_NAME', '')}"
    )
    if n <= fail_times:
        raise ConnectionError(f"flaky failure {n}")
    return f"ok after {n}"


@app.agent("flaky")
async def flaky_agent(ctx: RunContext, fail_times: int) -> str:
    return await ctx.step("flaky", flaky, fail_times)


async def refuse() -> None:
    await count_execution()
    raise NonRetryableError("card declined")


@app.agent("nonretryable")
async def nonretryable_agent(ctx: RunContext, _: None) -> None:
    await ctx.step("refuse", refuse)


@durable(timeout=0.3, retry=RetryPolicy(max_attempts=2, initial_interval=0.05, jitter=0.0))
async def too_slow() -> None:
    await count_execution()
    await wait_gate(current_step().run_id, "never")  # type: ignore[union-attr]


@app.agent("slow_step")
async def slow_step_agent(ctx: RunContext, _: None) -> None:
    await ctx.step("too_slow", too_slow)


@app.agent("deadline", policies=Policies(run_timeout=4.0))
async def deadline_agent(ctx: RunContext, _: None) -> int:
    await ctx.step("first", quick, 1)
    await wait_gate(ctx.run_id, "after")
    await ctx.step("wait", blocking, 2)  # never released: the deadline ends the run
    return 0


def _usage(value: Any) -> Usage:
    return Usage(model="gpt-4o", input_tokens=value["in"], output_tokens=value["out"])


async def fake_model(n: int) -> dict[str, int]:
    await count_execution()
    return {"in": 60, "out": 40, "n": n}


@app.agent("chatty", policies=Policies(limits=Limits(max_iterations=3)))
async def chatty(ctx: RunContext, calls: int) -> int:
    return await _model_calls(ctx, calls)


@app.agent("tokens", policies=Policies(limits=Limits(max_tokens=250)))
async def tokens_agent(ctx: RunContext, calls: int) -> int:
    return await _model_calls(ctx, calls)


@app.agent("costly", policies=Policies(limits=Limits(max_cost_usd=0.0005)))
async def costly_agent(ctx: RunContext, calls: int) -> int:
    return await _model_calls(ctx, calls)


async def _model_calls(ctx: RunContext, calls: int) -> int:
    for n in range(calls):
        await ctx.call(
            StepSpec(key=f"model:{n + 1}", kind="model", name="gpt-4o", fp=str(n), usage=_usage),
            lambda n=n: fake_model(n),
        )
    return calls


@app.agent("looping")
async def looping(ctx: RunContext, _: None) -> None:
    for i in range(10):
        await ctx.call(
            StepSpec(key=f"tool:call{i}", kind="tool", name="search", fp="same-args"),
            lambda: quick(0),
        )


async def charge(amount: int) -> str:
    """A payment: at-most-once. Records the idempotency key it was called with."""
    await count_execution()
    info = current_step()
    assert info is not None
    await counters().rpush(f"idem:{info.run_id}", info.idempotency_key)
    await wait_gate(info.run_id, "in")
    return f"charged {amount}"


charge_once = durable(at_most_once=True, retry=NO_RETRY)(charge)


async def check_payment(idempotency_key: str, amount: int) -> str:
    await counters().rpush(f"reconciled:{idempotency_key.split(':')[0]}", idempotency_key)
    return f"reconciled {amount}"


async def charge2(amount: int) -> str:
    return await charge(amount)


charge_reconciled = durable(at_most_once=True, reconcile=check_payment)(charge2)


@app.agent("pay")
async def pay(ctx: RunContext, amount: int) -> str:
    return await ctx.step("charge", charge_once, amount)


@app.agent("pay_reconciled")
async def pay_reconciled(ctx: RunContext, amount: int) -> str:
    return await ctx.step("charge", charge_reconciled, amount)


# -- signals and durable waits -------------------------------------------------------------------

from stalwart.actors import WaitTimeout  # noqa: E402


@app.agent("approval")
async def approval(ctx: RunContext, amount: int) -> dict[str, Any]:
    quote = await ctx.step("quote", quick, amount)
    decision = await ctx.wait_for_signal("approve")
    return {"quote": quote, "decision": decision}


@app.agent("napper")
async def napper(ctx: RunContext, seconds: float) -> str:
    await ctx.step("before", quick, 1)
    await ctx.sleep(seconds)
    await ctx.step("after", quick, 2)
    return "rested"


@app.agent("impatient")
async def impatient(ctx: RunContext, _: None) -> str:
    try:
        await ctx.wait_for_signal("never", timeout=1.0)
    except WaitTimeout:
        return "timed out"
    return "got it"


async def paced(i: int) -> int:
    await count_execution()
    await asyncio.sleep(0.15)
    return i


@app.agent("steady")
async def steady(ctx: RunContext, n: int) -> int:
    """n steps of 150 ms each: runs that are in flight long enough to restart servers under."""
    for i in range(n):
        await ctx.step("p", paced, i)
    return n


async def charge3(amount: int) -> str:
    return await charge(amount)


charge_ask_human = durable(at_most_once=True, on_unknown="signal")(charge3)


@app.agent("pay_ask_human")
async def pay_ask_human(ctx: RunContext, amount: int) -> str:
    return await ctx.step("charge", charge_ask_human, amount)


# -- non-finite floats in step and run results ------------------------------------------


async def non_finite(which: str) -> float:
    return float(which)


@app.agent("non_finite")
async def non_finite_agent(ctx: RunContext, which: str) -> dict[str, Any]:
    """A step result and a run result that are NaN or an infinity (``which``: nan, inf, -inf)."""
    value = await ctx.step("f", non_finite, which)
    return {"value": value, "nested": [value, 1.5]}
