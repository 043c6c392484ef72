"""Version 2 of the deploy tests' agent: a changed prompt and one step added (``tools``).

Replaying a v1 journal with this code fails (the ``render`` step's arguments differ): the
builds routing must keep v1 runs on v1 workers.
"""

from __future__ import annotations

from stalwart import App, RunContext
from tests.deploy_v1 import answer, hold, render

app = App("deploy")

PROMPT = "You are a concise, helpful assistant. Cite your sources."


async def tools(question: str) -> list[str]:
    return ["search"] if "?" in question else []


@app.agent("assistant")
async def assistant(ctx: RunContext, question: str) -> dict[str, str]:
    text = await ctx.step("render", render, PROMPT, question)
    await hold(ctx.run_id)
    await ctx.step("tools", tools, question)
    reply = await ctx.step("answer", answer, text)
    return {"code": "v2", "reply": reply}
