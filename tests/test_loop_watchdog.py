"""The suite's guard against blocking calls in coroutines (``_loop_watchdog`` in conftest)."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import LOOP_BLOCK_LIMIT, ROOT
from tests.helpers import LoopWatchdog


@pytest.mark.blocks_loop
async def test_watchdog_sees_a_blocking_call_and_where_it_was() -> None:
    dog = LoopWatchdog(threshold=0.4)
    dog.start()
    await asyncio.sleep(0.1)  # let it take its first beat
    time.sleep(0.5)  # noqa: ASYNC251 - the blocking call a coroutine must not make
    await asyncio.sleep(0.1)
    await dog.stop()
    assert dog.blocked
    assert 0.4 < dog.max_lag < 5.0
    assert "time.sleep(0.5)" in dog.stack
    assert "test_watchdog_sees_a_blocking_call" in dog.report()


async def test_watchdog_is_quiet_while_the_loop_only_waits() -> None:
    dog = LoopWatchdog(threshold=0.4)
    dog.start()
    await asyncio.sleep(0.5)
    await asyncio.to_thread(time.sleep, 0.5)  # blocking, but in a thread: fine
    await dog.stop()
    assert not dog.blocked, dog.report()
    assert dog.stack == ""


def test_watchdog_ignores_the_time_the_loop_is_stopped() -> None:
    # Between fixtures and the test body pytest stops the loop and runs plain code (a sync
    # fixture that stops a server, say): the loop is not blocked then, just not running.
    loop = asyncio.new_event_loop()
    try:
        dog = LoopWatchdog(threshold=0.4)

        async def begin() -> None:
            dog.start()
            await asyncio.sleep(0.1)

        loop.run_until_complete(begin())
        time.sleep(0.6)  # the loop is stopped: nothing runs on it
        loop.run_until_complete(asyncio.sleep(0.2))
        loop.run_until_complete(dog.stop())
        assert not dog.blocked, dog.report()
        assert dog.stack == ""
    finally:
        loop.close()


async def test_watchdog_does_not_count_garbage_collection() -> None:
    # A full collection of a process that imported every framework can pause it for a few
    # hundred ms on a loaded machine; that is no blocking call a test could avoid.
    junk = [[i] for i in range(1_000_000)]  # containers the collector has to walk
    dog = LoopWatchdog(threshold=0.4)
    dog.start()
    await asyncio.sleep(0.1)
    t0 = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - t0
    await asyncio.sleep(0.1)
    await dog.stop()
    del junk
    assert took > 0.02, "the collection was too short to tell anything"
    assert dog.max_lag < took / 2, (dog.max_lag, took)


async def blocks_on_purpose() -> None:
    """Collected only by the test below, in a pytest of its own."""
    time.sleep(1.5)  # noqa: ASYNC251 - on purpose


def test_an_async_test_that_blocks_the_loop_fails() -> None:
    assert 0 < LOOP_BLOCK_LIMIT < 1.4, "the limit must catch a time.sleep(1.5)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.pop("STALWART_TEST_LOOP_BLOCK_LIMIT", None)
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
            "-o", "python_functions=blocks_on_purpose", f"{__file__}::blocks_on_purpose",
        ],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "the event loop was blocked for" in out, out
    assert "time.sleep(1.5)" in out, out  # the report shows the blocking line
