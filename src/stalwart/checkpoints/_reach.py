"""The first contact with Redis: bounded in time, with a reason when it fails.

The store's own pool retries every command for about 25 s through a Redis restart, which is
right for an established deployment but made a process started against a wrong or dead
Redis wait that long before saying anything. The first contact is made here instead, on a
connection without retries, within ``connect_timeout``: refused connections are retried
inside the bound, bad credentials, TLS failures and non-Redis servers fail at once.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    InvalidResponse,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from stalwart._secrets import mask_urls
from stalwart._transport import RedisTarget, redis_target
from stalwart.checkpoints._sentinel import FORM as SENTINEL_FORM
from stalwart.checkpoints._sentinel import (
    SENTINEL_SCHEMES,
    is_sentinel_url,
    parse_sentinel_url,
    resolve_primary,
)
from stalwart.errors import ConfigurationError, ServerUnavailableError

REDIS_SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)


def parse_redis_url(url: str) -> None:
    """Raise :class:`ConfigurationError` when ``url`` is not a Redis URL Stalwart accepts:
    one redis-py accepts, or a ``redis+sentinel://`` URL (see ``_sentinel``)."""
    if is_sentinel_url(url):
        parse_sentinel_url(url)
        return
    try:
        aioredis.connection.parse_url(url)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"{mask_urls(url)!r} is not a Redis URL ({mask_urls(str(exc))}); expected "
            "redis://[user:password@]host:port/db, rediss:// (TLS), unix:///path or "
            f"{SENTINEL_FORM}"
        ) from None


_HANG_UPS = ("closed by server", "connection reset by peer")
"""How redis-py says the server hung up: a TLS port spoken to in plain text does that."""


def _hung_up(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(h in text for h in _HANG_UPS)


_HANDSHAKE_BOUND = 1.0
"""Seconds the first TLS handshake may take before the port is checked for plain Redis."""


async def _refuse_plain_port(target: RedisTarget, within: float) -> None:
    """Raise when the server of a ``rediss://`` URL turns out to answer in plain text."""
    kw = target.pool_kwargs()
    host, port = str(kw.get("host") or "localhost"), int(kw.get("port") or 6379)
    if await _plain_answer(host, port, within):
        raise ServerUnavailableError(
            f"cannot reach Redis at {target.shown}: TLS failure: the URL asks for TLS "
            f"(rediss://) but the server at {host}:{port} answers in plain text: it has no "
            "TLS there (use its TLS port, or redis:// for a plain one)"
        )


def _hang_up_hint(target: RedisTarget) -> str:
    """Why a server hangs up on a PING: TLS expected, or a client certificate refused.

    With TLS 1.3 the server checks the client certificate after the client's side of the
    handshake is done, so a refusal can arrive as a bare hang-up on the first command.
    """
    if target.tls is None:
        return ": is it a TLS port? (use rediss:// and the TLS settings)"
    if not target.tls.certfile:
        return (
            ": does it require a client certificate (mutual TLS)? Set STALWART_REDIS_TLS_CERT "
            "and STALWART_REDIS_TLS_KEY (or ssl_certfile/ssl_keyfile in the URL)"
        )
    return ": it may have refused the client certificate (is it signed by a CA it trusts?)"


async def _plain_answer(host: str, port: int, within: float) -> bool:
    """Whether the server at ``host:port`` answers a plain-text PING (so it has no TLS there).

    A TLS client sent to a plain port would wait for a handshake answer that never comes;
    asking in plain text first tells at once. A TLS port hangs up on the plain PING.
    """
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"PING\r\n")
                line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    return line[:1] in (b"+", b"-") and line.endswith(b"\r\n")


