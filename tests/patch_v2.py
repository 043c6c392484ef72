"""Version 2 of ``support`` (see ``patch_v1``): a step added and a prompt changed, each behind
a patch marker, so runs that version 1 started resume on this code."""

from __future__ import annotations

from typing import Any

from stalwart import App, RunContext
from tests.helpers import count_execution
from tests.patch_v1 import PROMPT_V1, answer, draft, fetch, hold

app = App("patch-v2", compatible_with=["patch-v1"])

PROMPT_V2 = "answer briefly and cite the facts"


async def check(facts: str) -> bool:
    await count_execution()
    return "facts" in facts


@app.agent()
async def support(ctx: RunContext, question: str) -> dict[str, Any]:
    facts = await ctx.step("fetch", fetch, question)
    checked = False
    if await ctx.patched("check-facts"):
        checked = await ctx.step("check", check, facts)
    text = await ctx.step("draft", draft, facts, "plain")
    await ctx.step("hold", hold)
    prompt = PROMPT_V2 if await ctx.patched("prompt-v2") else PROMPT_V1
    reply = await ctx.step("answer", answer, text, prompt)
    return {"checked": checked, "reply": reply}
