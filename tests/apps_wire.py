"""Agents the wire-contract tests drive from other languages (``tests.apps_wire:app``).

No counters and no gates: a client that only speaks NATS and JSON can run each of them.
"""

from __future__ import annotations

from typing import Any

from stalwart import App, RunContext

app = App("wire")


async def _greeting(name: str) -> str:
    return f"hello {name}"


@app.agent("greet")
async def greet(ctx: RunContext, inp: dict[str, Any]) -> dict[str, Any]:
    """One step, then a wait for signal ``go``; returns both."""
    greeting = await ctx.step("greet", _greeting, str(inp.get("name", "")))
    go = await ctx.wait_for_signal("go")
    return {"greeting": greeting, "go": go}


@app.agent("big")
async def big(ctx: RunContext, size: int) -> dict[str, Any]:
    """A result of about ``size`` bytes (larger than one NATS message when asked)."""
    return {"blob": "x" * size, "size": size}


@app.agent("waiter")
async def waiter(ctx: RunContext, _: Any) -> str:
    """Waits for a signal that never comes: a run to cancel."""
    await ctx.wait_for_signal("never")
    return "signalled"