def _permanent(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (
        isinstance(exc, AuthenticationError | AuthorizationError | InvalidResponse)
        or isinstance(exc, AuthenticationWrongNumberOfArgsError | ResponseError)
        or "ssl" in text
        or "tls" in text
    )


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    text = mask_urls(str(exc))
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        return f"authentication failed: check the user and password in the URL ({text})"
    if isinstance(exc, InvalidResponse):
        return f"a server answers there but it is not Redis (wrong port or protocol?): {text}"
    low = text.lower()
    if "certificate_verify_failed" in low:
        return (
            f"TLS failure: the server's certificate was not accepted ({text}): set "
            "STALWART_REDIS_TLS_CA (--redis-tls-ca) or ssl_ca_certs in the URL to the CA "
            "that signed it"
        )
    if "certificate required" in low or "certificate_required" in low:
        return (
            f"TLS failure: the server requires a client certificate (mutual TLS): set "
            f"STALWART_REDIS_TLS_CERT and STALWART_REDIS_TLS_KEY ({text})"
        )
    if any(w in low for w in ("bad_certificate", "unknown_ca", "unsupported_certificate")):
        return (
            "TLS failure: the server refused the client certificate (is it signed by a CA the "
            f"server trusts?) ({text})"
        )
    if "wrong_version_number" in low or "wrong version number" in low:
        return (
            f"TLS failure: the server does not speak TLS there (use redis:// for a plain "
            f"port) ({text})"
        )
    if "ssl" in low or "tls" in low:
        return f"TLS failure: {text}"
    if any(h in low for h in _HANG_UPS):
        return "the server closed the connection without answering"
    if "refused" in text.lower() or "error 111 " in text.lower():
        return f"connection refused (is redis-server running there?): {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def first_contact(
    url: str,
    within: float,
    scripts: tuple[str, ...] = (),
    *,
    target: RedisTarget | None = None,
) -> None:
    """PING Redis at ``url`` (and load ``scripts``) within ``within`` seconds, or raise.

    ``target`` carries the TLS context (default: what ``url`` says). Raises
    :class:`ServerUnavailableError` naming the URL (credentials masked) and the reason.
    A ``redis+sentinel://`` URL is first resolved to its primary through the Sentinels
    (within the same bound), then that primary is reached the same way.
    """
    parse_redis_url(url)
    if is_sentinel_url(url):
        started = time.monotonic()
        url = await _sentinel_primary_url(url, within)
        within = max(0.5, within - (time.monotonic() - started))
        target = redis_target(url)
    target = target or redis_target(url)
    deadline = time.monotonic() + within
    last: BaseException | None = None
    hang_ups = 0
    first = True
    while (remaining := deadline - time.monotonic()) > 0:
        # The first TLS attempt gets a short handshake bound: a plain port never answers a
        # TLS handshake, and telling that at once beats waiting out the whole timeout.
        # (Nothing in plain text is sent to a TLS server that answers: it would log an error.)
        short = first and target.ssl_context is not None
        connect_within = min(remaining, _HANDSHAKE_BOUND) if short else remaining
        first = False
        probe = aioredis.Redis.from_pool(
            aioredis.ConnectionPool(
                **target.pool_kwargs(),
                socket_connect_timeout=connect_within,
                socket_timeout=remaining,
                retry=Retry(NoBackoff(), 0),
            )
        )
        try:
            async with asyncio.timeout(remaining):
                await probe.ping()
                for script in scripts:
                    await probe.script_load(script)
            return
        except (RedisError, OSError, TimeoutError) as exc:
            last = exc
            if short and isinstance(exc, TimeoutError | RedisTimeoutError):
                await _refuse_plain_port(target, min(remaining, _HANDSHAKE_BOUND))
            # A server that hangs up on a PING twice in a row is not restarting: it is a
            # TLS port spoken to in plain text (Redis itself answers even when it refuses).
            hang_ups = hang_ups + 1 if _hung_up(exc) else 0
            if _permanent(exc) or hang_ups >= 2:
                break
        finally:
            await probe.aclose()
        await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
    reason = _reason(last)
    if last is not None and _hung_up(last):
        reason += _hang_up_hint(target)
    if last is None or isinstance(last, TimeoutError | RedisTimeoutError):
        reason = "no answer"
        if url.lower().startswith("rediss://"):
            reason += " (a TLS handshake that never completed: does the server speak TLS?)"
    if last is None or not (_permanent(last) or hang_ups >= 2):
        reason += f" (gave up after {within:g}s)"
    raise ServerUnavailableError(f"cannot reach Redis at {mask_urls(url)}: {reason}") from last


async def _sentinel_primary_url(url: str, within: float) -> str:
    """The plain URL of the primary the Sentinels of ``url`` name, asked within ``within``."""
    parsed = parse_sentinel_url(url)
    sentinel = parsed.sentinel(socket_timeout=min(within, 2.0), socket_connect_timeout=1.0)
    deadline = time.monotonic() + within
    last: BaseException | None = None
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    host, port = await resolve_primary(sentinel, parsed.service)
                return parsed.node_url(host, port)
            except (RedisError, OSError, TimeoutError) as exc:
                last = exc
            await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
    finally:
        for s in sentinel.sentinels:
            await s.aclose()
    raise ServerUnavailableError(
        f"cannot reach Redis at {parsed.shown}: no Sentinel named a primary for service "
        f"{parsed.service!r} within {within:g}s ({_reason(last)})"
    ) from last
