"""Transport security for NATS and Redis: TLS, mutual TLS and NATS credentials, parsed once.

Every process connects through here: workers, supervisors, clients and the CLI. Each server
gets one parsed set of options and one :class:`ssl.SSLContext`, built before the first
connection, so that a missing or unreadable CA, certificate, key, nkey seed or ``.creds``
file is a :class:`ConfigurationError` naming the setting and the file at once, instead of a
connection attempt that fails later (or, for a ``.creds`` file without a JWT, loops forever
inside nats-py).

Redis: the same context serves redis-py's pool and the journal pipe, so both agree on what
the URL says. The options are read from the ``rediss://`` URL's query, as redis-py reads
them (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``,
``ssl_check_hostname``, ...), and from the ``redis_tls_*`` settings; the query is removed
from the URL both clients then parse, so neither builds a context of its own.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import nkeys
from redis.asyncio.connection import Connection, SSLConnection, parse_url

from stalwart._secrets import mask_urls
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from stalwart.config import Settings

__all__ = ["NatsSecurity", "RedisTLS", "RedisTarget", "redis_target"]


def _option(name: str) -> str:
    """How a user sets ``name``: its variable and its flag."""
    return f"STALWART_{name.upper()} (--{name.replace('_', '-')})"


def _context(
    what: str,
    *,
    ca: tuple[str, str] | None,
    cert: tuple[str, str] | None,
    key: tuple[str, str] | None,
    verify: ssl.VerifyMode = ssl.CERT_REQUIRED,
    check_hostname: bool = True,
    ca_path: str = "",
    key_password: str | None = None,
    min_version: int | None = None,
    ciphers: str = "",
) -> ssl.SSLContext:
    """A client context; ``ca``, ``cert`` and ``key`` are (option, path) pairs for messages.

    Every file is loaded here, so a bad one is reported now, naming its option.
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = check_hostname and verify != ssl.CERT_NONE
    ctx.verify_mode = verify
    if key is not None and cert is None:
        raise ConfigurationError(
            f"{what}: {key[0]} is set but no client certificate is: mutual TLS needs both"
        )
    if cert is not None:
        try:
            ctx.load_cert_chain(cert[1], key[1] if key else None, password=key_password)
        except (OSError, ssl.SSLError, ValueError) as exc:
            named = f"{cert[0]}={cert[1]!r}" + (f" / {key[0]}={key[1]!r}" if key else "")
            raise ConfigurationError(
                f"{what}: cannot load the client certificate and key {named}: {_why(exc)}"
            ) from None
    if ca is not None or ca_path:
        try:
            ctx.load_verify_locations(cafile=ca[1] if ca else None, capath=ca_path or None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            named = f"{ca[0]}={ca[1]!r}" if ca else f"ssl_ca_path={ca_path!r}"
            raise ConfigurationError(
                f"{what}: cannot load the CA certificates {named}: {_why(exc)}"
            ) from None
    if min_version is not None:
        ctx.minimum_version = ssl.TLSVersion(min_version)
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise ConfigurationError(f"{what}: bad ssl_ciphers {ciphers!r}: {_why(exc)}") from None
    return ctx


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, ssl.SSLError):
        # "[SSL] PEM lib (_ssl.c:3900)" says little; the reason and the library say more.
        reason = exc.reason or ""
        return f"not a usable PEM file ({reason or exc})"
    return str(exc) or type(exc).__name__


