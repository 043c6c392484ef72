"""The health endpoints (``/livez``, ``/readyz``) on the real connections.

Readiness follows the servers: ready when NATS (with JetStream) and Redis answer, not ready
as soon as either is gone, and not ready while a worker drains after SIGTERM, though it is
still alive and finishing its step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from typing import TYPE_CHECKING, Any

import pytest

from stalwart._health import CheckResult, HealthServer, connection_checks, readiness
from stalwart.config import Settings
from stalwart.errors import ConfigurationError
from stalwart.servers import NatsServer, RedisServer
from stalwart.supervisor import Supervisor
from tests.conftest import worker_pool
from tests.helpers import eventually, execs, open_gate, rid, start_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio as aioredis

    from stalwart.client import Client
    from tests.conftest import Servers


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
    """One HTTP/1.1 request to the health server on loopback: (status, JSON body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, (json.loads(body) if body else {})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------- pure


def test_readiness_needs_started_not_draining_and_every_check() -> None:
    ok = [CheckResult("nats"), CheckResult("redis")]
    assert readiness(ok, started=True, draining=False) == (
        200,
        {"status": "ready", "checks": {"nats": "ok", "redis": "ok"}},
    )
    assert readiness(ok, started=False, draining=False)[1]["status"] == "starting"
    assert readiness(ok, started=True, draining=True)[0] == 503
    bad = [CheckResult("nats"), CheckResult("redis", "no answer within 2s")]
    status, body = readiness(bad, started=True, draining=False)
    assert status == 503
    assert body == {"status": "not ready", "checks": {"nats": "ok", "redis": "no answer within 2s"}}


def test_health_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="STALWART_HEALTH_PORT"):
        Settings(health_port=70000)
    with pytest.raises(ConfigurationError, match="STALWART_HEALTH_TIMEOUT"):
        Settings(health_timeout=0)


# ---------------------------------------------------------------- the HTTP server alone


async def test_livez_answers_before_start_and_readyz_says_starting() -> None:
    async def never_called() -> None:
        raise AssertionError("checks must not run before start-up finished")

    health = HealthServer({"nats": never_called})
    port = await health.start("127.0.0.1", 0)
    try:
        assert await get(port, "/livez") == (200, {"status": "alive"})
        assert await get(port, "/readyz") == (503, {"status": "starting", "checks": {}})
        assert (await get(port, "/metrics"))[0] == 404
        assert (await get(port, "/livez", method="POST"))[0] == 405
        assert await get(port, "/livez", method="HEAD") == (200, {})  # headers only
    finally:
        await health.close()


async def test_a_check_that_hangs_fails_within_the_timeout() -> None:
    async def hangs() -> None:
        await asyncio.sleep(60)

    health = HealthServer({"redis": hangs}, timeout=0.2)
    health.set_started()
    port = await health.start("127.0.0.1", 0)
    try:
        status, body = await asyncio.wait_for(get(port, "/readyz"), 5)
        assert status == 503
        assert body["checks"] == {"redis": "no answer within 0.2s"}
    finally:
        await health.close()


async def test_a_failing_check_is_named_without_the_password_of_a_url() -> None:
    async def refused() -> None:
        raise ConnectionError("cannot reach redis://:hunter2@redis.internal:6379/0")

    health = HealthServer({"redis": refused})
    health.set_started()
    port = await health.start("127.0.0.1", 0)
    try:
        status, body = await get(port, "/readyz")
        assert status == 503
        assert "redis.internal" in body["checks"]["redis"]
        assert "hunter2" not in json.dumps(body)
    finally:
        await health.close()


async def test_a_port_in_use_is_a_configuration_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"127.0.0.1:{port}"):
            await HealthServer({}).start("127.0.0.1", port)


# ------------------------------------------------------------------ on real connections


@pytest.fixture
async def own_servers() -> AsyncIterator[tuple[NatsServer, RedisServer]]:
    """A nats-server and a redis-server of this test alone: they get killed."""
    nats, redis = NatsServer(), RedisServer()
    try:
        await start_server(nats)
        await start_server(redis)
        yield nats, redis
    finally:
        nats.stop()
        redis.stop()


@pytest.fixture
async def supervised(
    own_servers: tuple[NatsServer, RedisServer], namespace: str
) -> AsyncIterator[tuple[int, NatsServer, RedisServer]]:
    """A started supervisor on the own servers, and the port of its health endpoints."""
    nats, redis = own_servers
    sup = Supervisor(
        Settings(nats_url=nats.url, redis_url=redis.url, namespace=namespace, connect_timeout=5)
    )
    health = HealthServer(connection_checks(sup), timeout=0.5)
    port = await health.start("127.0.0.1", 0)
    try:
        assert (await get(port, "/readyz"))[1]["status"] == "starting"
        await sup.start()
        health.set_started()
        yield port, nats, redis
    finally:
        await health.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sup.close(), 10)


async def test_ready_when_connected_not_ready_once_redis_is_killed(
    supervised: tuple[int, NatsServer, RedisServer],
) -> None:
    port, _, redis = supervised
    assert await get(port, "/readyz") == (
        200,
        {"status": "ready", "checks": {"nats": "ok", "redis": "ok"}},
    )
    redis.kill()
    status, body = await get(port, "/readyz")
    assert status == 503
    assert body["checks"]["nats"] == "ok"
    assert body["checks"]["redis"] != "ok"
    # Liveness does not follow the servers: restarting the process would not bring Redis back.
    assert (await get(port, "/livez"))[0] == 200


async def test_not_ready_once_nats_is_killed(
    supervised: tuple[int, NatsServer, RedisServer],
) -> None:
    port, nats, _ = supervised
    assert (await get(port, "/readyz"))[0] == 200
    nats.kill()

    async def nats_failing() -> dict[str, Any] | None:
        status, body = await get(port, "/readyz")
        return body if status == 503 and body["checks"]["nats"] != "ok" else None

    body = await eventually(nats_failing, timeout=10, message="still ready without NATS")
    assert body["checks"]["redis"] == "ok"
    assert (await get(port, "/livez"))[0] == 200


async def test_a_draining_worker_is_alive_but_not_ready(
    settings: Settings, servers: Servers, client: Client, counters: aioredis.Redis
) -> None:
    """The real ``stalwart worker --health-port`` process: SIGTERM while a step body runs.

    Readiness drops at once (the signal, not the end of the drain), liveness stays, and the
    process still exits once its step finished.
    """
    port = free_port()
    async with worker_pool("tests.apps:app", settings, servers, client) as start:
        proc = await start(STALWART_HEALTH_PORT=str(port), STALWART_DRAIN_TIMEOUT="30")

        async def ready() -> bool:
            with contextlib.suppress(OSError):
                return (await get(port, "/readyz"))[0] == 200
            return False

        await eventually(ready, timeout=15, message=lambda: proc.log_text()[-2000:])
        run_id = rid()
        await client.submit("ten", {"block_in": 2}, run_id=run_id)

        async def in_step() -> bool:
            return await execs(counters, run_id, "step:s2") >= 1

        await eventually(in_step, timeout=15)
        os.kill(proc.pid, signal.SIGTERM)

        async def draining() -> bool:
            return (await get(port, "/readyz")) == (503, {"status": "draining", "checks": {}})

        await eventually(draining, timeout=5, message="readyz did not report draining")
        assert proc.alive()  # still finishing the step it hosts
        assert (await get(port, "/livez"))[0] == 200
        await open_gate(counters, run_id, "in")
        await eventually(lambda: _exited(proc), timeout=30, message=lambda: proc.log_text()[-2000:])


async def _exited(proc: Any) -> bool:
    return not proc.alive()
