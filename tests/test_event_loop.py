"""``STALWART_EVENT_LOOP``: asyncio's loop by default, uvloop when asked for (opt-in)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from stalwart import Client
from stalwart._loop import EVENT_LOOP_ENV, install_event_loop
from stalwart.errors import ConfigurationError
from stalwart.testing import StalwartProcess
from tests.conftest import WorkerFactory
from tests.helpers import eventually

uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (pip install '.[uvloop]')")


@pytest.fixture
def policy_restored() -> Iterator[None]:
    """install_event_loop sets the process's policy: put asyncio's back for the next test."""
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(None)


@pytest.mark.parametrize(
    ("value", "chosen"),
    [
        ("", "asyncio"),  # the default
        ("asyncio", "asyncio"),
        (" AsyncIO ", "asyncio"),
        ("uvloop", "uvloop"),
        ("auto", "uvloop"),  # uvloop is installed here
        ("UVLOOP", "uvloop"),
    ],
)
def test_the_loop_asked_for_is_installed(
    monkeypatch: pytest.MonkeyPatch, policy_restored: None, value: str, chosen: str
) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, value)
    assert install_event_loop() == chosen
    on_uvloop = isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
    assert on_uvloop == (chosen == "uvloop")


@pytest.mark.parametrize("value", ["uv", "trio", "uvloop,asyncio", "1"])
def test_an_unknown_loop_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, policy_restored: None, value: str
) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, value)
    with pytest.raises(ConfigurationError, match=EVENT_LOOP_ENV) as err:
        install_event_loop()
    assert "asyncio, uvloop, auto" in str(err.value)
    assert not isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)


def _started_on(text: str) -> str | None:
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "worker.started":
            return str(entry.get("event_loop"))
    return None


async def test_a_worker_on_uvloop_runs_steps_and_says_which_loop_it_is_on(
    client: Client, workers: WorkerFactory
) -> None:
    fast = await workers("loop-uv", STALWART_EVENT_LOOP="uvloop")
    plain = await workers("loop-asyncio")
    # Both workers serve the agent: runs land on either, and every one completes.
    handles = [await client.submit("typed", {"sku": f"sku-{i}", "qty": i}) for i in range(1, 9)]
    for i, handle in enumerate(handles, start=1):
        assert (await handle.result(timeout=30))["total"] == 2 * i

    async def started_on(proc: StalwartProcess) -> str | None:
        return _started_on(proc.log_text())

    assert await eventually(lambda: started_on(fast)) == "uvloop"
    assert await eventually(lambda: started_on(plain)) == "asyncio"