# -- NATS -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NatsSecurity:
    """TLS and credentials for NATS, from the ``nats_*`` settings (see docs/security.md).

    Any TLS option turns TLS on (as a ``tls://`` URL does): the client then refuses a server
    that does not require TLS rather than send credentials in plain text.
    """

    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    nkey_seed: str = ""
    creds: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> NatsSecurity:
        """The NATS options of ``settings``."""
        return cls(
            tls_ca=settings.nats_tls_ca,
            tls_cert=settings.nats_tls_cert,
            tls_key=settings.nats_tls_key,
            nkey_seed=settings.nats_nkey_seed,
            creds=settings.nats_creds,
        )

    def describe(self) -> str:
        """What this client presents, for error messages (paths, never contents)."""
        parts = []
        if self.tls_cert:
            parts.append(f"client certificate {self.tls_cert!r}")
        if self.nkey_seed:
            parts.append(f"nkey seed {self.nkey_seed!r}")
        if self.creds:
            parts.append(f"creds {self.creds!r}")
        return ", ".join(parts)

    @property
    def tls(self) -> bool:
        """Whether TLS options are set (so TLS is required of the server)."""
        return bool(self.tls_ca or self.tls_cert or self.tls_key)

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for nats-py's ``connect``, every file checked first.

        Raises :class:`ConfigurationError` naming the option, the file and the cause.
        """
        if self.nkey_seed and self.creds:
            raise ConfigurationError(
                f"NATS: set {_option('nats_nkey_seed')} or {_option('nats_creds')}, not both "
                "(a .creds file carries its own nkey seed)"
            )
        options: dict[str, Any] = {}
        if self.tls:
            options["tls"] = _context(
                "NATS",
                ca=("STALWART_NATS_TLS_CA", self.tls_ca) if self.tls_ca else None,
                cert=("STALWART_NATS_TLS_CERT", self.tls_cert) if self.tls_cert else None,
                key=("STALWART_NATS_TLS_KEY", self.tls_key) if self.tls_key else None,
            )
        if self.nkey_seed:
            seed = _read_text("nats_nkey_seed", self.nkey_seed).strip()
            _check_seed(seed, "nats_nkey_seed", f"({self.nkey_seed!r})")
            # A path, not the seed: nats-py reads it at each (re)connect, so a rotated file
            # is picked up, and the seed does not sit in the client's options.
            options["nkeys_seed"] = self.nkey_seed
        if self.creds:
            _check_creds(self.creds)
            options["user_credentials"] = self.creds
        return options


def _read_text(name: str, path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"NATS: cannot read {_option(name)}={path!r}: {_why(exc)}"
        ) from None


def _check_seed(seed: str, name: str, where: str = "") -> str:
    """The public key of user seed ``seed``, or a ConfigurationError."""
    shown = f"{_option(name)}" + (f" {where}" if where else "")
    try:
        kp = nkeys.from_seed(bytearray(seed.encode()))
    except Exception as exc:  # nkeys raises its own errors and binascii/ValueError alike
        raise ConfigurationError(
            f"NATS: {shown} is not an nkey seed ({type(exc).__name__}): expected one line "
            "starting with SU (as `nk -gen user` or nsc writes it)"
        ) from None
    public = str(kp.public_key.decode())
    kp.wipe()
    if not public.startswith("U"):
        raise ConfigurationError(
            f"NATS: {shown} is the seed of {_ROLES.get(public[:1], 'a non-user')} key, not of "
            "a user: connect with a user seed (SU...)"
        )
    return public


_ROLES = {"O": "an operator", "A": "an account", "N": "a server", "C": "a cluster"}


def _block(lines: list[str], marker: str) -> str | None:
    """The line after the one containing ``marker`` (how nats-py reads a .creds file)."""
    for i, line in enumerate(lines):
        if marker in line:
            return lines[i + 1].strip() if i + 1 < len(lines) else ""
    return None


def _check_creds(path: str) -> None:
    text = _read_text("nats_creds", path)
    lines = text.splitlines()
    name = "nats_creds"
    jwt = _block(lines, "BEGIN NATS USER JWT")
    seed = _block(lines, "BEGIN USER NKEY SEED")
    if not jwt or seed is None:
        missing = "user JWT" if not jwt else "user nkey seed"
        raise ConfigurationError(
            f"NATS: {_option(name)}={path!r} is not a .creds file: it has no {missing} block "
            "(-----BEGIN NATS USER JWT----- / -----BEGIN USER NKEY SEED-----, as nsc writes it)"
        )
    claims = _jwt_claims(jwt, path)
    public = _check_seed(seed, name, f"({path!r}, its seed)")
    if claims.get("sub") != public:
        raise ConfigurationError(
            f"NATS: {_option(name)}={path!r}: the nkey seed does not belong to the JWT's user "
            f"({claims.get('sub')!r})"
        )
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp and exp < time.time():
        raise ConfigurationError(
            f"NATS: {_option(name)}={path!r}: the user JWT expired at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(exp))}"
        )


def _jwt_claims(jwt: str, path: str) -> dict[str, Any]:
    parts = jwt.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not three dot-separated parts")
        body = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(body))
        if not isinstance(claims, dict):
            raise ValueError("claims are not an object")
    except (ValueError, binascii.Error) as exc:
        raise ConfigurationError(
            f"NATS: {_option('nats_creds')}={path!r}: the user JWT is garbled ({exc})"
        ) from None
    return claims


# -- Redis ----------------------------------------------------------------------------------

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
        return _context(
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

    url: str
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
                f"Redis: {_option(setting)}={value!r} and {query_name}={values[query_name]!r} "
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
