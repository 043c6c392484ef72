"""A JetStream cluster of embedded ``nats-server`` nodes on loopback, for tests and benchmarks."""

from __future__ import annotations

import secrets
import time
from typing import Any

import anyio.to_thread

from stalwart.servers._errors import RoutePortTaken, ServerError, ServerStartError
from stalwart.servers._nats import ClusterRoutes, NatsServer
from stalwart.servers._process import LOOPBACK, Managed, free_port, time_left

_POLL = 0.05
_ROUTE_ATTEMPTS = 5
"""Starts of a new cluster, each on new route ports, before a route port race is an error."""


class NatsCluster(Managed):
    """``size`` JetStream ``nats-server`` nodes on free loopback ports, routed to each other.

    Each node is a :class:`NatsServer` (same lifecycle: no orphans, logs, temp store dirs)
    with its own store dir and a fixed route port and server name, so a node that is
    :meth:`kill`\\ ed and :meth:`restart`\\ ed rejoins as the same JetStream peer with its data.
    :attr:`urls` is the comma-separated client URL list Stalwart accepts as ``nats_url``.

    :meth:`start` returns once every node is healthy and the cluster has elected a meta
    leader that counts every node as a current peer (before that, creating a replicated
    stream fails). Leaders are read from each node's
    monitoring endpoint (``/jsz``): :meth:`meta_leader`, :meth:`stream_leader`.

    Like the servers it is made of, it is not thread-safe; start it (and restart nodes) from
    a thread that outlives it. The ``a``-prefixed methods do the waiting in a worker thread,
    for use inside an event loop.
    """

    def __init__(self, size: int = 3, *, binary: str | None = None, name: str = "") -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least 1 node, got size={size}")
        self.name = name or f"stalwart-{secrets.token_hex(4)}"
        self._binary = binary
        self.nodes: list[NatsServer] = self._build(size)

    def _build(self, size: int) -> list[NatsServer]:
        """``size`` nodes on free route ports, each routed to the others."""
        route_ports = [free_port() for _ in range(size)]
        return [
            NatsServer(
                binary=self._binary,
                cluster=ClusterRoutes(
                    self.name,
                    port,
                    tuple(
                        f"nats-route://{LOOPBACK}:{p}" for j, p in enumerate(route_ports) if j != i
                    ),
                ),
                server_name=f"{self.name}-n{i}",
            )
            for i, port in enumerate(route_ports)
        ]

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated (``nats://127.0.0.1:p1,nats://...``)."""
        return ",".join(node.url for node in self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    # -- lifecycle

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, then wait (up to ``timeout`` in all) for :meth:`meta_ready`.

        A cluster started from nothing is stopped again if it fails to start, so nothing is
        left running; if another process took a route port between choosing and binding it,
        every node gets new route ports and the start is tried again.
        """
        deadline = time.monotonic() + timeout
        fresh = not any(node.running for node in self.nodes)
        for attempt in range(_ROUTE_ATTEMPTS):
            try:
                for node in self.nodes:
                    node.start(timeout=time_left(deadline))
                self.wait_meta_ready(time_left(deadline))
                return
            except BaseException as exc:
                if not fresh:
                    raise  # its running nodes name the route ports: they cannot move
                self.stop()  # the caller never got it, so would never stop it
                if not self._new_routes(exc, attempt):
                    raise

    async def astart(self, timeout: float = 30.0) -> None:
        """:meth:`start` for an event loop: spawns on this thread, waits in a worker thread."""
        deadline = time.monotonic() + timeout
        fresh = not any(node.running for node in self.nodes)
        for attempt in range(_ROUTE_ATTEMPTS):
            try:
                for node in self.nodes:
                    await node._start_async(time_left(deadline))
                await anyio.to_thread.run_sync(self.wait_meta_ready, time_left(deadline))
                return
            except BaseException as exc:
                if not fresh:
                    raise
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.stop)
                if not self._new_routes(exc, attempt):
                    raise

    def _new_routes(self, exc: BaseException, attempt: int) -> bool:
        """After a stopped failed start: new nodes on new route ports, if ``exc`` was a route
        port race and attempts are left (then True: start again)."""
        if isinstance(exc, RoutePortTaken) and attempt + 1 < _ROUTE_ATTEMPTS:
            self.nodes = self._build(len(self.nodes))
            return True
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node and remove their temp dirs (idempotent)."""
        for node in self.nodes:
            node.stop(timeout)

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (a crash): its store stays for :meth:`restart`."""
        self.nodes[index].kill()

    def restart(self, index: int, timeout: float = 15.0) -> None:
        """Start node ``index`` again (after :meth:`kill`) on the same ports and store."""
        self.nodes[index].restart(timeout)

    async def arestart(self, index: int, timeout: float = 15.0) -> None:
        """:meth:`restart` for an event loop (the health wait runs in a worker thread)."""
        node = self.nodes[index]
        node.kill()
        await node._start_async(timeout)

    def index_of(self, server_name: str) -> int:
        """The index of the node called ``server_name``; :class:`ServerError` if none is."""
        for i, node in enumerate(self.nodes):
            if node.server_name == server_name:
                return i
        raise ServerError(f"no node of cluster {self.name!r} is called {server_name!r}")

    # -- leaders

    def _jsz(self, query: str = "") -> list[dict[str, Any]]:
        return [
            data
            for node in self.nodes
            if node.running and (data := node.monitor(f"/jsz{query}")) is not None
        ]

    def meta_leader(self) -> int | None:
        """The index of the node that is the JetStream meta leader now, None if there is none.

        Asked of every running node; a leader counts only when a node that sees it is
        itself running (a killed leader lingers in the others' view for a moment).
        """
        for data in self._jsz():
            meta = data.get("meta_cluster") or {}
            leader = meta.get("leader")
            if leader:
                i = self.index_of(str(leader))
                if self.nodes[i].running:
                    return i
        return None

    def stream_leader(self, stream: str) -> int | None:
        """The index of the node leading ``stream`` (a KV bucket's is ``KV_<bucket>``), or None."""
        for data in self._jsz("?accounts=true&streams=true"):
            for account in data.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") != stream:
                        continue
                    leader = (detail.get("cluster") or {}).get("leader")
                    if leader:
                        i = self.index_of(str(leader))
                        if self.nodes[i].running:
                            return i
        return None

    def meta_ready(self) -> int | None:
        """The meta leader's index once it counts every node as a current peer, else None.

        Until then it may refuse a replicated stream ("no suitable peers for placement"):
        what :meth:`start` waits for.
        """
        leader = self.meta_leader()
        if leader is None:
            return None
        data = self.nodes[leader].monitor("/jsz") or {}
        meta = data.get("meta_cluster") or {}
        peers = [r for r in meta.get("replicas") or [] if r.get("name") != meta.get("leader")]
        running = sum(node.running for node in self.nodes)
        if len(peers) + 1 >= running and all(p.get("current") for p in peers):
            return leader
        return None

    def wait_meta_ready(self, timeout: float = 15.0) -> int:
        """Block until :meth:`meta_ready`; the meta leader's index."""
        return self._wait(self.meta_ready, timeout, "meta leader with every node current")

    def wait_meta_leader(self, timeout: float = 15.0) -> int:
        """Block until a meta leader is elected; its index. :class:`ServerStartError` on timeout."""
        return self._wait(self.meta_leader, timeout, "a JetStream meta leader")

    def wait_stream_leader(self, stream: str, timeout: float = 15.0) -> int:
        """Block until ``stream`` has a leader; its index."""
        return self._wait(lambda: self.stream_leader(stream), timeout, f"a leader of {stream}")

    def healthy(self, index: int) -> bool:
        """Whether node ``index`` is fully healthy: running, in the cluster, every stream and
        consumer it replicates caught up (nats-server's ``/healthz`` without options)."""
        node = self.nodes[index]
        return node.running and node._get("/healthz")[0] == 200

    def wait_healthy(self, index: int, timeout: float = 30.0) -> int:
        """Block until node ``index`` is :meth:`healthy` (after a restart: caught up); index."""
        return self._wait(
            lambda: index if self.healthy(index) else None,
            timeout,
            f"healthy node {self.nodes[index].server_name}",
        )

    async def await_healthy(self, index: int, timeout: float = 30.0) -> int:
        """:meth:`wait_healthy` without blocking the event loop."""
        return await anyio.to_thread.run_sync(self.wait_healthy, index, timeout)

    async def await_meta_leader(self, timeout: float = 15.0) -> int:
        """:meth:`wait_meta_leader` without blocking the event loop."""
        return await anyio.to_thread.run_sync(self.wait_meta_leader, timeout)

    async def await_stream_leader(self, stream: str, timeout: float = 15.0) -> int:
        """:meth:`wait_stream_leader` without blocking the event loop."""
        return await anyio.to_thread.run_sync(self.wait_stream_leader, stream, timeout)

    def _wait(self, probe: Any, timeout: float, what: str) -> int:
        deadline = time.monotonic() + timeout
        while True:
            found = probe()
            if found is not None:
                return int(found)
            if time.monotonic() >= deadline:
                logs = "\n".join(f"  {node.server_name}: {node.log_file}" for node in self.nodes)
                raise ServerStartError(
                    f"cluster {self.name!r} has no {what} after {timeout:g}s; node logs:\n{logs}"
                )
            time.sleep(_POLL)

    def __repr__(self) -> str:
        return f"<NatsCluster {self.name} nodes={self.nodes!r}>"
