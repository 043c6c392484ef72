"""Issue #12 (h2): bounded first connections, masked secrets, CLI exit codes, settings, NaN.

Everything runs against real servers: the session's nats-server/redis-server, private
nats-server processes started with credentials, a loopback HTTP server the test runs, and
``stalwart`` subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import structlog

from stalwart import Client, RunNotFoundError, ServerUnavailableError, Settings
from stalwart.broker._connect import connect
from stalwart.checkpoints import CheckpointStore
from stalwart.cli import (
    EXIT_NOT_FOUND,
    EXIT_RUN_FAILED,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from stalwart.errors import ConfigurationError
from stalwart.servers import find_nats_server
from stalwart.testing import NatsServer, free_port
from tests.conftest import ROOT
from tests.helpers import eventually, open_gate, start_server
from tests.test_cli import _env, run_cli

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from tests.conftest import Servers, WorkerFactory

BOUND = 2.0
"""STALWART_CONNECT_TIMEOUT the tests use."""


def _reject_constants(name: str) -> Any:
    raise AssertionError(f"invalid JSON constant {name} in CLI output")


def _strict_json(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constants)


@pytest.fixture
def auth_nats() -> Iterator[str]:
    """A nats-server that wants user ``bob`` / password ``s3cret-pw``; yields host:port."""
    port = free_port()
    args = ["-a", "127.0.0.1", "-p", str(port), "--user", "bob", "--pass", "s3cret-pw"]
    proc = subprocess.Popen(
        [find_nats_server(), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def token_nats() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A nats-server with token ``tok-XYZ-secret``; yields (host:port, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [find_nats_server(), "-a", "127.0.0.1", "-p", str(port), "--auth", "tok-XYZ-secret"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        yield f"127.0.0.1:{port}", proc
    finally:
        proc.kill()
        proc.wait(10)


def _wait_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
async def http_server() -> AsyncIterator[str]:
    """A loopback server that speaks HTTP, not NATS; yields host:port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with __import__("contextlib").suppress(Exception):
            await reader.readline()
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"127.0.0.1:{port}"


@pytest.fixture
def cli(settings: Settings, tmp_path: Path) -> Any:
    """``await cli(*args, env_extra={...})`` with this test's servers and namespace."""
    assert settings.nats_url and settings.redis_url
    urls = ["--nats-url", settings.nats_url, "--redis-url", settings.redis_url]
    urls += ["--namespace", settings.namespace]

    async def call(
        *args: str, timeout: float = 30.0, env_extra: dict[str, str] | None = None
    ) -> Any:
        return await run_cli(*args, *urls, env=_env(tmp_path, **(env_extra or {})), timeout=timeout)

    return call


def _env_bound(tmp_path: Path, **extra: str) -> dict[str, str]:
    return _env(tmp_path, STALWART_CONNECT_TIMEOUT=str(BOUND), **extra)


def _assert_clean(res: Any) -> None:
    assert "Traceback" not in res.err, res
    assert res.err.strip().startswith("stalwart: ") or "stalwart: " in res.err, res


# --------------------------------------------------------------------------- 1. connections


async def _timed_cli(*args: str, env: dict[str, str]) -> tuple[Any, float]:
    started = time.monotonic()
    res = await run_cli(*args, env=env, timeout=20)
    return res, time.monotonic() - started


