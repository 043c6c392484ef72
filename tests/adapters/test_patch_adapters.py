"""Changing an adapter agent's prompt and tools for new runs only (``stalwart.kit.Patched``).

Real worker processes: runs start on ``PATCH_DEPLOY=v1`` workers and are held inside their
tool call; the v1 worker is SIGKILLed; ``PATCH_DEPLOY=v2`` workers (new prompt, one more
tool, behind ``Patched("prompt-v2", ...)``) finish them with the v1 agent, and start new
runs with the v2 agent. Without the patch the same resume fails with NonDeterminismError
(``test_openai_agents.test_tool_renamed_between_crash_and_resume_is_nondeterminism``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("agents")
pytest.importorskip("pydantic_ai")

import redis.asyncio as aioredis

from stalwart import Client, Settings
from tests.adapters.patch_apps import PROMPTS
from tests.conftest import Servers, worker_pool
from tests.helpers import (
    eventually,
    journaled,
    mark_gated,
    open_gate,
    rid,
)

pytestmark = pytest.mark.slow

APP = "tests.adapters.patch_apps:app"
V1 = f"{PROMPTS[1]} | tools=lookup"
V2 = f"{PROMPTS[2]} | tools=cite,lookup"


def output(agent: str, data: Any) -> Any:
    assert isinstance(data, dict), data
    return data["final_output"] if agent == "oa-patched" else data["output"]


async def test_runs_in_flight_keep_their_prompt_and_tools_new_runs_get_the_new_ones(
    client: Client,
    settings: Settings,
    servers: Servers,
    supervisor: Any,
    counters: aioredis.Redis,
) -> None:
    agents = ["oa-patched", "pyd-patched"]
    run_ids = {agent: rid() for agent in agents}
    for run_id in run_ids.values():
        await mark_gated(counters, run_id, "lookup")
    env = {"OPENAI_AGENTS_DISABLE_TRACING": "1"}
    async with (
        worker_pool(APP, settings, servers, client, PATCH_DEPLOY="v1", **env) as v1,
        worker_pool(APP, settings, servers, client, PATCH_DEPLOY="v2", **env) as v2,
    ):
        a = await v1("v1")
        handles = {
            agent: await client.submit(agent, "q4?", run_id=run_id)
            for agent, run_id in run_ids.items()
        }
        for run_id in run_ids.values():  # model:1 journaled, the tool call is in flight
            await eventually(lambda r=run_id: journaled(client, r, "model:1"), timeout=30)
            await eventually(lambda r=run_id: lookup_started(counters, r), timeout=30)
        a.kill()
        await v2("v2")
        await asyncio.gather(*(open_gate(counters, r, "lookup") for r in run_ids.values()))
        old = {a: await h.result(timeout=60) for a, h in handles.items()}
        fresh = {a: await client.submit(a, "q4?") for a in agents}
        new = {a: await h.result(timeout=60) for a, h in fresh.items()}
    for agent in agents:
        assert output(agent, old[agent]) == V1, agent  # resumed on v2 with the v1 agent
        assert not await journaled(client, run_ids[agent], "patch:prompt-v2")
        assert output(agent, new[agent]) == V2, agent
        assert await journaled(client, fresh[agent].run_id, "patch:prompt-v2")


async def lookup_started(counters: aioredis.Redis, run_id: str) -> bool:
    keys = [k async for k in counters.scan_iter(f"exec:{run_id}:*")]
    return bool(keys) and all([await counters.get(k) for k in keys])
