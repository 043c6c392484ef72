"""An embedded Redis Cluster: masters and replicas on free loopback ports, for tests and
benchmarks.

Each node is a :class:`RedisServer` started with ``--cluster-enabled yes``, its own
``nodes.conf`` in its data dir and an explicit ``--cluster-port`` (the default bus port,
``port + 10000``, can fall outside the port range for the high ports the OS hands out).
The cluster is then formed with plain cluster commands (slots assigned in equal ranges,
``CLUSTER MEET``, ``CLUSTER REPLICATE``), so no ``redis-cli`` is needed. A killed node
keeps its data dir and ``nodes.conf``, so :meth:`RedisClusterServer.restart` brings it back
into the same cluster (as a replica, when its replica was promoted meanwhile).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import anyio
import anyio.to_thread
from redis.crc import key_slot

from stalwart.servers._errors import ServerStartError
from stalwart.servers._process import LOOPBACK, Managed, free_port, time_left
from stalwart.servers._redis import RedisServer, _read_reply

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from stalwart.servers._tls import ServerTLS


class ClusterNode(RedisServer):
    """One node of a :class:`RedisClusterServer` (a ``redis-server`` in cluster mode)."""

    _kind = "redis-cluster-node"

    def __init__(
        self,
        *,
        node_timeout_ms: int,
        binary: str | None = None,
        appendonly: bool = False,
        tls: ServerTLS | None = None,
    ) -> None:
        super().__init__(binary=binary, appendonly=appendonly, tls=tls)
        self.node_timeout_ms = node_timeout_ms
        self.bus_port = free_port()

    def _repick_ports(self) -> None:
        self.bus_port = free_port()

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.data_dir / "nodes.conf"),
            "--cluster-port", str(self.bus_port),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica with a stale link still takes over: the tests kill masters outright.
            "--cluster-replica-validity-factor", "0",
            # A new replica's full sync starts at once (the default waits 5 s for company),
            # so a cluster is replicated as soon as it is ok.
            "--repl-diskless-sync-delay", "0",
            *self._bus_tls_args(),
        ]  # fmt: skip

    def _bus_tls_args(self) -> list[str]:
        """With TLS the cluster bus and replication speak it too (the port is TLS-only).
        Nodes always check each other's certificate on the bus, so a node presents
        ``client_cert_file`` there when given (a server-only certificate is refused)."""
        t = self.tls
        if t is None:
            return []
        args = ["--tls-cluster", "yes", "--tls-replication", "yes"]
        if t.client_cert_file:
            args += ["--tls-client-cert-file", t.client_cert_file,
                     "--tls-client-key-file", t.client_key_file or t.client_cert_file]  # fmt: skip
        return args

    def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """Send one command (inline) and return its reply line or bulk payload."""
        with self._connect() as sock:  # TLS when the node serves TLS
            sock.settimeout(timeout)
            sock.sendall(" ".join(args).encode() + b"\r\n")
            return _read_reply(sock)

    def info_field(self, section: str, field: str) -> str:
        """One field of ``CLUSTER INFO`` (``section`` "cluster") or of ``INFO <section>``."""
        raw = (
            self.command("CLUSTER", "INFO")
            if section == "cluster"
            else self.command("INFO", section)
        )
        match = re.search(rf"^{re.escape(field)}:(\S*)", raw.decode(), re.MULTILINE)
        return match[1] if match else ""


@dataclass(frozen=True, slots=True)
class NodeView:
    """One line of ``CLUSTER NODES`` as one node sees it."""

    node_id: str
    port: int
    master: bool
    failed: bool
    slots: tuple[tuple[int, int], ...]

    def owns(self, slot: int) -> bool:
        """Whether the node serves ``slot`` (as a master)."""
        return self.master and any(lo <= slot <= hi for lo, hi in self.slots)


def _parse_nodes(text: str) -> list[NodeView]:
    views: list[NodeView] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        port = int(parts[1].split("@", 1)[0].rsplit(":", 1)[1] or 0)
        flags = parts[2].split(",")
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being migrated
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        views.append(
            NodeView(
                node_id=parts[0],
                port=port,
                master="master" in flags,
                failed="fail" in flags,
                slots=tuple(slots),
            )
        )
    return views


class RedisClusterServer(Managed):
    """``masters`` masters with ``replicas`` replicas each, on loopback ports.

    ``node_timeout_ms`` is ``cluster-node-timeout``: how long a master may be unreachable
    before its replica is promoted (low by default, for tests); ``appendonly`` turns on each
    node's AOF (``appendfsync everysec``); ``tls`` serves TLS only, on the client port, the
    cluster bus and replication (give it a ``client_cert_file`` signed by its CA: the nodes
    present it to each other on the bus). Use as a context manager
    (``async with`` from an event loop) or call :meth:`start` / :meth:`stop`; drive it from
    one thread that outlives the nodes.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1500,
        binary: str | None = None,
        appendonly: bool = False,
        tls: ServerTLS | None = None,
    ) -> None:
        if masters < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 masters, not {masters}")
        if replicas < 0:
            raise ValueError(f"replicas must be 0 or more, not {replicas}")
        self.masters = masters
        self.replicas = replicas
        self.nodes = [
            ClusterNode(
                node_timeout_ms=node_timeout_ms, binary=binary, appendonly=appendonly, tls=tls
            )
            for _ in range(masters * (1 + replicas))
        ]
        self.tls = tls

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,...``: every node as a seed
        (``rediss+cluster://`` when serving TLS)."""
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        return f"{scheme}://" + ",".join(f"{LOOPBACK}:{n.port}" for n in self.nodes)

    def node_url(self, node: ClusterNode) -> str:
        """``redis://127.0.0.1:<port>`` (``rediss://`` with TLS): one node, for
        auto-detection."""
        return f"{'rediss' if self.tls else 'redis'}://{LOOPBACK}:{node.port}"

    def start(self, timeout: float = 30.0) -> Self:
        """Start every node, create the cluster and wait until every node says it is ok."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.start(time_left(deadline))
            self._create(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    async def start_async(self, timeout: float = 30.0) -> Self:
        """:meth:`start` from an event loop: the nodes are spawned on the loop thread (their
        death signal is tied to it), the waits run in worker threads."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                await node._start_async(time_left(deadline))
            await anyio.to_thread.run_sync(self._create, deadline)
        except BaseException:
            await anyio.to_thread.run_sync(self.stop)
            raise
        return self

    def _create(self, deadline: float) -> None:
        """Assign the slots, introduce the nodes and pair the replicas with plain cluster
        commands (what ``redis-cli --cluster create`` does, without needing redis-cli),
        then :meth:`wait_ok`."""
        masters = self.nodes[: self.masters]
        per = 16384 // self.masters
        for i, node in enumerate(masters):
            lo, hi = i * per, 16383 if i == self.masters - 1 else (i + 1) * per - 1
            self._ok(node, "CLUSTER", "ADDSLOTSRANGE", str(lo), str(hi))
        for i, node in enumerate(self.nodes):
            # Distinct epochs up front: no collision to resolve before the cluster is ok.
            self._ok(node, "CLUSTER", "SET-CONFIG-EPOCH", str(i + 1))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self._ok(first, "CLUSTER", "MEET", LOOPBACK, str(node.port), str(node.bus_port))
        ids = {n.port: n.command("CLUSTER", "MYID").decode() for n in self.nodes}
        self._wait(deadline, "every node knows every other", lambda: self._all_met(ids))
        for k, replica in enumerate(self.nodes[self.masters :]):
            master = masters[k % self.masters]
            self._ok(replica, "CLUSTER", "REPLICATE", ids[master.port])
        self.wait_ok(time_left(deadline))

    @staticmethod
    def _ok(node: ClusterNode, *args: str) -> None:
        reply = node.command(*args)
        if not reply.startswith(b"+OK"):
            raise ServerStartError(f"{' '.join(args)} on port {node.port}: {reply!r}")

    def _all_met(self, ids: dict[int, str]) -> bool:
        for node in self.nodes:
            known = node.command("CLUSTER", "NODES").decode()
            # A node still in handshake is listed under a temporary id: wait for the real ones.
            if any(node_id not in known for node_id in ids.values()) or "handshake" in known:
                return False
        return True

    @staticmethod
    def _wait(deadline: float, what: str, check: Callable[[], bool]) -> None:
        while not check():
            if time.monotonic() > deadline:
                raise ServerStartError(f"Redis Cluster: timed out waiting until {what}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node and remove their data dirs; idempotent."""
        for node in self.nodes:
            node.stop(timeout)

    def _live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.running]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok``, all slots are served
        by live masters and every live replica's link to its master is up (synced)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                states = {n.port: n.info_field("cluster", "cluster_state") for n in self._live()}
                links = {
                    n.port: n.info_field("replication", "master_link_status")
                    for n in self._live()
                    if n.info_field("replication", "role") == "slave"
                }
                views = self.view()
            except (OSError, ValueError) as exc:
                last = repr(exc)
            else:
                live = {n.port for n in self._live()}
                served = sum(
                    hi - lo + 1 for v in views if v.master and v.port in live for lo, hi in v.slots
                )
                synced = all(link == "up" for link in links.values())
                if all(s == "ok" for s in states.values()) and served == 16384 and synced:
                    return
                last = f"states {states}, {served} slots on live masters, replica links {links}"
            time.sleep(0.05)
        raise ServerStartError(f"Redis Cluster not ok after {timeout:g}s: {last}")

    def view(self) -> list[NodeView]:
        """``CLUSTER NODES`` as the first live node sees it."""
        for node in self._live():
            with contextlib.suppress(OSError, ValueError):
                return _parse_nodes(node.command("CLUSTER", "NODES").decode())
        raise ServerStartError("no live node of the Redis Cluster answers")

    def node_at(self, port: int) -> ClusterNode:
        """The node listening on ``port``."""
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def master_nodes(self) -> list[ClusterNode]:
        """The nodes that are masters now (live ones, as the cluster sees them)."""
        live = {n.port for n in self._live()}
        return [
            self.node_at(v.port)
            for v in self.view()
            if v.master and not v.failed and v.port in live and v.slots
        ]

    def master_of(self, key: str) -> ClusterNode:
        """The node that serves ``key``'s slot now."""
        slot = key_slot(key.encode())
        live = {n.port for n in self._live()}
        for v in self.view():
            if v.owns(slot) and v.port in live and not v.failed:
                return self.node_at(v.port)
        raise KeyError(f"no live master serves slot {slot} ({key!r})")

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node (its data dir and ``nodes.conf`` stay for :meth:`restart`)."""
        node.kill()

    def restart(self, node: ClusterNode, timeout: float = 10.0) -> None:
        """Start a killed node again on its port; it rejoins the cluster."""
        node.restart(timeout)

    def wait_failover(self, killed: ClusterNode, timeout: float = 30.0) -> ClusterNode:
        """Wait until another node serves the slots ``killed`` served and the cluster is
        ok again; returns the promoted node."""
        old = [v for v in self.view() if v.port == killed.port]
        slots = old[0].slots if old else ()
        if not slots:
            raise ValueError(f"node on port {killed.port} serves no slots")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = {n.port for n in self._live()}
            for v in self.view():
                if v.master and v.port in live and v.port != killed.port and slots[0] in v.slots:
                    self.wait_ok(time_left(deadline))
                    return self.node_at(v.port)
            time.sleep(0.05)
        raise ServerStartError(f"no replica took over from port {killed.port} in {timeout:g}s")

    async def __aenter__(self) -> Self:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)

    def __repr__(self) -> str:
        return f"<RedisClusterServer {self.url}>"