@pytest.mark.slow
async def test_cli_fails_within_bound_on_refused_nats(servers: Servers, tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    res, took = await _timed_cli(
        "status", "x", "--nats-url", url, "--redis-url", servers.redis_url,
        env=_env_bound(tmp_path),
    )  # fmt: skip
    assert res.code == EXIT_UNAVAILABLE, res
    assert url in res.err and "refused" in res.err, res
    assert took < BOUND + 8, took
    _assert_clean(res)


@pytest.mark.slow
async def test_cli_names_a_server_that_is_not_nats(
    servers: Servers, http_server: str, tmp_path: Path
) -> None:
    redis_hostport = servers.redis_url.split("://", 1)[1].split("/")[0]
    for target in (http_server, redis_hostport):
        res, took = await _timed_cli(
            "runs", "--nats-url", f"nats://{target}", "--redis-url", servers.redis_url,
            env=_env_bound(tmp_path),
        )  # fmt: skip
        assert res.code == EXIT_UNAVAILABLE, res
        assert "not NATS" in res.err, res
        assert took < BOUND + 8, took
        _assert_clean(res)


@pytest.mark.slow
async def test_cli_http_url_for_nats_is_a_usage_error(servers: Servers, tmp_path: Path) -> None:
    res = await run_cli(
        "runs", "--nats-url", "http://127.0.0.1:8222", "--redis-url", servers.redis_url,
        env=_env_bound(tmp_path), timeout=20,
    )  # fmt: skip
    assert res.code == EXIT_USAGE, res
    assert "is not a NATS URL" in res.err, res
    _assert_clean(res)
    # Reported before anything is connected: a Redis that is down is not waited for first.
    res, took = await _timed_cli(
        "runs", "--nats-url", "http://127.0.0.1:8222", "--redis-url", "redis://127.0.0.1:1",
        env=_env_bound(tmp_path),
    )  # fmt: skip
    assert res.code == EXIT_USAGE and "is not a NATS URL" in res.err, res
    assert took < BOUND + 5, took


@pytest.mark.slow
async def test_cli_wrong_nats_credentials_fail_at_once_masked(
    servers: Servers, auth_nats: str, tmp_path: Path
) -> None:
    res, took = await _timed_cli(
        "runs", "--nats-url", f"nats://bob:wrong-pw@{auth_nats}",
        "--redis-url", servers.redis_url, env=_env_bound(tmp_path),
    )  # fmt: skip
    assert res.code == EXIT_UNAVAILABLE, res
    assert "authentication failed" in res.err, res
    assert "wrong-pw" not in res.err and f"nats://bob:***@{auth_nats}" in res.err, res
    assert took < BOUND + 8, took
    _assert_clean(res)


@pytest.mark.slow
async def test_cli_fails_within_bound_on_redis_down_masked(
    servers: Servers, tmp_path: Path
) -> None:
    port = free_port()
    for redis_url in (f"redis://:hunter2-pw@127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}"):
        res, took = await _timed_cli(
            "runs", "--nats-url", servers.nats_url, "--redis-url", redis_url,
            env=_env_bound(tmp_path),
        )  # fmt: skip
        assert res.code == EXIT_UNAVAILABLE, res
        assert "cannot reach Redis" in res.err and f"127.0.0.1:{port}" in res.err, res
        assert "hunter2" not in res.err, res
        assert took < BOUND + 8, took  # was about 28 s
        _assert_clean(res)


@pytest.mark.slow
@pytest.mark.parametrize("redis_url", ["foo", "http://127.0.0.1:6390/0"])
async def test_cli_bad_redis_url_is_a_usage_error(
    servers: Servers, tmp_path: Path, redis_url: str
) -> None:
    res = await run_cli(
        "runs", "--nats-url", servers.nats_url, "--redis-url", redis_url,
        env=_env_bound(tmp_path), timeout=20,
    )  # fmt: skip
    assert res.code == EXIT_USAGE, res
    assert "is not a Redis URL" in res.err, res
    _assert_clean(res)


async def test_client_connect_is_bounded_and_names_the_reason(
    servers: Servers, auth_nats: str
) -> None:
    settings = Settings(
        nats_url=f"nats://127.0.0.1:{free_port()}",
        redis_url=servers.redis_url,
        connect_timeout=1.0,
    )
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="refused"):
        await Client.connect(settings=settings)
    assert time.monotonic() - started < 6
    with pytest.raises(ServerUnavailableError, match="authentication failed") as info:
        await connect(f"nats://bob:nope@{auth_nats}", connect_timeout=5)
    assert "nope" not in str(info.value)
    with pytest.raises(ConfigurationError, match="not a NATS URL"):
        await connect("http://127.0.0.1:4222")
    # tls:// to a server without TLS: refused before the password is sent in plain text.
    with pytest.raises(ServerUnavailableError, match="TLS failure") as info:
        await connect(f"tls://bob:s3cret-pw@{auth_nats}", connect_timeout=5)
    assert "s3cret-pw" not in str(info.value)
    rediss = servers.redis_url.replace("redis://", "rediss://", 1)
    with pytest.raises(ServerUnavailableError, match="TLS"):
        await CheckpointStore.connect(rediss, connect_timeout=1.0)


