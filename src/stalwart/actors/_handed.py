"""A handed-on run's request, placed on the worker that released the slot (no NATS trip).

When a run ends and its concurrency slot goes to a waiting run, the releasing worker has a
free slot itself: it places the waiting run at once from the request parked in Redis,
instead of publishing it to the end of the agent's queue (behind a burst still arriving,
where the reserved slot would stay idle). :class:`HandedRequest` stands in for the NATS
message the placement path expects. Anything that would hand a NATS message back (a server
error, a busy lease) publishes the request to NATS instead, and a placement cut short by the
worker's death is covered by the reservation's expiry (the request is published again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


@dataclass(frozen=True, slots=True)
class _Metadata:
    num_delivered: int = 1


class HandedRequest:
    """The parts of a ``nats.aio.msg.Msg`` the placement path uses, for a local request."""

    def __init__(
        self, subject: str, data: bytes, msg_id: str, to_nats: Callable[[], Awaitable[None]]
    ) -> None:
        self.subject = subject
        self.data = data
        self.headers = {"Nats-Msg-Id": msg_id}
        self.reply = ""
        self.metadata = _Metadata()
        self._to_nats = to_nats
        self.outcome = ""
        """``ack``, ``nak`` (published to NATS instead) or ``term`` (refused), once known."""

    async def ack(self) -> None:
        """Placed, parked or skipped: nothing to give back."""
        self.outcome = self.outcome or "ack"

    async def nak(self, delay: float | None = None) -> None:
        """Not placed here after all: publish the request for any worker (at once)."""
        if not self.outcome:
            self.outcome = "nak"
            await self._to_nats()

    async def term(self) -> None:
        """Refused: it would be refused by any worker."""
        self.outcome = self.outcome or "term"
