"""Real nats-server / redis-server processes on private loopback ports; no mocks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import redis.asyncio as aioredis

import stalwart.servers as servers_module
import stalwart.servers._nats_cluster as nats_cluster_module
from stalwart.servers import (
    MIN_NATS_VERSION,
    EmbeddedServers,
    NatsCluster,
    NatsServer,
    RedisServer,
    RoutePortTaken,
    ServerNotFound,
    ServerStartError,
    find_nats_server,
    find_redis_server,
    free_port,
    nats_server_version,
)

SHARED_PORTS = {4222, 6379, 8222}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # A zombie is dead; it only waits for its parent (or init) to reap it.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int], deadline_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + deadline_s
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_free_port_distinct_and_usable() -> None:
    ports = [free_port() for _ in range(10)]
    # The OS picks from thousands of ports; one chance repeat is possible, two are not.
    assert len(set(ports)) >= len(ports) - 1
    assert not SHARED_PORTS & set(ports)
    for port in set(ports):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_find_nats_server_skips_old_system_binary() -> None:
    binary = find_nats_server()
    assert binary != "/usr/sbin/nats-server"
    assert nats_server_version(binary) >= MIN_NATS_VERSION >= (2, 11, 0)


def test_find_binaries_honour_env(monkeypatch: pytest.MonkeyPatch) -> None:
    redis_binary = find_redis_server()
    monkeypatch.setenv("STALWART_REDIS_SERVER", redis_binary)
    assert find_redis_server() == redis_binary
    monkeypatch.setenv("STALWART_NATS_SERVER", "/nonexistent/nats-server")
    with pytest.raises(ServerNotFound, match="STALWART_NATS_SERVER"):
        find_nats_server()
    monkeypatch.setenv("STALWART_REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(ServerNotFound):
        find_redis_server()


@pytest.mark.blocks_loop  # drives the servers' blocking (sync) API from the test
async def test_nats_server_jetstream_and_stop() -> None:
    server = NatsServer()
    assert server.port not in SHARED_PORTS
    assert server.url == f"nats://127.0.0.1:{server.port}"
    with server:
        pid = server.pid
        assert pid is not None and _alive(pid)
        store_dir = server.store_dir
        assert nats_server_version(server.binary) >= (2, 11, 0)
        nc = await nats.connect(server.url)
        try:
            info = await nc.jetstream().account_info()
            assert info.streams == 0
        finally:
            await nc.close()
    assert server.pid is None
    assert not _alive(pid)
    # The store was our own temp dir, so stop() removed it.
    assert not store_dir.exists()
    server.stop()  # idempotent


@pytest.mark.blocks_loop  # drives the servers' blocking (sync) API from the test
async def test_redis_aof_survives_kill() -> None:
    server = RedisServer(appendonly=True, appendfsync="always")
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    server.start()
    try:
        first_pid = server.pid
        client = aioredis.from_url(server.url)
        try:
            assert await client.ping()
            await client.set("stalwart:test", b"survives")
        finally:
            await client.aclose()
        server.kill()
        assert server.pid is None
        assert first_pid is not None and not _alive(first_pid)
        server.restart()
        assert server.pid not in (None, first_pid)
        client = aioredis.from_url(server.url)
        try:
            assert await client.get("stalwart:test") == b"survives"
        finally:
            await client.aclose()
    finally:
        server.stop()
    assert server.pid is None


@pytest.mark.blocks_loop  # drives the servers' blocking (sync) API from the test
async def test_nats_restart_keeps_jetstream_stream(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path / "js")
    server.start()
    try:
        port = server.port
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="SURVIVE", subjects=["survive.>"])
            ack = await js.publish("survive.one", b"payload")
            assert ack.seq == 1
        finally:
            await nc.close()
        old_pid = server.pid
        server.kill()
        server.restart()
        assert server.port == port
        assert server.pid != old_pid
        nc = await nats.connect(server.url)
        try:
            msg = await nc.jetstream().get_msg("SURVIVE", 1)
            assert msg.data == b"payload"
            assert msg.subject == "survive.one"
        finally:
            await nc.close()
    finally:
        server.stop()
    # A store dir we were given is never deleted.
    assert (tmp_path / "js").exists()


def test_start_failure_reports_log() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        server = NatsServer(port=taken)
        with pytest.raises(ServerStartError, match=r"(?i)address already in use"):
            server.start(timeout=10.0)
        assert server.pid is None
        server.stop()


@contextlib.contextmanager
def _taken(port: int) -> Iterator[None]:
    """``port`` held by a listener: what another process that took it looks like."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError:
        pass  # another process holds it already: taken either way
    try:
        yield
    finally:
        sock.close()