@pytest.mark.slow
async def test_worker_started_with_nats_down_stops_on_sigterm(
    servers: Servers, tmp_path: Path
) -> None:
    env = _env(tmp_path, STALWART_CONNECT_TIMEOUT="120", PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stalwart", "worker", "tests.apps:app",
        "--nats-url", f"nats://127.0.0.1:{free_port()}", "--redis-url", servers.redis_url,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            while b"service.starting" not in await proc.stderr.readline():
                pass
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        async with asyncio.timeout(10):
            code = await proc.wait()
        assert time.monotonic() - started < 10
        assert code == 0, (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
async def test_worker_that_lost_nats_stops_on_sigterm(servers: Servers, tmp_path: Path) -> None:
    """An established connection is retried without limit, but SIGTERM still ends the worker."""
    nats = NatsServer()
    await start_server(nats)
    env = _env(tmp_path, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stalwart", "worker", "tests.apps:app",
        "--nats-url", nats.url, "--redis-url", servers.redis_url,
        "--namespace", f"lost{uuid.uuid4().hex[:8]}",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            while b"worker.started" not in await proc.stderr.readline():
                pass
        await asyncio.to_thread(nats.kill)
        async with asyncio.timeout(15):  # it is retrying: a reconnect attempt failed
            while b"nats.error" not in await proc.stderr.readline():
                pass
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            rest = (await proc.stderr.read()).decode()
            code = await proc.wait()
        assert code == 0, rest
        assert "Traceback" not in rest, rest
        assert "worker.stopped" in rest, rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.to_thread(nats.stop)


# --------------------------------------------------------------------------- 2. secrets


def test_mask_urls_covers_userinfo_tokens_query_and_lists() -> None:
    from stalwart._secrets import mask_urls

    text = (
        "cannot reach Redis at redis://:PASSWORD@h:6379/0; servers "
        "nats://TOKEN@a:4222,nats://user:PW2@b:4222 tls://u:p@ss@c/x "
        "http://h/p?password=QP&x=1&api_key=K2 ['redis://:LISTPW@h']"
    )
    masked = mask_urls(text)
    for secret in ("PASSWORD", "TOKEN", "PW2", "p@ss", "QP", "K2", "LISTPW"):
        assert secret not in masked, masked
    assert "redis://:***@h:6379/0" in masked and "nats://***@a:4222" in masked
    assert "nats://user:***@b:4222" in masked and "x=1" in masked


def test_mask_secrets_at_any_depth_with_cycles_and_odd_types() -> None:
    from stalwart._secrets import mask_secrets

    payload: dict[str, Any] = {
        "tool": {"args": {"api_key": "AK1", "headers": [{"Authorization": "Bearer AK2"}]}},
        "config": ({"nested": {"X-Api-Key": "AK3", "accessToken": "AK4"}},),
        "url": "redis://:AK5@h",
        "odd": object(),
        "bytes": b"raw",
        "input_tokens": 12,
    }
    payload["self"] = payload
    masked = mask_secrets(payload)
    text = repr(masked)
    for secret in ("AK1", "AK2", "AK3", "AK4", "AK5"):
        assert secret not in text, text
    assert masked["self"] == "<cycle>"
    assert masked["input_tokens"] == 12  # token counts are data, not secrets
    deep: list[Any] = []
    cur = deep
    for _ in range(5000):
        cur.append([])
        cur = cur[0]
    assert "<too deep>" in repr(mask_secrets(deep))[:2000] or mask_secrets(deep)


def test_payload_logging_masks_nested_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stalwart._logging import configure_logging

    monkeypatch.setenv("STALWART_LOG_PAYLOADS", "1")
    configure_logging("info", "json")
    try:
        structlog.get_logger("t").info(
            "step.completed",
            input={"auth": {"api_key": "NESTED1"}, "list": [{"password": "NESTED2"}]},
            result={"Authorization": "Bearer NESTED3", "ok": 1},
            note="see nats://TOK4@h:4222",
        )
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    line = json.loads(err.strip().splitlines()[-1])
    for secret in ("NESTED1", "NESTED2", "NESTED3", "TOK4"):
        assert secret not in err, err
    assert line["result"]["ok"] == 1


async def test_nats_log_lines_mask_token_urls(
    token_nats: tuple[str, subprocess.Popen[bytes]],
) -> None:
    hostport, proc = token_nats
    with structlog.testing.capture_logs() as logs:
        nc = await connect(f"nats://tok-XYZ-secret@{hostport}", connect_timeout=5)
        try:
            proc.kill()
            await eventually(
                lambda: _async(any(e["event"] == "nats.disconnected" for e in logs)), timeout=15
            )
        finally:
            await nc.close()
    assert logs and "tok-XYZ-secret" not in repr(logs), logs
    assert any(e.get("url") == f"nats://***@{hostport}" for e in logs), logs


async def _async(value: Any) -> Any:
    return value


# --------------------------------------------------------------------------- 14. CLI


@pytest.mark.slow
async def test_cli_exit_codes_for_run_outcomes(
    cli: Any, workers: WorkerFactory, client: Client, counters: Any
) -> None:
    await workers()
    timed_out = await cli("submit", "sleepy", "1", "--wait", "--timeout", "1")
    assert timed_out.code == EXIT_TIMEOUT, timed_out
    assert "did not end within 1s" in timed_out.err, timed_out
    _assert_clean(timed_out)

    failed = await cli("submit", "failing", '"x"', "--wait", "--timeout", "20")
    assert failed.code == EXIT_RUN_FAILED, failed
    assert "RunFailed" in failed.err, failed
    _assert_clean(failed)

    run_id = uuid.uuid4().hex
    waiting = asyncio.create_task(
        cli("submit", "sleepy", "2", "--run-id", run_id, "--wait", "--timeout", "20")
    )
    await eventually(lambda: _exists(client, run_id))
    await client.handle(run_id).cancel("test")
    # A cancel takes effect at the next step boundary: let the first step finish (the run
    # then stops before its second).
    await open_gate(counters, run_id, "in")
    cancelled = await waiting
    assert cancelled.code == EXIT_RUN_FAILED, cancelled
    assert "RunCancelled" in cancelled.err, cancelled


async def _exists(client: Client, run_id: str) -> bool:
    return await client.store.get_run(run_id) is not None


@pytest.mark.slow
async def test_cli_unknown_run_is_not_found_everywhere(cli: Any) -> None:
    for args in (
        ["events", "does-not-exist"],
        ["events", "does-not-exist", "--follow"],
        ["status", "does-not-exist"],
        ["history", "does-not-exist"],
        ["signal", "does-not-exist", "go"],
        ["cancel", "does-not-exist"],
        ["fork", "does-not-exist", "--at", "step:x"],
    ):
        res = await cli(*args, timeout=20)
        assert res.code == EXIT_NOT_FOUND, (args, res)
        assert "Traceback" not in res.err, res


@pytest.mark.slow
async def test_cli_bad_arguments_are_usage_errors(cli: Any) -> None:
    deep = "[" * 1000 + "]" * 1000
    cases: list[tuple[list[str], str]] = [
        (["submit", "fast", deep], "nested too deeply"),
        (["signal", "some-run", "go", deep], "nested too deeply"),
        (["submit", "fast", "1" * 5000], "not valid JSON"),
        (["runs", "--limit", "0"], ">= 1"),
        (["runs", "--limit", "-1"], ">= 1"),
        (["submit", "fast", "1", "--wait", "--timeout", "nan"], "seconds > 0"),
        (["submit", "fast", "1", "--wait", "--timeout", "-1"], "seconds > 0"),
        (["runs", "--lease-ttl", "0"], ">= 1"),
    ]
    for args, expected in cases:
        res = await cli(*args)
        assert res.code == EXIT_USAGE, (args, res)
        assert expected in res.err, (args, res)
        assert "Traceback" not in res.err, res


@pytest.mark.slow
async def test_cli_output_to_a_closed_pipe_is_not_a_traceback(
    settings: Settings, client: Client, tmp_path: Path
) -> None:
    handle = await client.submit("ghost", 1, require_registered=False)
    assert settings.nats_url and settings.redis_url
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written (`| head -0`)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stalwart", "status", handle.run_id,
            "--nats-url", settings.nats_url, "--redis-url", settings.redis_url,
            "--namespace", settings.namespace,
            stdin=asyncio.subprocess.DEVNULL, stdout=write_end,
            stderr=asyncio.subprocess.PIPE, env=_env(tmp_path), cwd=ROOT,
        )  # fmt: skip
    finally:
        os.close(write_end)
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


@pytest.mark.slow
async def test_lease_ttl_is_not_offered_by_client_commands(cli: Any, tmp_path: Path) -> None:
    res = await cli("runs", "--lease-ttl", "3")
    assert res.code == 0, res  # accepted for old scripts, but ignored with a warning
    assert "cli.option_ignored" in res.err and "--lease-ttl" in res.err, res
    helped = await run_cli("runs", "--help", env=_env(tmp_path))
    assert helped.code == 0 and "--lease-ttl" not in helped.out, helped
    helped = await run_cli("worker", "--help", env=_env(tmp_path))
    assert "--lease-ttl" in helped.out, helped


async def test_client_runs_limit_must_be_positive(client: Client) -> None:
    for limit in (0, -1):
        with pytest.raises(Exception, match=">= 1"):
            await client.runs(limit)
    with pytest.raises(RunNotFoundError):
        await client.handle("does-not-exist").status()


# --------------------------------------------------------------------------- 15. settings


@pytest.mark.slow
async def test_worker_only_settings_do_not_break_client_commands(cli: Any) -> None:
    env_cases = {
        "STALWART_CONCURRENCY": "0",
        "STALWART_STUCK_ACTION": "bogus",
        "STALWART_LEASE_TTL": "2.5",
        "STALWART_DRAIN_TIMEOUT": "soon",
    }
    res = await cli("runs", env_extra=env_cases)
    assert res.code == 0, res


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "var", "value", "expected"),
    [
        (["supervisor"], "STALWART_STUCK_ACTION", "bogus", "'report' or 'replace'"),
        (["worker", "tests.apps:app"], "STALWART_LEASE_TTL", "2.5", "whole number"),
        (["worker", "tests.apps:app"], "STALWART_CONCURRENCY", "0", ">= 1"),
        (["runs"], "STALWART_LOG_LEVEL", "verbose", "debug, info, warning, error"),
        (["runs"], "STALWART_LOG_FORMAT", "jsn", "json, console"),
        (["runs"], "STALWART_LOG_PAYLOADS", "ture", "1, true, yes, on"),
        (["runs"], "STALWART_CONNECT_TIMEOUT", "-1", "seconds > 0"),
    ],
)
async def test_bad_settings_name_the_variable(
    cli: Any, command: list[str], var: str, value: str, expected: str
) -> None:
    res = await cli(*command, env_extra={var: value})
    assert res.code == EXIT_USAGE, res
    assert var in res.err and expected in res.err, res
    _assert_clean(res)


