"""The ``stalwart`` command end to end: real subprocesses, real servers, a real worker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import ROOT
from tests.helpers import eventually

if TYPE_CHECKING:
    from stalwart import Client, Settings
    from tests.conftest import WorkerFactory

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def _env(state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    env["STALWART_STATE_DIR"] = str(state_dir)  # never pick up a developer's `stalwart dev`
    env["STALWART_LOG_FORMAT"] = "json"
    env.update(extra)
    return env


async def run_cli(*args: str, env: dict[str, str], timeout: float = 30.0) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stalwart",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"stalwart {' '.join(args)} did not exit within {timeout} s\n"
            f"{Result(-9, out.decode(), err.decode())}"
        ) from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def cli(settings: Settings, tmp_path: Path) -> Any:
    """``await cli("submit", "fast", "1")`` with this test's servers and namespace."""
    assert settings.nats_url and settings.redis_url
    urls = [
        "--nats-url",
        settings.nats_url,
        "--redis-url",
        settings.redis_url,
        "--namespace",
        settings.namespace,
        # No --lease-ttl: client commands do not take it (they hold no leases).
    ]
    env = _env(tmp_path)

    async def call(*args: str, timeout: float = 30.0) -> Result:
        return await run_cli(*args, *urls, env=env, timeout=timeout)

    return call


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- submit


async def test_submit_wait_prints_result(cli: Any, workers: WorkerFactory, client: Client) -> None:
    await workers()
    res = await cli("submit", "fast", "5", "--wait", "--timeout", "20")
    assert res.code == 0, res
    printed = json.loads(res.out)
    assert printed["result"] == 18  # 5 + 6 + 7
    assert RUN_ID.match(printed["run_id"]), res
    record = await client.handle(printed["run_id"]).status()
    assert record.status == "completed"
    assert record.agent == "fast"


async def test_submit_with_run_id_and_structured_input(
    cli: Any, workers: WorkerFactory, client: Client
) -> None:
    await workers()
    res = await cli("submit", "typed", '{"sku": "abc", "qty": 4}', "--run-id", "order-42", "--wait")
    assert res.code == 0, res
    assert json.loads(res.out) == {"run_id": "order-42", "result": {"sku": "abc", "total": 8}}
    # Submitting the same run id again returns the same run, it does not start a second one.
    again = await cli("submit", "typed", '{"sku": "abc", "qty": 4}', "--run-id", "order-42")
    assert again.code == 0, again
    assert again.out.strip() == "order-42"
    assert len(await client.store.read_journal("order-42")) == 3  # started, price, finished


async def test_submit_prints_run_id_and_status_completes(cli: Any, workers: WorkerFactory) -> None:
    await workers()
    res = await cli("submit", "fast", "1")
    assert res.code == 0, res
    run_id = res.out.strip()
    assert RUN_ID.match(run_id), res

    async def completed() -> dict[str, Any] | None:
        st = await cli("status", run_id)
        assert st.code == 0, st
        view = json.loads(st.out)
        return view if view["status"] == "completed" else None

    view = await eventually(completed, timeout=20, message=f"run {run_id} did not complete")
    assert view["run_id"] == run_id
    assert view["agent"] == "fast"
    assert view["result"] == 6  # 1 + 2 + 3
    assert view["epoch"] > 0
    assert view["worker"]
    assert "input" not in view


async def test_events_prints_the_run_history(
    cli: Any, workers: WorkerFactory, client: Client
) -> None:
    await workers()
    handle = await client.submit("fast", 2)
    assert await handle.result(timeout=20) == 9

    async def all_events() -> list[dict[str, Any]] | None:
        res = await cli("events", handle.run_id)
        assert res.code == 0, res
        events = _json_lines(res.out)
        return events if events and events[-1]["type"] == "run.completed" else None

    events = await eventually(all_events, timeout=10, message="run.completed never showed up")
    types = [e["type"] for e in events]
    assert types[0] == "run.accepted", types
    assert types[-1] == "run.completed", types
    assert types.count("step.completed") == 3, types
    assert "run.started" in types
    assert {e["run_id"] for e in events} == {handle.run_id}
    steps = [e["step"] for e in events if e["type"] == "step.completed"]
    assert steps == ["step:q", "step:q#2", "step:q#3"]
    assert events[-1]["data"]["result"] == 9


async def test_events_of_unknown_run_is_not_found(cli: Any, client: Client) -> None:
    # Issue #12: this used to exit 0 printing nothing (and wait forever with --follow).
    res = await cli("events", "never-submitted")
    assert res.code == 4, res  # EXIT_NOT_FOUND
    assert res.out.strip() == ""
    assert "RunNotFoundError" in res.err and "Traceback" not in res.err, res


