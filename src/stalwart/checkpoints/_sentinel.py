"""Redis behind Sentinel: the ``redis+sentinel://`` URL, and finding the current primary.

The URL form (one or more Sentinels, the monitored service's name, an optional database)::

    redis+sentinel://[user:password@]host1[:port1][,host2[:port2]...]/<service>[/<db>]
        [?sentinel_username=...&sentinel_password=...]

A Sentinel without a port is at 26379. The user and password are the data nodes' (the
primary's); Sentinels that require a password of their own take ``sentinel_password`` (and
``sentinel_username``). TLS through Sentinel (``rediss+sentinel://``) is refused with a clear
message: it is not supported yet.

Everything that writes asks the Sentinels for the primary whenever it (re)connects: redis-py's
Sentinel-managed pool does for the store's commands, and the append pipe is given
:meth:`SentinelURL.resolve` (it also reconnects when a node answers READONLY, which is what a
demoted primary says).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from stalwart._secrets import mask_urls
from stalwart.errors import ConfigurationError

SENTINEL_SCHEMES = ("redis+sentinel",)
"""Schemes of a Redis URL that names Sentinels instead of a server."""
_TLS_SENTINEL = "rediss+sentinel"
DEFAULT_SENTINEL_PORT = 26379
_QUERY = frozenset({"sentinel_username", "sentinel_password"})
FORM = (
    "redis+sentinel://[user:password@]host1[:port1][,host2[:port2]...]/<service>[/<db>]"
    "[?sentinel_username=...&sentinel_password=...]"
)
"""The URL form, for messages and docs."""


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names Sentinels (``redis+sentinel://`` or ``rediss+sentinel://``)."""
    scheme = url.partition("://")[0].lower()
    return scheme in (*SENTINEL_SCHEMES, _TLS_SENTINEL)


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL (see the module docstring)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str = ""
    password: str = field(default="", repr=False)
    sentinel_username: str = ""
    sentinel_password: str = field(default="", repr=False)
    shown: str = ""
    """The URL as given, credentials masked: for messages."""

    def node_url(self, host: str, port: int) -> str:
        """A plain ``redis://`` URL of one data node, with this URL's credentials and db."""
        auth = ""
        if self.password or self.username:
            auth = quote(self.username, safe="")
            if self.password:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        shown_host = f"[{host}]" if ":" in host else host
        return f"redis://{auth}{shown_host}:{port}/{self.db}"

    def sentinel(self, **connection_kwargs: Any) -> Sentinel:
        """A redis-py :class:`Sentinel` over this URL's Sentinels.

        ``connection_kwargs`` are the data nodes' (socket timeouts also apply to Sentinels).
        """
        skw: dict[str, Any] = {
            k: v for k, v in connection_kwargs.items() if k.startswith("socket_")
        }
        if self.sentinel_password:
            skw["password"] = self.sentinel_password
            if self.sentinel_username:
                skw["username"] = self.sentinel_username
        # Through an Any: redis-py < 8.2 leaves Sentinel's constructor untyped, 8.2 types it,
        # and a "type: ignore" that one of them needs the other reports as unused.
        sentinel: Any = Sentinel
        result: Sentinel = sentinel(list(self.sentinels), sentinel_kwargs=skw, **connection_kwargs)
        return result

    def node_kwargs(self) -> dict[str, Any]:
        """Connection options of the data nodes (credentials, db) for a redis-py pool."""
        kw: dict[str, Any] = {"db": self.db}
        if self.username:
            kw["username"] = self.username
        if self.password:
            kw["password"] = self.password
        return kw

    def pool(self, sentinel: Sentinel, **kwargs: Any) -> SentinelConnectionPool:
        """A blocking connection pool to the current primary (re-asked on every connect)."""
        return BlockingSentinelPool(
            self.service,
            sentinel,
            connection_class=PrimaryConnection,
            **self.node_kwargs(),
            **kwargs,
        )  # type: ignore[no-untyped-call]


class PrimaryConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that asks for the primary on *every* (re)connection.

    redis-py's own asks only when the pool hands a connection out; a command retried after a
    lost connection reconnects from inside the send (``connect_check_health``) to the
    address it had, so through a failover every retry went to the dead primary until the
    pool's retries ran out (measured: 25 s of stalled writes after a 2.5 s failover).
    """

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self.is_connected and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )

    async def _connect_retry(self) -> None:
        if self.is_connected:
            return
        if self.connection_pool.is_master:
            # connect_check_health asks for the primary: once is enough.
            await self.connect_check_health(
                check_health=self.connection_pool.check_connection, retry_socket_connect=False
            )
            return
        await super()._connect_retry()  # type: ignore[no-untyped-call]


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel-managed pool that waits for a free connection at its limit (as the
    store's plain pool does) instead of raising."""


async def resolve_primary(sentinel: Sentinel, service: str) -> tuple[str, int]:
    """The address the Sentinels give for ``service``'s primary (redis-py's
    ``MasterNotFoundError``, a ``ConnectionError``, when none answers for it)."""
    host, port = await sentinel.discover_master(service)
    return str(host), int(port)


def _split_host(item: str, url: str) -> tuple[str, int]:
    text = item.strip()
    if not text:
        raise ConfigurationError(f"Redis URL {mask_urls(url)!r}: an empty Sentinel address")
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(
            f"Redis URL {mask_urls(url)!r}: Sentinel address {text!r} has no valid port "
            f"(expected host:port, port 1-65535)"
        )
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL, or raise :class:`ConfigurationError` saying what is
    wrong and the expected form (see the module docstring)."""
    shown = mask_urls(url)
    scheme, sep, rest = url.partition("://")
    if scheme.lower() == _TLS_SENTINEL:
        raise ConfigurationError(
            f"Redis URL {shown!r}: TLS through Sentinel (rediss+sentinel://) is not "
            "supported yet; use redis+sentinel:// on a trusted network, or point rediss:// "
            "at the primary"
        )
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ConfigurationError(f"{shown!r} is not a Sentinel URL; expected {FORM}")
    parts = urlsplit("redis://" + rest)  # the netloc holds a host list urlsplit cannot port
    netloc = parts.netloc
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        userinfo, hostlist = "", netloc
    username, _, password = userinfo.partition(":")
    hosts = tuple(_split_host(h, url) for h in hostlist.split(","))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ConfigurationError(
            f"Redis URL {shown!r}: name the Sentinel service (and optionally the database "
            f"number) in the path; expected {FORM}"
        )
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ConfigurationError(
                f"Redis URL {shown!r}: the database must be a number, got {path[1]!r}"
            )
        db = int(path[1])
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - _QUERY)
    if unknown:
        raise ConfigurationError(
            f"Redis URL {shown!r}: unsupported option(s) {', '.join(unknown)} for a Sentinel "
            f"URL (supported: {', '.join(sorted(_QUERY))})"
        )
    return SentinelURL(
        sentinels=hosts,
        service=unquote(path[0]),
        db=db,
        username=unquote(username),
        password=unquote(password),
        sentinel_username=query.get("sentinel_username", ""),
        sentinel_password=query.get("sentinel_password", ""),
        shown=shown,
    )
