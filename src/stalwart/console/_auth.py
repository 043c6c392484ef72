"""Who may use the console, and which requests may change something: pure decisions.

Three checks, each a plain function over plain data so they are tested without a server:

- **Access**: with a token set, an API request needs ``Authorization: Bearer <token>`` or
  the session cookie a token login set (the cookie holds an HMAC of the token, never the
  token). Both are compared in constant time.
- **Host**: bound to a loopback address, only requests naming a loopback host (or a host
  given with ``allowed_hosts``) are served: a web page that rebinds its own DNS name to
  127.0.0.1 (DNS rebinding) becomes same-origin with the console and must still be refused.
- **CSRF**: a mutating request needs an ``Origin`` (or, lacking one, a ``Referer``) of the
  console's own origin AND the ``X-Stalwart-CSRF`` header with the per-process CSRF token
  that only an authenticated same-origin script can read (``GET /api/session``). Both, also
  for bearer requests: a proxy that injects the bearer token makes it as ambient as a cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

COOKIE = "stalwart_console"
CSRF_HEADER = "x-stalwart-csrf"
LOGIN_FAILURES_PER_MINUTE = 10
"""Failed token logins allowed per minute before the console answers 429 (guessing)."""

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is loopback."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header value, without its port (``[::1]:80`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


@dataclass
class Guard:
    """The console's access policy (one per server process).

    ``token``: the access token ("" for none: only allowed on a loopback bind).
    ``bind``: the address the server listens on. ``allowed_hosts``: extra ``Host`` names to
    serve on a loopback bind (a name a local proxy forwards with). ``read_only``: every
    mutating route answers 403. ``public_origin``: the origin browsers see when a proxy in
    front terminates TLS (``https://console.example.com``); "" for the request's own.
    """

    token: str
    bind: str
    read_only: bool = False
    allowed_hosts: frozenset[str] = frozenset()
    public_origin: str = ""
    csrf_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    _failures: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._session = (
            hmac.new(self.token.encode(), b"stalwart-console-session", hashlib.sha256).hexdigest()
            if self.token
            else ""
        )

    @property
    def auth_required(self) -> bool:
        """Whether requests need the token (or its cookie)."""
        return bool(self.token)

    @property
    def session_value(self) -> str:
        """The session cookie's value: an HMAC of the token, so the cookie never holds it."""
        return self._session

    def host_allowed(self, host_header: str) -> bool:
        """Whether a request with this ``Host`` is served (DNS-rebinding defence)."""
        if not is_loopback(self.bind):
            return not self.allowed_hosts or host_name(host_header).lower() in self.allowed_hosts
        name = host_name(host_header).lower()
        return is_loopback(name) or name in self.allowed_hosts

    def authenticated(self, authorization: str, cookie: str) -> bool:
        """Whether a request with these ``Authorization`` header and cookie values may read."""
        if not self.token:
            return True
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and given:
            return hmac.compare_digest(given.strip().encode(), self.token.encode())
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._session.encode())

    def login(self, given: str, now: float | None = None) -> bool | None:
        """Check a token typed at the login page: True, False, or None when rate-limited."""
        now = time.monotonic() if now is None else now
        self._failures[:] = [t for t in self._failures if now - t < 60]
        if len(self._failures) >= LOGIN_FAILURES_PER_MINUTE:
            return None
        if self.token and hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        self._failures.append(now)
        return False

    def csrf_ok(self, origin: str, referer: str, header_token: str, own_origin: str) -> bool:
        """Whether a mutating request is same-origin and carries the CSRF token."""
        source = origin or _origin_of(referer)
        if not source or source == "null" or source != own_origin:
            return False
        return bool(header_token) and hmac.compare_digest(
            header_token.encode(), self.csrf_token.encode()
        )


def _origin_of(url: str) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def new_token() -> str:
    """A fresh random access token (what the console makes when none is given)."""
    return secrets.token_urlsafe(24)
