"""Version 1 of the deploy tests' agent (tests/test_builds.py); deploy_v2.py is its next deploy.

The run renders a prompt (a step), then waits in agent code, outside any step, until the test
opens its flag (so a SIGKILL there makes the run replay its journal), then answers (a step).
"""

from __future__ import annotations

import asyncio

from stalwart import App, RunContext
from tests.helpers import counters

app = App("deploy")

PROMPT = "You are a helpful assistant."


def open_key(run_id: str) -> str:
    """The flag the test sets to let ``run_id`` go past its wait."""
    return f"deploy:open:{run_id}"


async def hold(run_id: str) -> None:
    for _ in range(1200):  # 60 s at most
        if await counters().exists(open_key(run_id)):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"flag of {run_id} never set")


async def render(prompt: str, question: str) -> str:
    return f"{prompt} Q: {question}"


async def answer(text: str) -> str:
    return f"answer to [{text}]"


@app.agent("assistant")
async def assistant(ctx: RunContext, question: str) -> dict[str, str]:
    text = await ctx.step("render", render, PROMPT, question)
    await hold(ctx.run_id)
    reply = await ctx.step("answer", answer, text)
    return {"code": "v1", "reply": reply}
