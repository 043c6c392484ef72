"""Redis Cluster: how a URL says "cluster", and the cluster-aware client behind the store.

Two ways in, both ending in the same client:

- explicit: ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://``
  with TLS, the same ``ssl_*`` options and ``redis_tls_*`` settings as ``rediss://``). Every
  listed node is a seed: the client needs one of them to answer, then learns the rest.
- detected: a plain ``redis://`` / ``rediss://`` URL whose server answers ``CLUSTER INFO``
  at first contact (a single Redis refuses it) is used as the seed of a cluster client.
  Pointing Stalwart at any one node of a cluster therefore just works.

Cluster mode has no database number (``/0`` only) and no Unix sockets.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode as SyncClusterNode
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stalwart._secrets import mask_urls
from stalwart._transport import RedisTarget, redis_target
from stalwart.checkpoints._reach import first_contact
from stalwart.errors import ConfigurationError, ServerUnavailableError

if TYPE_CHECKING:
    from stalwart.config import Settings

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""Cluster URL schemes and the single-node scheme each stands for."""


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster explicitly (``redis+cluster://``...)."""
    return urlsplit(url).scheme.lower() in CLUSTER_SCHEMES


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """The seed nodes of a cluster and how to talk to each (credentials, TLS)."""

    seeds: tuple[tuple[str, int], ...]
    target: RedisTarget
    """The first seed as a single-node target: credentials and the one TLS context."""

    @property
    def shown(self) -> str:
        """The URL as given, credentials masked: for messages."""
        return self.target.shown

    def node_url(self, host: str, port: int) -> str:
        """A single-node URL for ``host:port`` with this target's scheme and credentials
        (the append pipe of that node connects with it)."""
        parts = urlsplit(self.target.url)
        creds = parts.netloc.rpartition("@")[0]
        at = f"{creds}@" if creds else ""
        return f"{parts.scheme}://{at}{host}:{port}"


def parse_cluster_url(url: str, settings: Settings | None = None) -> ClusterTarget:
    """Read a ``redis+cluster://`` URL; :class:`ConfigurationError` naming what is wrong."""
    shown = mask_urls(url)
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigurationError(f"{shown!r} is not a redis+cluster:// or rediss+cluster:// URL")
    creds, _, hosts = parts.netloc.rpartition("@")
    if parts.path not in ("", "/", "/0"):
        raise ConfigurationError(
            f"Redis Cluster URL {shown!r}: a cluster has only database 0 (got {parts.path!r})"
        )
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = item.strip(), "6379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(
                f"Redis Cluster URL {shown!r}: {item!r} is not host:port; expected "
                "redis+cluster://[user:password@]host:port[,host:port...]"
            )
        seeds.append((host, int(port)))
    at = f"{creds}@" if creds else ""
    query = f"?{parts.query}" if parts.query else ""
    first = f"{scheme}://{at}{seeds[0][0]}:{seeds[0][1]}/0{query}"
    target = redis_target(first, settings)
    # redis_target masks the single-node URL: show the one the user wrote instead.
    target = RedisTarget(
        url=target.url, shown=shown, tls=target.tls, ssl_context=target.ssl_context
    )
    if target.tls is not None and target.tls.key_password:
        raise ConfigurationError(
            f"Redis Cluster URL {shown!r}: ssl_password (an encrypted client key) is not "
            "supported in cluster mode: use an unencrypted key file"
        )
    return ClusterTarget(seeds=tuple(seeds), target=target)