@pytest.mark.slow
async def test_misspelt_setting_warns(cli: Any) -> None:
    res = await cli("runs", env_extra={"STALWART_LEASE_TIL": "3"})
    assert res.code == 0, res
    assert "STALWART_LEASE_TIL" in res.err and "STALWART_LEASE_TTL" in res.err, res
    assert res.err.count("settings.unknown_variable") == 1, res


# --------------------------------------------------------------------------- 12. NaN


@pytest.mark.slow
@pytest.mark.parametrize(("which", "shown"), [("nan", "NaN"), ("-inf", "-Infinity")])
async def test_non_finite_results_are_faithful_json(
    cli: Any, workers: WorkerFactory, client: Client, which: str, shown: str
) -> None:
    await workers()
    res = await cli("submit", "non_finite", json.dumps(which), "--wait", "--timeout", "20")
    assert res.code == 0, res
    out = _strict_json(res.out)
    assert out["result"] == {"value": shown, "nested": [shown, 1.5]}, res

    status = _strict_json((await cli("status", out["run_id"])).out)
    assert status["result"]["value"] == shown
    events = [_strict_json(line) for line in (await cli("events", out["run_id"])).out.splitlines()]
    by_type = {e["type"]: e for e in events}
    assert by_type["run.completed"]["data"]["result"]["value"] == shown, events
    step_events = [e for e in events if e["type"] == "step.completed"]
    assert step_events and all(e["data"].get("result", shown) == shown for e in step_events)
    history = (await cli("history", out["run_id"], "--json")).out
    _strict_json(history)

    value = (await client.handle(out["run_id"]).result(timeout=5))["value"]
    assert math.isnan(value) if which == "nan" else value == float(which)


def test_settings_from_env_reads_only_the_roles_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from stalwart.config import warn_unknown_variables

    monkeypatch.setenv("STALWART_CONCURRENCY", "0")
    monkeypatch.setenv("STALWART_STUCK_ACTION", "bogus")
    assert Settings.from_env(role="client").concurrency == 16
    with pytest.raises(ConfigurationError, match="STALWART_CONCURRENCY"):
        Settings.from_env(role="worker")
    with pytest.raises(ConfigurationError, match=r"STALWART_STUCK_ACTION .* 'report' or"):
        Settings.from_env(role="supervisor")
    monkeypatch.setenv("STALWART_LEASE_TIL", "3")
    monkeypatch.setenv("STALWART_MY_OWN_THING", "x")
    warnings = warn_unknown_variables()
    assert any("STALWART_LEASE_TIL" in w and "STALWART_LEASE_TTL" in w for w in warnings)
    assert not any("MY_OWN_THING" in w for w in warnings)


def test_payload_previews_mask_nested_secrets() -> None:
    from stalwart.telemetry import preview

    text = preview({"req": {"headers": {"Authorization": "Bearer PV1"}}, "u": "redis://:PV2@h"})
    assert "PV1" not in text and "PV2" not in text, text
