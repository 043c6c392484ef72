"""Agents of the conversation and long-wait tests (``tests.conversation_apps:app``): plain
App agents.

``chat`` is one turn of a conversation: it reads the history, calls a scripted "model"
step that logs how many history items it was shown, appends the user's message and the
reply, and returns what it saw. Gates (see ``tests.helpers``) hold a turn mid-way.
"""

from __future__ import annotations

from typing import Any

from stalwart import App, Policies, RunContext, current_step
from tests.helpers import calls_key, count_execution, counters, wait_gate

app = App("tests-conversations")


async def model(history: list[Any], message: str) -> str:
    """A scripted model: its reply names how much history it saw (logged for the test)."""
    await count_execution()
    info = current_step()
    assert info is not None
    await counters().rpush(calls_key(info.run_id), str(len(history)))
    said = [m["content"] for m in history if m.get("role") == "user"]
    return f"reply to {message!r} having heard {said}"


@app.agent("chat")
async def chat(ctx: RunContext, inp: dict[str, Any]) -> dict[str, Any]:
    conv = ctx.conversation
    assert conv is not None, "chat runs need a conversation"
    seen = await conv.history()
    if inp.get("hold"):  # held after reading, before the model call
        await wait_gate(ctx.run_id, "hold")
    reply = await ctx.step("model", model, seen, inp["msg"])
    if inp.get("hold_model"):  # held after the model call, before the append
        await wait_gate(ctx.run_id, "model")
    await conv.append(
        [{"role": "user", "content": inp["msg"]}, {"role": "assistant", "content": reply}]
    )
    if inp.get("hold_after"):  # held after the append, before the end
        await wait_gate(ctx.run_id, "after")
    if inp.get("wait_after"):  # a durable wait after the append (a cancel wakes it)
        await ctx.wait_for_signal("go")
    return {"turn": conv.turn, "seen": len(seen), "reply": reply, "history": seen}


@app.agent("chat_deadline", policies=Policies(run_timeout=3.0))
async def chat_deadline(ctx: RunContext, inp: dict[str, Any]) -> dict[str, Any]:
    """``chat`` with a run deadline of 3 s (which a turn waiting for its turn counts too)."""
    return await chat(ctx, inp)


@app.agent("solo")
async def solo(ctx: RunContext, inp: Any) -> Any:
    """No conversation: ctx.conversation is None."""
    return ctx.conversation is None


@app.agent("approve_by")
async def approve_by(ctx: RunContext, timeout: float) -> Any:
    """A human approval with a deadline: the decision, or "expired"."""
    await ctx.step("ask", quick_ask)
    try:
        return await ctx.wait_for_signal("approve", timeout=timeout)
    except TimeoutError:
        return "expired"


async def quick_ask() -> str:
    await count_execution()
    return "asked"
