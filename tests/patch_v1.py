"""Version 1 of the ``support`` agent, for the patching and deploy-gate tests.

``patch_v2`` is the same agent after a deploy, its changes behind ``ctx.patched`` markers;
``patch_v2_bad`` makes the same changes without markers (the deploy gate must refuse it).
Step bodies run in worker processes; ``hold`` blocks while the test has gated it.
"""

from __future__ import annotations

from typing import Any

from stalwart import App, RunContext, current_step
from tests.helpers import count_execution, wait_if_gated

app = App("patch-v1")

PROMPT_V1 = "answer briefly"


async def fetch(question: str) -> str:
    await count_execution()
    return f"facts about {question}"


async def draft(facts: str, style: str) -> str:
    await count_execution()
    return f"[{style}] {facts}"


async def hold() -> None:
    """Blocks while the test holds the run here (``mark_gated(..., "step:hold")``)."""
    info = current_step()
    assert info is not None
    await count_execution()
    await wait_if_gated(info.run_id, info.key)


async def answer(text: str, prompt: str) -> str:
    await count_execution()
    return f"{prompt} -> {text}"


@app.agent()
async def support(ctx: RunContext, question: str) -> dict[str, Any]:
    facts = await ctx.step("fetch", fetch, question)
    text = await ctx.step("draft", draft, facts, "plain")
    await ctx.step("hold", hold)
    reply = await ctx.step("answer", answer, text, PROMPT_V1)
    return {"checked": False, "reply": reply}
