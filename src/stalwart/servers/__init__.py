"""Embedded servers: throwaway ``nats-server`` and ``redis-server`` on free loopback ports.

Used by the test suite, the benchmarks and the CLI's embedded mode (no URLs configured, so
Stalwart starts its own servers). Every server binds to 127.0.0.1 on a port picked here, so the
machine's shared servers on the standard ports are never touched.

No orphans: a server dies with the process that started it, even one that is SIGKILLed (on
Linux), and a normal exit stops whatever is still running. Start a server from a thread that
lives as long as it does (the main thread or the event-loop thread; see ``_process``); the
async context manager of :class:`EmbeddedServers` spawns on the event-loop thread and only
waits for health in a worker thread, for that reason. :mod:`stalwart.testing` re-exports
every name here.

These objects are not thread-safe: drive each one from a single thread.
"""

from stalwart.servers._binaries import (
    MIN_NATS_VERSION,
    find_nats_server,
    find_redis_server,
    nats_server_version,
)
from stalwart.servers._embedded import EmbeddedServers
from stalwart.servers._errors import (
    RoutePortTaken,
    ServerError,
    ServerNotFound,
    ServerStartError,
)
from stalwart.servers._nats import NatsServer
from stalwart.servers._nats_cluster import NatsCluster
from stalwart.servers._process import free_port
from stalwart.servers._redis import RedisServer
from stalwart.servers._redis_cluster import RedisClusterServer
from stalwart.servers._redis_ha import RedisHA, SentinelServer
from stalwart.servers._tls import ServerTLS

__all__ = [
    "MIN_NATS_VERSION",
    "EmbeddedServers",
    "NatsCluster",
    "NatsServer",
    "RedisClusterServer",
    "RedisHA",
    "RedisServer",
    "RoutePortTaken",
    "SentinelServer",
    "ServerError",
    "ServerNotFound",
    "ServerStartError",
    "ServerTLS",
    "find_nats_server",
    "find_redis_server",
    "free_port",
    "nats_server_version",
]
