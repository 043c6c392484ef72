"""The console's Flow page in a real browser (Debian's chromium, Playwright), against real
servers, a real ``stalwart console`` process and a real worker process.

A worker of ``tests.flow_cc_apps`` holds its ``one-at-a-time`` concurrency slot with a run
that waits on a gate, so a second run is queued for the slot; a rate limit and a spend limit
are published beside it with usage and a waiting run. The page must show the usage against
the limits, the waiting runs linked to their run pages (which show what the run waits for),
the concurrency keys, an open shared breaker; resume and set-limit work from their buttons;
a read-only console shows no action. With ``STALWART_SCREENSHOTS=1`` it saves
docs/img/console-flow.png.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from stalwart import StepSpec
from stalwart.flow import (
    ADMIT,
    RESUME_SIGNAL,
    FlowCall,
    FlowStore,
    Outcome,
    RateLimit,
    SharedBreaker,
    SpendLimit,
    publish_rules,
)
from tests.conftest import worker_pool
from tests.helpers import eventually, open_gate, rid
from tests.test_console_browser import WAIT_MS, _chromium, _console, _shot

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from stalwart import Client, Settings
    from tests.conftest import Servers

pytestmark = pytest.mark.slow

TOKEN = "flow-browser-token-0123456789abcdef"
APP = "tests.flow_cc_apps:app"


class Down(Exception):
    status_code = 503


def _call(run: str) -> FlowCall:
    spec = StepSpec(key="model:1", kind="model", name="gpt-4o", fp="x")
    return FlowCall(run, "support", "model:gpt-4o", spec, 1)


async def _queued(client: Client, run_id: str) -> bool:
    return bool((await client.handle(run_id).status()).queued_for)


async def _running(client: Client, run_id: str) -> bool:
    return (await client.handle(run_id).status()).status == "running"


async def test_flow_page_shows_limits_and_waiting_runs_and_acts(
    settings: Settings, servers: Servers, client: Client, counters: aioredis.Redis
) -> None:
    chromium = _chromium()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=WAIT_MS)
    async with worker_pool(APP, settings, servers, client) as start:
        await start("worker-a")
        blocker = await client.submit("solo", {"gate": True}, run_id=rid())
        await eventually(lambda: _running(client, blocker.run_id), timeout=30)
        queued = await client.submit("solo", {}, run_id=rid())
        await eventually(lambda: _queued(client, queued.run_id), timeout=30)

        # Another app's rules beside the worker's, with usage and a run held by the spend limit.
        fs = FlowStore(client.store.redis, client.store.ns)
        rate = RateLimit(name="openai", resources="model:gpt-*", requests=500, tokens=200_000)
        spend = SpendLimit(name="daily-spend", limit_usd=50)
        brk = SharedBreaker(name="llm-breaker", resources="model:*", threshold=1, cooldown=60)
        await publish_rules(fs, [rate, spend, brk], "support")
        for n in range(3):
            assert await rate.bind(fs).acquire(_call(f"r{n}")) is ADMIT
        failing = _call("b1")
        assert await brk.bind(fs).acquire(failing) is ADMIT
        await brk.bind(fs).release(failing, Outcome(ok=False, error=Down("503")))
        held = await client.submit("nobody", None, require_registered=False)
        await fs.mark_waiting("daily-spend", held.run_id, 10**10)

        async with (
            _console(settings, token=TOKEN) as url,
            async_playwright() as pw,
        ):
            browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 1000})
                page.set_default_timeout(WAIT_MS)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
                await page.goto(url)
                await page.fill("#token", TOKEN)
                await page.click("form.login button")
                await expect(page.locator("#runs")).to_be_visible()
                await page.click('nav a[data-page="flow"]')

                cc = page.locator('tr[data-rule="one-at-a-time"]')
                await expect(cc).to_contain_text("1 running (1 per key)")
                await expect(cc.locator(f'a[data-run="{queued.run_id}"]')).to_be_visible()
                await expect(page.locator('tr[data-rule="openai"]')).to_contain_text(
                    "requests: 3 / 500"
                )
                await expect(page.locator('tr[data-rule="daily-spend"]')).to_contain_text(
                    "nothing spent"
                )
                key = page.locator('[data-cc="one-at-a-time"] tr[data-key="solo"]')
                await expect(key).to_contain_text("1 / 1")
                breaker = page.locator('tr[data-breaker="llm-breaker/model:gpt-4o"]')
                await expect(breaker.locator(".badge")).to_have_text("open")
                await expect(page.locator('tr[data-rule="llm-breaker"]')).to_contain_text(
                    "1 breaker(s) seen, 1 not closed"
                )
                assert await cc.locator("button").count() == 0  # a slot is not resumed
                await _shot(page, "flow")

                # The waiting run's page says what it waits for.
                await cc.locator(f'a[data-run="{queued.run_id}"]').click()
                await expect(page.locator("#queued-for")).to_have_text(
                    "concurrency one-at-a-time key solo"
                )
                await expect(page.locator("#flow-note")).to_contain_text(
                    "Waiting for a slot of concurrency limit one-at-a-time"
                )

                # The operator's actions: a new spend limit, and resume the held run.
                await page.goto(f"{url.split('#')[0]}#/flow")
                row = page.locator('tr[data-rule="daily-spend"]')
                await row.locator("input.usd").fill("75")
                await row.locator(".set-limit button[type=submit]").click()
                await expect(page.locator("#action-status")).to_have_text(
                    "daily-spend: limit $75; woke 0"
                )
                assert await fs.limit_override("daily-spend") == 75
                await expect(row).to_contain_text("(limit $75)")
                await row.locator("button.resume").click()
                await expect(page.locator("#action-status")).to_have_text(
                    "daily-spend: resumed 1 run(s)"
                )
                signals = await client.store.read_signals(held.run_id)
                assert [name for _, name, _ in signals] == [RESUME_SIGNAL]

                # The slot frees: the queued run runs, and the page follows without a reload.
                await open_gate(counters, blocker.run_id, "in")
                assert await queued.result(timeout=30) == queued.run_id
                await expect(cc.locator("a.waiting-run")).to_have_count(0)

                async with _console(settings, "--read-only") as ro_url:
                    await page.goto(ro_url)
                    await expect(page.locator("#mode")).to_contain_text("read-only")
                    await page.goto(ro_url.split("#")[0] + "#/flow")
                    await expect(page.locator('tr[data-rule="openai"]')).to_be_visible()
                    assert await page.locator("#flow button, #flow input").count() == 0
                assert errors == []
            finally:
                await browser.close()
