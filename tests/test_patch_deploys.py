"""Deploying patched code over runs in flight, and the deploy gate, with real workers.

``tests.patch_v1`` workers start runs and are SIGKILLed mid-run; ``tests.patch_v2`` workers
(its changes behind ``ctx.patched``) finish them; ``stalwart replay --recent`` passes v2 and
refuses ``tests.patch_v2_bad`` (the same changes without markers).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from stalwart import Client, Settings
from stalwart.operations import replay_recent
from tests import patch_v2
from tests.conftest import Servers, worker_pool
from tests.helpers import eventually, execs, journaled, mark_gated, open_gate, rid
from tests.patch_v1 import PROMPT_V1
from tests.patch_v2 import PROMPT_V2
from tests.test_cli import Result, _env, run_cli

pytestmark = pytest.mark.slow

TEXT = "[plain] facts about {q}"


@pytest.fixture
def cli(settings: Settings, tmp_path: Path) -> Any:
    """``await cli("replay", ...)`` against this test's servers and namespace."""
    assert settings.nats_url and settings.redis_url
    urls = ["--nats-url", settings.nats_url, "--redis-url", settings.redis_url]
    urls += ["--namespace", settings.namespace]
    env = _env(tmp_path)

    async def call(*args: str) -> Result:
        return await run_cli(*args, *urls, env=env, timeout=60.0)

    return call


def reply(prompt: str, q: str) -> str:
    return f"{prompt} -> {TEXT.format(q=q)}"


async def test_v1_runs_in_flight_finish_on_v2_through_patch_markers(
    client: Client,
    settings: Settings,
    servers: Servers,
    supervisor: Any,
    counters: aioredis.Redis,
) -> None:
    old = [rid() for _ in range(3)]
    for run_id in old:
        await mark_gated(counters, run_id, "step:hold")
    async with (
        worker_pool("tests.patch_v1:app", settings, servers, client) as v1,
        worker_pool("tests.patch_v2:app", settings, servers, client) as v2,
    ):
        # Build ids as the apps name them (v2 declares compatible_with=["patch-v1"]).
        a = await v1("v1", STALWART_BUILD="patch-v1")
        handles = [await client.submit("support", f"q{i}", run_id=r) for i, r in enumerate(old)]
        for run_id in old:  # each is inside hold, past draft (the first patch point)
            await eventually(lambda r=run_id: execs(counters, r, "step:hold"), timeout=20)
        a.kill()  # SIGKILL with the runs in flight
        await v2("v2", STALWART_BUILD="patch-v2")
        await asyncio.gather(*(open_gate(counters, r, "step:hold") for r in old))
        results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
        fresh = await client.submit("support", "new")
        new_result = await fresh.result(timeout=30)
    for i, (run_id, result) in enumerate(zip(old, results, strict=True)):
        # Old path before the patch point it had passed (no check), new prompt after it.
        assert result == {"checked": False, "reply": reply(PROMPT_V2, f"q{i}")}, run_id
        assert await execs(counters, run_id, "step:check") == 0
        assert await execs(counters, run_id, "step:draft") == 1  # replayed on v2, not re-run
        assert await journaled(client, run_id, "patch:prompt-v2")
        assert not await journaled(client, run_id, "patch:check-facts")
        assert (await client.handle(run_id).status()).status == "completed"
    assert new_result == {"checked": True, "reply": reply(PROMPT_V2, "new")}
    assert await journaled(client, fresh.run_id, "patch:check-facts")


async def test_the_deploy_gate_refuses_an_incompatible_change_and_passes_a_patched_one(
    client: Client, settings: Settings, servers: Servers, cli: Any, counters: aioredis.Redis
) -> None:
    held = rid()
    await mark_gated(counters, held, "step:hold")
    async with worker_pool("tests.patch_v1:app", settings, servers, client) as v1:
        await v1("v1")
        for i in range(3):
            h = await client.submit("support", f"q{i}")
            assert await h.result(timeout=30) == {
                "checked": False,
                "reply": reply(PROMPT_V1, f"q{i}"),
            }
        await client.submit("support", "held", run_id=held)
        await eventually(lambda: execs(counters, held, "step:hold"), timeout=20)

        ok = await cli("replay", "--recent", "5", "--agent", "support", "tests.patch_v2:app")
        assert ok.code == 0, ok
        assert "3 run(s) replayed, 3 match, 0 diverged: PASS" in ok.out

        bad = await cli("replay", "--recent", "5", "--agent", "support", "tests.patch_v2_bad:app")
        assert bad.code == 1, bad
        assert "3 diverged: FAIL" in bad.out
        assert "DIVERGED at step step:check" in bad.out
        assert "the code asks for step 'check' (step:check)" in bad.out

        as_json = await cli(
            "replay",
            "--recent",
            "2",
            "--agent",
            "support",
            "--include-running",
            "-o",
            "json",
            "tests.patch_v2_bad:app",
        )
        assert as_json.code == 1, as_json
        report = json.loads(as_json.out)
        assert (report["passed"], report["checked"], report["diverged"]) == (False, 2, 2)
        # Newest first: the run in flight is checked as far as its journal goes.
        assert report["reports"][0]["run_id"] == held
        assert report["reports"][0]["step"] == "step:check"

        # The library call, and clear errors for bad arguments.
        gate = await replay_recent(client, patch_v2.app, "support", recent=10, include_running=True)
        assert gate.passed and gate.checked == 4, gate.render()
        usage = await cli("replay", "--recent", "5", "tests.patch_v2:app")
        assert usage.code == 2 and "--agent" in usage.err, usage
        unknown = await cli("replay", "--recent", "5", "--agent", "nope", "tests.patch_v2:app")
        assert unknown.code != 0 and "nope" in unknown.err, unknown
        await open_gate(counters, held, "step:hold")
