"""``patch_v2``'s changes without patch markers: incompatible with runs version 1 started."""

from __future__ import annotations

from typing import Any

from stalwart import App, RunContext
from tests.patch_v1 import answer, draft, fetch, hold
from tests.patch_v2 import PROMPT_V2, check

app = App("patch-v2-bad")


@app.agent()
async def support(ctx: RunContext, question: str) -> dict[str, Any]:
    facts = await ctx.step("fetch", fetch, question)
    checked = await ctx.step("check", check, facts)
    text = await ctx.step("draft", draft, facts, "plain")
    await ctx.step("hold", hold)
    reply = await ctx.step("answer", answer, text, PROMPT_V2)
    return {"checked": checked, "reply": reply}
