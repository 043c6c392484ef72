"""A Redis primary with replicas, watched by Sentinels, all on loopback: for failover tests.

:class:`RedisHA` starts a primary, ``replicas`` replicas (``--replicaof``) and ``sentinels``
Sentinel processes (``redis-server <conf> --sentinel``, each with its own writable conf: a
Sentinel rewrites it as it learns the topology), and offers what a failover test needs: the
current primary, a SIGKILL of it, a wait for the Sentinels to agree on a new one, and
replication lag on demand (a replica paused with SIGSTOP falls behind until SIGCONT).

Timings are shortened for tests (``down_after_ms`` 1 s by default: a dead primary is
declared down after that, and a failover takes about one more second).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

import anyio.to_thread
import redis

from stalwart.servers._errors import ServerStartError
from stalwart.servers._process import LOOPBACK, Managed, free_port, time_left
from stalwart.servers._redis import RedisServer

if TYPE_CHECKING:
    from pathlib import Path


class SentinelServer(RedisServer):
    """One Sentinel monitoring ``service`` (primary at ``primary_port``) on a loopback port."""

    _kind = "redis-sentinel"

    def __init__(
        self,
        service: str,
        primary_port: int,
        *,
        quorum: int,
        down_after_ms: int,
        failover_timeout_ms: int,
        binary: str | None = None,
    ) -> None:
        super().__init__(binary=binary)
        self.service = service
        self.primary_port = primary_port
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def conf_file(self) -> Path:
        """The Sentinel's own config file (written at first start, rewritten by Sentinel)."""
        return self._own_tmp_dir() / "sentinel.conf"

    def _prepare(self) -> None:
        super()._prepare()
        if self.conf_file.exists():
            return  # a restart keeps what the Sentinel learnt
        svc = self.service
        self.conf_file.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {LOOPBACK}",
                    "daemonize no",
                    f"dir {self.data_dir}",
                    "sentinel resolve-hostnames no",
                    f"sentinel monitor {svc} {LOOPBACK} {self.primary_port} {self.quorum}",
                    f"sentinel down-after-milliseconds {svc} {self.down_after_ms}",
                    f"sentinel failover-timeout {svc} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {svc} 1",
                    "",
                ]
            )
        )

    def _command(self) -> list[str]:
        return [self.binary, str(self.conf_file), "--sentinel"]


