"""What every measurement gets: the mode, and the peers' servers when peers run."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.peers._protocol import PeerProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bench.peers.servers import PostgresServer, TemporalDevServer


@dataclass
class Ctx:
    """Mode and peers of one benchmark run."""

    quick: bool
    pg: PostgresServer | None = None
    temporal: TemporalDevServer | None = None
    peer_errors: dict[str, str] = field(default_factory=dict)
    """Why a peer is missing (not installed, failed to start): shown in the report."""

    def pick(self, quick: Any, full: Any) -> Any:
        """The quick-mode or the full-mode value of a parameter."""
        return quick if self.quick else full

    @contextlib.asynccontextmanager
    async def dbos(self) -> AsyncIterator[PeerProcess | None]:
        """A launched DBOS peer process, or None when DBOS is not available."""
        if self.pg is None:
            yield None
            return
        peer = await PeerProcess("bench.peers.dbos_peer").start()
        try:
            await peer.call("init", url=self.pg.url, timeout=120)
            yield peer
        finally:
            await peer.close()

    @contextlib.asynccontextmanager
    async def temporal_peer(self) -> AsyncIterator[PeerProcess | None]:
        """A Temporal client+worker peer process, or None when Temporal is not available."""
        if self.temporal is None:
            yield None
            return
        peer = await PeerProcess("bench.peers.temporal_peer").start()
        try:
            await peer.call("init", address=self.temporal.address, timeout=120)
            yield peer
        finally:
            await peer.close()
