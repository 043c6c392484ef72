"""The console end to end in a real browser: Debian's headless chromium driven by Playwright,
against real servers, a real ``stalwart console`` process and real worker processes.

It logs in with the token, watches a run survive a SIGKILLed worker (two epochs on two
workers, the failover marked, the result shown), cancels a run with the button, filters the
runs list, and checks that hostile text in a run is shown as text. With
``STALWART_SCREENSHOTS=1`` it saves the screenshots docs/operations.md shows.
Under ``CI=true`` a missing browser fails the test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator

import pytest

from stalwart import Client, Settings
from tests.conftest import ROOT, WorkerFactory
from tests.helpers import eventually, journaled, open_gate, rid

pytestmark = pytest.mark.slow

TOKEN = "browser-test-token-0123456789abcdef"
HOSTILE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
SHOTS = ROOT / "docs" / "img"
WAIT_MS = 30_000


def _chromium() -> str:
    path = os.environ.get("STALWART_CHROMIUM") or shutil.which("chromium")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        path = None
    if not path:
        if os.environ.get("CI") == "true":
            pytest.fail("the console's browser test needs Debian's chromium and playwright")
        pytest.skip("no chromium (apt-get install chromium) or no playwright")
    return path


@contextlib.asynccontextmanager
async def _console(settings: Settings, *flags: str, token: str = "") -> AsyncIterator[str]:
    """A ``stalwart console`` process on a free port; the URL it printed."""
    assert settings.nats_url and settings.redis_url
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
        ),
        "STALWART_CONSOLE_TOKEN": token,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stalwart", "console", "--port", "0", *flags,
        "--nats-url", settings.nats_url, "--redis-url", settings.redis_url,
        "--namespace", settings.namespace,
        env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = b""
    drain = None
    try:
        async with asyncio.timeout(30):
            while b"stalwart console" not in seen:
                line = await proc.stderr.readline()
                if not line:
                    raise AssertionError(f"the console exited: {seen.decode()}")
                seen += line
        url = re.search(rb"http://\S+", seen.split(b"stalwart console")[-1])
        assert url, seen
        # Keep reading its stderr: a full pipe would stall the console.
        drain = asyncio.create_task(proc.stderr.read())
        yield url.group().decode()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            await drain


@pytest.fixture
async def console_url(settings: Settings) -> AsyncIterator[str]:
    async with _console(settings, token=TOKEN) as url:
        assert "#token=" not in url  # a token of the operator's is never printed
        yield url


async def _shot(page, name: str) -> None:
    if os.environ.get("STALWART_SCREENSHOTS") == "1":
        path = str(SHOTS / f"console-{name}.png")
        await page.screenshot(path=path)
        if shutil.which("pngquant"):  # 4x smaller for the docs (apt-get install pngquant)
            quant = await asyncio.create_subprocess_exec(
                "pngquant", "--force", "--skip-if-larger", "--quality=70-95", "--output", path, path
            )
            await quant.wait()


async def test_console_in_a_browser_shows_failover_cancels_and_filters(
    client: Client, workers: WorkerFactory, supervisor, counters, console_url: str
) -> None:
    chromium = _chromium()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=WAIT_MS)

    a = await workers("worker-a")
    survivor = rid()
    handle = await client.submit("ten", {"pause_after": 5}, run_id=survivor)
    await eventually(lambda: journaled(client, survivor, "step:s5"), timeout=30)
    dead = await client.submit("nobody", HOSTILE, require_registered=False)
    await client.store.dead_letter(dead.run_id, "nobody", f"undeliverable {HOSTILE}")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))

            # Log in with the token, as an operator would.
            await page.goto(console_url)
            await page.fill("#token", "not the token")
            await page.click("form.login button")
            await expect(page.locator("#login-error")).to_contain_text("wrong access token")
            await page.fill("#token", TOKEN)
            await page.click("form.login button")
            await expect(page.locator(f'tr[data-run="{survivor}"]')).to_be_visible()

            # SIGKILL the worker that owns the run; the supervisor re-places it on another.
            a.kill()
            await open_gate(counters, survivor, "after")
            await workers("worker-b")
            await page.goto(f"{console_url}#/runs/{survivor}")
            await expect(page.locator("#result")).to_have_text("550", timeout=WAIT_MS)
            epochs = page.locator("ol.epochs li")
            await expect(epochs).to_have_count(2)
            assert await epochs.nth(0).get_attribute("data-worker") == "worker-a"
            assert await epochs.nth(1).get_attribute("data-worker") == "worker-b"
            assert await epochs.nth(1).get_attribute("data-cause") == "failover"
            await expect(epochs.nth(1)).to_contain_text("without an owner")
            await expect(page.locator('tr[data-step="step:s10"]')).to_be_visible()
            await expect(page.locator("#events li").first).to_be_visible()  # the SSE stream
            assert await handle.result(timeout=5) == 550
            await _shot(page, "run-failover")

            # Cancel a run that sleeps in a durable wait, with the button.
            napper = await client.submit("napper", 600)
            await page.goto(f"{console_url}#/runs/{napper.run_id}")
            await expect(page.locator("#waits tbody tr")).to_contain_text("waiting")
            await page.click("#cancel")
            await expect(page.locator(".record .badge").first).to_have_text("cancelled")
            assert (await napper.status()).status == "cancelled"

            # Filters: by status, and by run id.
            await page.goto(f"{console_url}#/runs?status=cancelled")
            rows = page.locator("#runs tbody tr")
            await expect(rows).to_have_count(1)
            assert await rows.first.get_attribute("data-run") == napper.run_id
            await page.goto(f"{console_url}#/runs?to=2001-01-01T00:00")
            await expect(page.locator("#no-runs")).to_be_visible()
            await page.goto(f"{console_url}#/runs?from=2001-01-01T00:00&agent=napper")
            await expect(rows).to_have_count(1)
            await page.goto(f"{console_url}#/runs")
            await page.fill("#f-search", survivor)
            await page.click("#f-apply")
            await expect(rows).to_have_count(1)
            assert await rows.first.get_attribute("data-run") == survivor
            await page.goto(f"{console_url}#/runs")
            await expect(rows).to_have_count(3)
            # Live: a new run shows up without a reload, pushed by the all-runs event stream.
            await expect(page.locator("#live")).to_have_text("· live")
            late = await client.submit("ten", {}, run_id=rid())
            await expect(page.locator(f'tr[data-run="{late.run_id}"]')).to_be_visible()
            await late.result(timeout=30)
            await expect(page.locator(f'tr[data-run="{late.run_id}"] .badge')).to_have_text(
                "completed"
            )
            await _shot(page, "runs")

            # Hostile text in a run is text: no element made, nothing run.
            await page.goto(f"{console_url}#/runs/{dead.run_id}")
            await expect(page.locator("#run-error")).to_contain_text('<img src=x onerror="')
            await expect(page.locator("#result-section")).to_be_visible()
            assert await page.locator("main img, main script").count() == 0
            assert await page.evaluate("window.__xss") is None

            await page.goto(f"{console_url}#/workers")
            await expect(page.locator('tr[data-worker="worker-b"]')).to_be_visible()
            await expect(page.locator('tr[data-worker="worker-a"]')).to_have_count(
                0, timeout=WAIT_MS
            )
            await _shot(page, "workers")
            await page.goto(f"{console_url}#/agents")
            # One row per lane: the plain lane and the build lane of the workers' build.
            await expect(page.locator('tr[data-agent="ten"]').first).to_be_visible()
            await _shot(page, "agents")
            assert errors == []

            # Read-only, with the token the console made: the printed URL logs in by its
            # fragment, and the actions are hidden (the API refuses them: test_console_api).
            async with _console(client.settings, "--read-only") as login_url:
                assert "#token=" in login_url
                await page.goto(login_url)
                await expect(page.locator("#mode")).to_contain_text("read-only")
                assert "token" not in page.url  # the fragment is dropped at once
                await page.goto(login_url.split("#")[0] + f"#/runs/{napper.run_id}")
                await expect(page.locator("#epoch-section")).to_be_visible()
                assert await page.locator("#actions, #cancel, #retry, #fork").count() == 0
            assert errors == []
        finally:
            await browser.close()