def single_as_cluster(url: str, settings: Settings | None = None) -> ClusterTarget:
    """A plain ``redis://host:port`` / ``rediss://`` URL as the one seed of a cluster."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise ConfigurationError(f"{mask_urls(url)!r}: Redis Cluster needs host:port, not a socket")
    return parse_cluster_url(
        parts._replace(scheme=f"{parts.scheme.lower()}+cluster", path="").geturl(), settings
    )


async def cluster_enabled(target: RedisTarget, within: float) -> bool:
    """Whether the server of ``target`` runs in cluster mode.

    Asked once at connect, after the first contact succeeded: ``CLUSTER INFO`` answers on a
    cluster node and is refused by a single Redis (so is anything a user's ACL forbids:
    such a server is taken as a single Redis).
    """
    probe = aioredis.Redis.from_pool(
        aioredis.ConnectionPool(**target.pool_kwargs(), socket_timeout=within)
    )
    try:
        async with asyncio.timeout(within):
            await probe.cluster("INFO")
    except (RedisError, OSError, TimeoutError):
        return False
    finally:
        await probe.aclose()
    return True


def _tls_kwargs(target: RedisTarget) -> dict[str, Any]:
    tls = target.tls
    if tls is None:
        return {}
    # redis-py's cluster client builds each node's connection from these (one context per
    # connection, same options as the single-node context).
    return {
        "ssl": True,
        "ssl_ca_certs": tls.ca_certs or None,
        "ssl_certfile": tls.certfile or None,
        "ssl_keyfile": tls.keyfile or None,
        "ssl_cert_reqs": tls.cert_reqs,
        "ssl_check_hostname": tls.check_hostname,
        "ssl_min_version": tls.min_version,
        "ssl_ciphers": tls.ciphers or None,
    }


def client_kwargs(ct: ClusterTarget) -> dict[str, Any]:
    """Credentials and TLS of ``ct`` as keyword arguments of redis-py's cluster clients
    (asyncio and sync alike; the seeds go in ``startup_nodes``)."""
    kw = ct.target.pool_kwargs()
    return {
        "username": kw.get("username"),
        "password": kw.get("password"),
        **_tls_kwargs(ct.target),
    }


def redis_clients(url: str) -> tuple[aioredis.Redis, redis.Redis]:
    """An asyncio and a sync redis-py client for ``url``, for adapters that keep data of
    their own in Redis: plain clients for ``redis://``, ``rediss://`` and ``unix://``,
    cluster clients (seeds, credentials and TLS from the URL) for ``redis+cluster://``.

    The cluster clients take every single-slot command and script a plain one does; they
    are typed as ``Redis`` so callers keep one client type. Nothing is contacted yet.
    """
    if not is_cluster_url(url):
        return aioredis.Redis.from_url(url), redis.Redis.from_url(url)
    ct = parse_cluster_url(url)
    kw = client_kwargs(ct)
    async_client = aioredis.RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in ct.seeds], **kw
    )
    sync_client = redis.RedisCluster(
        # redis-py's sync ClusterNode has no annotations.
        startup_nodes=[SyncClusterNode(h, p) for h, p in ct.seeds],  # type: ignore[no-untyped-call]
        **kw,
    )
    return cast("aioredis.Redis", async_client), cast("redis.Redis", sync_client)


async def connect_cluster(
    ct: ClusterTarget,
    *,
    max_connections: int,
    connect_timeout: float,
    scripts: tuple[str, ...],
) -> RedisCluster:
    """A cluster client that knows the slot map and has ``scripts`` loaded on every master.

    The first contact (bounded, with a reason on failure) is made with each seed in turn
    until one answers. Raises :class:`ServerUnavailableError` when none does in time.
    """
    deadline = time.monotonic() + connect_timeout
    last: ServerUnavailableError | None = None
    for i, (host, port) in enumerate(ct.seeds):
        # Each seed gets its share of what is left, the last one all of it.
        left = deadline - time.monotonic()
        share = left if i == len(ct.seeds) - 1 else left / (len(ct.seeds) - i)
        seed = RedisTarget(
            url=ct.node_url(host, port), shown=ct.shown, tls=ct.target.tls,
            ssl_context=ct.target.ssl_context,
        )  # fmt: skip
        try:
            await first_contact(seed.url, max(0.1, share), target=seed)
            break
        except ServerUnavailableError as exc:
            last = exc
    else:
        assert last is not None
        raise last
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in ct.seeds],
        max_connections=max_connections,
        # Rides out a failover (a master's replica is promoted after cluster-node-timeout):
        # redis-py refreshes its slot map on MOVED and on a lost connection, and retries.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=30),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=False,
        **client_kwargs(ct),
    )
    try:
        async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
            await client.initialize()
            for script in scripts:
                await client.script_load(script)  # redis-py sends it to every master
    # RedisClusterException is not a RedisError: it says "cluster mode is not enabled" for a
    # single Redis named as a cluster, and "not all slots are covered" for a broken one.
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        await client.aclose()
        raise ServerUnavailableError(
            f"cannot use the Redis Cluster at {ct.shown}: {type(exc).__name__}: "
            f"{mask_urls(str(exc)) or 'no answer'}"
        ) from exc
    return client
