"""The demo agent that ``stalwart demo`` runs: a research agent with eight steps."""

from __future__ import annotations

import asyncio
from typing import Any

from stalwart.actors import App, RunContext

app = App("demo")

STEP_SECONDS = 0.4
TOPICS = ["pricing", "competitors", "churn", "regulation", "hiring", "supply"]


async def search(topic: str) -> dict[str, Any]:
    """Stands in for a tool call with network latency."""
    await asyncio.sleep(STEP_SECONDS)
    return {"topic": topic, "findings": f"3 sources on {topic}"}


async def plan(question: str) -> list[str]:
    """Stands in for a model call that plans the research."""
    await asyncio.sleep(STEP_SECONDS)
    return TOPICS


async def summarize(question: str, notes: list[dict[str, Any]]) -> str:
    """Stands in for the final model call."""
    await asyncio.sleep(STEP_SECONDS)
    return (
        f"{question}: {len(notes)} topics researched (" + ", ".join(n["topic"] for n in notes) + ")"
    )


@app.agent("research")
async def research(ctx: RunContext, question: str) -> dict[str, Any]:
    """Plan, search each topic, summarise: 1 + 6 + 1 steps."""
    topics = await ctx.step("plan", plan, question)
    notes = [await ctx.step("search", search, topic) for topic in topics]
    summary = await ctx.step("summarize", summarize, question, notes)
    return {"summary": summary, "steps": len(notes) + 2}
