"""Redis: the TLS options of a ``rediss://`` URL and the settings, as one shared context."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio.connection import Connection, SSLConnection, parse_url

from stalwart._secrets import mask_urls
from stalwart._transport._context import client_context, option
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from stalwart.config import Settings


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_BOOL = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_QUERY_TLS = frozenset(
    {
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)


@dataclass(frozen=True, slots=True)
class RedisTLS:
    """TLS options of a ``rediss://`` URL (redis-py's names), merged with the settings."""

    ca_certs: str = ""
    ca_path: str = ""
    certfile: str = ""
    keyfile: str = ""
    key_password: str = field(default="", repr=False)
    cert_reqs: str = "required"
    check_hostname: bool = True
    min_version: int | None = None
    ciphers: str = ""
    # Which option each file came from, for messages: the URL's query or a setting.
    sources: tuple[tuple[str, str], ...] = ()

    def _src(self, attr: str) -> str:
        return dict(self.sources).get(attr, attr)

    def context(self) -> ssl.SSLContext:
        """The one context redis-py's pool and the journal pipe both use."""
        return client_context(
            "Redis",
            ca=(self._src("ca_certs"), self.ca_certs) if self.ca_certs else None,
            cert=(self._src("certfile"), self.certfile) if self.certfile else None,
            key=(self._src("keyfile"), self.keyfile) if self.keyfile else None,
            verify=_CERT_REQS[self.cert_reqs],
            check_hostname=self.check_hostname,
            ca_path=self.ca_path,
            key_password=self.key_password or None,
            min_version=self.min_version,
            ciphers=self.ciphers,
        )


class _ContextSSLConnection(SSLConnection):
    """redis-py's TLS connection with a context built once, by :class:`RedisTarget`."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tls_context = tls_context

    def _connection_arguments(self) -> Mapping[str, Any]:
        # Connection's arguments plus our context (SSLConnection's would build its own).
        kwargs = dict(Connection._connection_arguments(self))
        kwargs["ssl"] = self._tls_context
        return kwargs


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A Redis URL without its TLS query options, and the one TLS context for it."""

    url: str = field(repr=False)  # it may hold a password
    """The URL both clients parse (TLS query options removed)."""
    shown: str
    """The URL as given, credentials masked: for messages."""
    tls: RedisTLS | None = None
    ssl_context: ssl.SSLContext | None = None

    def pool_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of a redis-py connection pool for this target."""
        kwargs: dict[str, Any] = dict(parse_url(self.url))
        if self.ssl_context is not None:
            kwargs["connection_class"] = _ContextSSLConnection
            kwargs["tls_context"] = self.ssl_context
        return kwargs


def redis_target(url: str, settings: Settings | None = None) -> RedisTarget:
    """Parse ``url`` and the ``redis_tls_*`` settings into a :class:`RedisTarget`.

    Raises :class:`ConfigurationError` for a TLS option without ``rediss://``, an option
    set differently in the URL and in the settings, an unknown ``ssl_*`` query option, or a
    file that cannot be loaded (naming the option and the file).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = {k: v for k, v in query if k.startswith("ssl_")}
    unknown = sorted(set(given) - _QUERY_TLS)
    if unknown:
        raise ConfigurationError(
            f"Redis URL {mask_urls(url)!r}: unsupported TLS option(s) {', '.join(unknown)} "
            f"(supported: {', '.join(sorted(_QUERY_TLS))})"
        )
    from_settings = {
        "ssl_ca_certs": ("redis_tls_ca", settings.redis_tls_ca if settings else ""),
        "ssl_certfile": ("redis_tls_cert", settings.redis_tls_cert if settings else ""),
        "ssl_keyfile": ("redis_tls_key", settings.redis_tls_key if settings else ""),
    }
    sources: dict[str, str] = {k: f"{k} in the URL" for k in given}
    values = dict(given)
    for query_name, (setting, value) in from_settings.items():
        if not value:
            continue
        if query_name in values and values[query_name] != value:
            raise ConfigurationError(
                f"Redis: {option(setting)}={value!r} and {query_name}={values[query_name]!r} "
                "in the URL disagree: set one of them"
            )
        values[query_name] = value
        sources[query_name] = f"STALWART_{setting.upper()}"
    shown = mask_urls(url)
    if scheme != "rediss":
        if values:
            named = ", ".join(sorted(sources[k].removesuffix(" in the URL") for k in values))
            raise ConfigurationError(
                f"Redis: TLS options ({named}) are set but the URL {shown!r} is not "
                "rediss://: use rediss://host:port to connect with TLS"
            )
        return RedisTarget(url=url, shown=shown)
    tls = _redis_tls(values, sources, shown)
    plain_query = urlencode([(k, v) for k, v in query if not k.startswith("ssl_")])
    stripped = urlunsplit(parts._replace(query=plain_query))
    return RedisTarget(url=stripped, shown=shown, tls=tls, ssl_context=tls.context())


def _redis_tls(values: dict[str, str], sources: dict[str, str], shown: str) -> RedisTLS:
    reqs = values.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ConfigurationError(
            f"Redis URL {shown!r}: ssl_cert_reqs must be none, optional or required, "
            f"got {values['ssl_cert_reqs']!r}"
        )
    check = values.get("ssl_check_hostname", "true").lower()
    if check not in _BOOL:
        raise ConfigurationError(
            f"Redis URL {shown!r}: ssl_check_hostname must be true or false, "
            f"got {values['ssl_check_hostname']!r}"
        )
    min_version: int | None = None
    if values.get("ssl_min_version"):
        try:
            min_version = int(ssl.TLSVersion(int(values["ssl_min_version"])))
        except ValueError:
            raise ConfigurationError(
                f"Redis URL {shown!r}: ssl_min_version must be an ssl.TLSVersion number "
                f"(771 for TLS 1.2, 772 for TLS 1.3), got {values['ssl_min_version']!r}"
            ) from None
    attrs = {"ssl_ca_certs": "ca_certs", "ssl_certfile": "certfile", "ssl_keyfile": "keyfile"}
    return RedisTLS(
        ca_certs=values.get("ssl_ca_certs", ""),
        ca_path=values.get("ssl_ca_path", ""),
        certfile=values.get("ssl_certfile", ""),
        keyfile=values.get("ssl_keyfile", ""),
        key_password=values.get("ssl_password", ""),
        cert_reqs=reqs,
        check_hostname=_BOOL[check],
        min_version=min_version,
        ciphers=values.get("ssl_ciphers", ""),
        sources=tuple((attrs[k], sources[k]) for k in attrs if k in values),
    )
