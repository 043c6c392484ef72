"""Agents for the payload encryption tests (``tests.apps_encrypted:app``), run in real worker
processes whose keyring comes from ``STALWART_ENCRYPTION_KEYS_FILE``.

Every payload these agents handle carries the caller's marker secret: the input, step
results, a retried attempt's and a failed step's error messages, emitted event data, the
signal payload and the result. The tests then look for the marker everywhere the servers
keep anything.
"""

from __future__ import annotations

from typing import Any

from stalwart import App, RetryPolicy, RunContext, StepFailed, current_step, durable
from tests.helpers import count_execution, wait_gate

app = App("encrypted")

_RETRY_ONCE = RetryPolicy(max_attempts=2, initial_interval=0.05, backoff=1.0, jitter=0.0)


async def echo(secret: str) -> str:
    await count_execution()
    return f"echo {secret}"


@durable(retry=_RETRY_ONCE)
async def flaky(secret: str) -> str:
    """Fails its first attempt (a journaled StepAttempt with the secret in its message)."""
    await count_execution()
    info = current_step()
    assert info is not None
    if info.attempt == 1:
        raise RuntimeError(f"first attempt leaks {secret}")
    return f"second attempt {secret}"


@durable(retry=RetryPolicy(max_attempts=1))
async def broken(secret: str) -> None:
    await count_execution()
    raise ValueError(f"broken step leaks {secret}")


@app.agent("vault")
async def vault(ctx: RunContext, inp: dict[str, Any]) -> dict[str, Any]:
    secret = inp["secret"]
    first = await ctx.step("echo", echo, secret)
    if inp.get("pause"):
        await wait_gate(ctx.run_id, "after")  # the test SIGKILLs the worker here
    second = await ctx.step("flaky", flaky, secret)
    try:
        await ctx.step("broken", broken, secret)
    except StepFailed as exc:
        failed = str(exc)
    await ctx.emit("note", {"secret": secret, "n": 1})
    signal = await ctx.wait_for_signal("approve")
    return {"first": first, "second": second, "failed": failed, "signal": signal}


@app.agent("vault_fails")
async def vault_fails(ctx: RunContext, secret: str) -> None:
    await ctx.step("echo", echo, secret)
    raise RuntimeError(f"the run fails and leaks {secret}")


@app.agent("rotating")
async def rotating(ctx: RunContext, secret: str) -> list[str]:
    """Two steps, a gate between them: written under one key, finished under another."""
    first = await ctx.step("first", echo, secret)
    await wait_gate(ctx.run_id, "after")
    second = await ctx.step("second", echo, secret + "-2")
    return [first, second]