class RedisHA(Managed):
    """A primary, its replicas and the Sentinels that fail it over (see the module docstring).

    ``url`` is the ``redis+sentinel://`` URL of the set. Use as a (sync) context manager or
    call :meth:`start` and :meth:`stop`; every process and temp dir is gone after ``stop``.
    Start it from a thread that outlives it (see :mod:`stalwart.servers`).
    """

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        service: str = "stalwart",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        binary: str | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError("RedisHA needs at least one replica to fail over to")
        if sentinels < 1:
            raise ValueError("RedisHA needs at least one sentinel")
        self.service = service
        self.nodes: list[RedisServer] = [RedisServer(binary=binary)]
        """Every data node; ``nodes[0]`` is the first primary."""
        primary = self.nodes[0]
        for _ in range(replicas):
            self.nodes.append(
                RedisServer(
                    binary=binary,
                    extra_args=["--replicaof", LOOPBACK, str(primary.port)],
                )
            )
        self.sentinels = [
            SentinelServer(
                service,
                primary.port,
                quorum=sentinels // 2 + 1,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                binary=binary,
            )
            for _ in range(sentinels)
        ]

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:<s1>,127.0.0.1:<s2>,.../<service>/0``."""
        hosts = ",".join(f"{LOOPBACK}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Start every process and wait until the replicas are in sync and every Sentinel
        knows every replica and every other Sentinel."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.start(timeout=time_left(deadline))
            self.wait_in_sync(timeout=time_left(deadline))
            for s in self.sentinels:
                s.start(timeout=time_left(deadline))
            self._wait_sentinels_ready(deadline)
        except BaseException:
            self.stop()
            raise

    async def start_async(self, timeout: float = 20.0) -> None:
        """Like :meth:`start`, without blocking the event loop: the processes are spawned on
        the loop's thread (so they die with it) and the waits run in worker threads."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                await node._start_async(time_left(deadline))
            await anyio.to_thread.run_sync(lambda: self.wait_in_sync(timeout=time_left(deadline)))
            for s in self.sentinels:
                await s._start_async(time_left(deadline))
            await anyio.to_thread.run_sync(self._wait_sentinels_ready, deadline)
        except BaseException:
            await anyio.to_thread.run_sync(self.stop)
            raise

    def stop(self) -> None:
        """Stop every process (Sentinels first, so none starts a failover) and remove dirs."""
        for node in self.nodes:
            self.resume(node)  # a stopped process ignores SIGTERM until continued
        for server in [*self.sentinels, *self.nodes]:
            with contextlib.suppress(Exception):
                server.stop(timeout=5.0)

    # -- asking the processes -------------------------------------------------------------

    @staticmethod
    def _client(port: int) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=port, socket_timeout=2.0, socket_connect_timeout=2.0)

    def _ask(self, port: int, *args: str) -> object:
        with self._client(port) as c:
            return c.execute_command(*args)

    def _info(self, node: RedisServer) -> dict[str, object]:
        with self._client(node.port) as c:
            return c.info("replication")  # type: ignore[no-any-return]

    def _node_at(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise ServerStartError(f"no node of this set listens on port {port}")

    def sentinel_primary(self) -> RedisServer | None:
        """The primary the Sentinels agree on (None while they do not agree or answer)."""
        ports: set[int] = set()
        for s in self.sentinels:
            if not s.running:
                continue
            try:
                addr = self._ask(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            except redis.RedisError:
                return None
            if not isinstance(addr, list) or len(addr) != 2:
                return None
            ports.add(int(addr[1]))
        return self._node_at(ports.pop()) if len(ports) == 1 else None

    def primary(self) -> RedisServer:
        """The current primary: the one the Sentinels agree on and that says role master."""
        node = self.sentinel_primary()
        if node is None or not node.running or self._role(node) != "master":
            raise ServerStartError("the Sentinels do not agree on a live primary right now")
        return node

    def replicas(self) -> list[RedisServer]:
        """The live data nodes that are not the primary the Sentinels agree on."""
        current = self.sentinel_primary()
        return [n for n in self.nodes if n is not current and n.running]

    def _role(self, node: RedisServer) -> str:
        try:
            return str(self._info(node).get("role", ""))
        except redis.RedisError:
            return ""

    # -- waits ----------------------------------------------------------------------------

    def wait_in_sync(self, timeout: float = 10.0) -> None:
        """Wait until every live replica's link is up and its offset equals the primary's."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._in_sync():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"replicas not in sync within {timeout:g}s")
            time.sleep(0.05)

    def _in_sync(self) -> bool:
        current = self.sentinel_primary() if any(s.running for s in self.sentinels) else None
        primary = current or self.nodes[0]
        offset = int(str(self._info(primary).get("master_repl_offset", -1)))
        for node in self.nodes:
            if node is primary or not node.running:
                continue
            info = self._info(node)
            if info.get("master_link_status") != "up":
                return False
            if int(str(info.get("slave_repl_offset", -2))) != offset:
                return False
        return True

    def _wait_sentinels_ready(self, deadline: float) -> None:
        want_replicas = len(self.nodes) - 1
        want_peers = len(self.sentinels) - 1
        while True:
            ready = True
            for s in self.sentinels:
                try:
                    master = self._ask(s.port, "SENTINEL", "MASTER", self.service)
                except redis.RedisError:
                    ready = False
                    break
                fields = _pairs(master)
                if (
                    int(fields.get("num-slaves", "0")) < want_replicas
                    or int(fields.get("num-other-sentinels", "0")) < want_peers
                ):
                    ready = False
                    break
            if ready:
                return
            if time.monotonic() > deadline:
                raise ServerStartError("the Sentinels did not discover the replicas and each other")
            time.sleep(0.1)

    def wait_failover(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until the Sentinels agree on a primary other than ``old`` and it is writable."""
        deadline = time.monotonic() + timeout
        while True:
            node = self.sentinel_primary()
            if node is not None and node is not old and node.running:
                if self._role(node) == "master":
                    return node
            if time.monotonic() > deadline:
                raise ServerStartError(f"no failover away from port {old.port} in {timeout:g}s")
            time.sleep(0.05)

    # -- faults ---------------------------------------------------------------------------

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary (as a crash would); returns it (it stays down)."""
        node = self.primary()
        node.kill()
        return node

    def cut_replication(self, node: RedisServer) -> None:
        """Make replica ``node`` stop receiving writes but keep what it has (it is pointed
        at a port nobody listens on): the lag grows with every write until a failover
        promotes it, which then loses those writes.

        This, not :meth:`pause`, is how to lose writes on loopback: a SIGSTOPped replica's
        kernel buffers what the primary sends, and it catches up on SIGCONT even if the
        primary died meanwhile. A Sentinel fixes the replica's configuration only after a
        ``failover_timeout`` without failover, later than the tests need.
        """
        self._ask(node.port, "REPLICAOF", LOOPBACK, str(free_port()))

    @staticmethod
    def pause(node: RedisServer) -> None:
        """SIGSTOP ``node``: it stops answering (clients and Sentinels time out on it); as a
        replica it falls behind, but see :meth:`cut_replication`."""
        if node.pid is not None:
            os.kill(node.pid, signal.SIGSTOP)

    @staticmethod
    def resume(node: RedisServer) -> None:
        """SIGCONT a node paused by :meth:`pause` (no-op for one that runs)."""
        if node.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGCONT)


def _pairs(reply: object) -> dict[str, str]:
    """A flat ``[k, v, k, v, ...]`` reply (or redis-py's dict of it) as text."""
    if isinstance(reply, dict):
        items = list(reply.items())
    elif isinstance(reply, list):
        items = list(zip(reply[::2], reply[1::2], strict=False))
    else:
        return {}
    out: dict[str, str] = {}
    for k, v in items:
        key = k.decode() if isinstance(k, bytes) else str(k)
        out[key] = v.decode() if isinstance(v, bytes) else str(v)
    return out
