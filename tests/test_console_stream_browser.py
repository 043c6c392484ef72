"""The run page's streamed output in a real browser (issue #17): a worker SIGKILLed in the
middle of a streamed step; the page shows the reset marker and the final text once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.conftest import worker_pool
from tests.helpers import gated_key, mark_gated, rid
from tests.test_console_browser import TOKEN, WAIT_MS, _chromium, _console, _shot

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stalwart import Client, Settings
    from tests.conftest import Servers

pytestmark = pytest.mark.slow


@pytest.fixture
async def console_url(settings: Settings) -> AsyncIterator[str]:
    async with _console(settings, token=TOKEN) as url:
        yield url


def text_of(name: str, chunks: int = 6) -> str:
    return "".join(f"{name}-{i} " for i in range(chunks))


async def test_the_run_page_streams_text_and_marks_a_failover_reset(
    client: Client, settings: Settings, servers: Servers, supervisor, counters, console_url: str
) -> None:
    chromium = _chromium()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=WAIT_MS)
    async with worker_pool("tests.stream_apps:app", settings, servers, client) as start:
        a = await start("stream-a")
        run_id = rid()
        await mark_gated(counters, run_id, "step:model1")
        handle = await client.submit("streamer", {"steps": 2}, run_id=run_id)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(WAIT_MS)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(console_url)
                await page.fill("#token", TOKEN)
                await page.click("form.login button")
                await page.goto(f"{console_url}#/runs/{run_id}")
                step1 = page.locator('.stream-step[data-step="step:model1"]')
                # Worker A streamed three chunks of model1, then holds on its gate.
                await expect(step1.locator(".stream-text")).to_have_text(
                    text_of("model1", 3).rstrip()
                )
                a.kill()
                await counters.delete(gated_key(run_id, "step:model1"))
                await start("stream-b")
                await expect(step1.locator(".stream-reset")).to_have_text(
                    "reset (attempt 1, failover)"
                )
                await expect(step1.locator(".stream-text")).to_have_text(text_of("model1").rstrip())
                await expect(step1).to_have_class("stream-step done")
                # model0 (a ctx.step, not a model call) completed before the page attached.
                step0 = page.locator('.stream-step[data-step="step:model0"]')
                assert await step0.count() == 0
                assert await handle.result(timeout=10) == text_of("model0") + text_of("model1")
                await expect(page.locator(".record .badge").first).to_have_text("completed")
                await _shot(page, "run-stream")
                assert errors == []
            finally:
                await browser.close()