async def test_runs_lists_the_run(cli: Any, workers: WorkerFactory, client: Client) -> None:
    await workers()
    handle = await client.submit("fast", 3)
    await handle.result(timeout=20)
    res = await cli("runs")
    assert res.code == 0, res
    lines = [line for line in res.out.splitlines() if handle.run_id in line]
    assert len(lines) == 1, res
    assert "fast" in lines[0] and "completed" in lines[0]


async def test_cancel_outcomes(cli: Any, workers: WorkerFactory, client: Client) -> None:
    await workers()
    done = await client.submit("fast", 1)
    await done.result(timeout=20)
    res = await cli("cancel", done.run_id)
    assert res.code == 0, res
    assert res.out.strip() == "terminal"

    missing = await cli("cancel", "no-such-run")
    assert missing.code == 4, missing  # EXIT_NOT_FOUND
    assert missing.out.strip() == "missing"

    # A run no worker serves stays accepted: cancelling it ends it at once.
    queued = await client.submit("ghost", 1, require_registered=False)
    res = await cli("cancel", queued.run_id, "--reason", "changed my mind")
    assert res.code == 0, res
    assert res.out.strip() == "cancelled"
    record = await queued.status()
    assert record.status == "cancelled"
    assert record.error == "changed my mind"


async def test_status_of_unknown_run_fails(cli: Any, client: Client) -> None:
    res = await cli("status", "no-such-run")
    assert res.code == 4, res  # EXIT_NOT_FOUND
    assert "RunNotFoundError" in res.err
    assert "no-such-run" in res.err
    assert "Traceback" not in res.err


# --------------------------------------------------------------------------- errors


async def test_submit_unknown_agent_fails(cli: Any, workers: WorkerFactory) -> None:
    await workers()
    res = await cli("submit", "nosuchagent", "1")
    assert res.code != 0, res
    assert "UnknownAgentError" in res.err, res
    assert "nosuchagent" in res.err, res
    assert "fast" in res.err, res  # lists the registered agents
    assert "Traceback" not in res.err, res
    assert res.out.strip() == ""


async def test_submit_invalid_json_input_fails_clearly(cli: Any, workers: WorkerFactory) -> None:
    await workers()
    res = await cli("submit", "fast", "{bad json")
    assert res.code != 0, res
    assert "Traceback" not in res.err, f"a traceback instead of an error message:\n{res}"
    assert "json" in res.err.lower(), res
    assert res.out.strip() == ""


async def test_submit_invalid_run_id_fails(cli: Any, workers: WorkerFactory) -> None:
    await workers()
    res = await cli("submit", "fast", "1", "--run-id", "has.dots")
    assert res.code != 0, res
    assert "InvalidRequestError" in res.err and "has.dots" in res.err, res
    assert "Traceback" not in res.err, res


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("tests.apps:nope", "tests.apps:nope"),
        ("tests.no_such_module:app", "cannot import"),
        ("tests.apps", "must look like"),
    ],
)
async def test_worker_with_bad_app_fails(cli: Any, app: str, expected: str) -> None:
    res = await cli("worker", app)
    assert res.code != 0, res
    assert "ConfigurationError" in res.err, res
    assert expected in res.err, res
    assert "Traceback" not in res.err, res


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "fast", "1"],
        ["status", "some-run"],
        ["events", "some-run"],
        ["runs"],
        ["cancel", "some-run"],
    ],
    ids=lambda a: a[0],
)
async def test_client_commands_without_servers_fail(
    args: list[str], tmp_path: Path, settings: Settings
) -> None:
    env = _env(tmp_path / "state")
    # Only one of the two URLs is not enough either.
    assert settings.nats_url
    results = await asyncio.gather(
        run_cli(*args, env=env),
        run_cli(*args, "--nats-url", settings.nats_url, env=env),
    )
    for res in results:
        assert res.code != 0, res
        assert "no servers configured" in res.err, res
        assert "Traceback" not in res.err, res
        assert res.out.strip() == ""


async def test_client_with_another_lease_ttl_than_the_workers(
    settings: Settings, workers: WorkerFactory, tmp_path: Path
) -> None:
    """A CLI user who does not repeat the workers' lease TTL must still be able to connect."""
    await workers()  # lease TTL from the fixture (2 s), which created the lease bucket
    assert settings.nats_url and settings.redis_url
    assert settings.lease_ttl != 5  # the CLI's default
    res = await run_cli(
        "runs",
        "--nats-url",
        settings.nats_url,
        "--redis-url",
        settings.redis_url,
        "--namespace",
        settings.namespace,
        env=_env(tmp_path),
    )
    assert res.code == 0, res
    assert "Traceback" not in res.err, res