async def test_cluster_started_after_its_route_port_was_taken_moves_every_route() -> None:
    cluster = NatsCluster(3)
    taken = cluster.nodes[1].cluster
    assert taken is not None
    with _taken(taken.port):
        try:
            await cluster.astart()
            ports = [n.cluster.port for n in cluster.nodes if n.cluster is not None]
            assert taken.port not in ports and len(set(ports)) == 3
            # Every node routes to the others' new ports: the meta leader counts all three.
            assert cluster.meta_ready() is not None
            for node in cluster.nodes:
                assert node.cluster is not None
                assert not any(f":{taken.port}" in r for r in node.cluster.routes)
        finally:
            await asyncio.to_thread(cluster.stop)


def test_cluster_that_fails_to_start_leaves_no_node_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nats_cluster_module, "_ROUTE_ATTEMPTS", 1)
    cluster = NatsCluster(3)
    spawned: list[int] = []
    first = cluster.nodes[0]
    real_start = first.start

    def start_and_note(timeout: float = 10.0) -> None:
        real_start(timeout)
        spawned.append(first.pid or 0)

    monkeypatch.setattr(first, "start", start_and_note)
    taken = cluster.nodes[2].cluster
    assert taken is not None
    with _taken(taken.port), pytest.raises(RoutePortTaken, match=str(taken.port)):
        cluster.start(timeout=20.0)
    # The first node had started before the third failed; it was stopped, not orphaned.
    assert spawned and spawned[0] > 0
    assert _wait_gone(spawned, 5.0) == []
    assert not any(node.running for node in cluster.nodes)


async def test_embedded_servers_async_context_manager() -> None:
    async with EmbeddedServers(redis_appendonly=True) as servers:
        pids = [servers.nats.pid, servers.redis.pid]
        assert None not in pids
        assert servers.redis.appendonly
        nc = await nats.connect(servers.nats_url)
        await nc.close()
        client = aioredis.from_url(servers.redis_url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    assert servers.nats.pid is None and servers.redis.pid is None
    assert _wait_gone([pid for pid in pids if pid is not None], 5.0) == []


def test_no_orphans_when_parent_is_sigkilled(tmp_path: Path) -> None:
    src_dir = Path(servers_module.__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src_dir), env.get("PYTHONPATH")]))
    # A SIGKILLed parent cannot remove its temp dirs; keep them where pytest cleans up.
    env["TMPDIR"] = str(tmp_path)
    code = textwrap.dedent(
        """
        import time
        from stalwart.servers import EmbeddedServers

        servers = EmbeddedServers().start()
        print(servers.nats.pid, servers.redis.pid, flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True
    )
    pids: list[int] = []
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, line
        assert all(_alive(pid) for pid in pids)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert _wait_gone(pids) == [], "server processes outlived their SIGKILLed parent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_atexit_stops_servers_and_removes_temp_dirs(tmp_path: Path) -> None:
    src_dir = Path(servers_module.__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src_dir), env.get("PYTHONPATH")]))
    env["TMPDIR"] = str(tmp_path)
    code = textwrap.dedent(
        """
        from stalwart.servers import EmbeddedServers

        servers = EmbeddedServers().start()
        print(servers.nats.pid, servers.redis.pid, flush=True)
        # No stop(): the atexit hook must do it.
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    assert _wait_gone(pids, 5.0) == []
    assert list(tmp_path.iterdir()) == []
