"""The worker's view of its lease bucket's generation (see ``checkpoints._generations``).

Read once, on the first claim, and again only after a claim was refused as stale: that is
how a worker notices its NATS was replaced (a fresh bucket: a new identity, a new and higher
generation) or that its bucket went back in time under the same identity (restored from a
backup: it renumbers the identity as the newest generation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalwart.broker._generation import lease_bucket_state
from stalwart.checkpoints._generations import generation_of, renumber
from stalwart.checkpoints._runs import LeasePosition

if TYPE_CHECKING:
    import structlog

    from stalwart.broker import Broker
    from stalwart.broker._generation import BucketState
    from stalwart.checkpoints import CheckpointStore, Claim


class LeaseGenerations:
    """The generation a worker's claims carry, refreshed when a claim shows it may be old."""

    def __init__(
        self, broker: Broker, store: CheckpointStore, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        self._broker = broker
        self._store = store
        self._log = log
        self.generation = 0
        """The generation last read (0: not read yet)."""

    async def current(self) -> int:
        """The generation to claim with (asks both servers the first time)."""
        if self.generation == 0:
            await self.refresh()
        return self.generation

    async def refresh(self) -> BucketState:
        """Read the bucket's identity from NATS and its generation from Redis again."""
        state = await lease_bucket_state(self._broker.js, self._broker.names)
        generation = await generation_of(self._store.redis, self._store.ns, state.identity)
        if generation != self.generation:
            self._log.info(
                "lease.generation",
                identity=state.identity,
                generation=generation,
                previous=self.generation,
            )
        self.generation = generation
        return state

    async def after_stale(self, used: int, claim: Claim) -> int | None:
        """A claim carrying generation ``used`` was refused as stale: the generation to claim
        again with, or None when the refusal stands.

        It stands for a late claim (the record holds a later lease of this same bucket: its
        revision is one this bucket has reached). It does not when the bucket is another one
        now (its generation moved), or when the record holds a revision of this generation
        that this bucket never reached: the bucket went back in time (a restore), so its
        identity is renumbered as the newest generation and claims go on.
        """
        state = await self.refresh()
        if self.generation != used:
            return self.generation
        pos = LeasePosition.of_epoch(claim.epoch)
        if pos.generation != used or pos.revision <= state.last_seq:
            return None
        generation = await renumber(self._store.redis, self._store.ns, state.identity, used)
        self._log.warning(
            "lease.bucket_rewound",
            identity=state.identity,
            recorded_revision=pos.revision,
            bucket_last_revision=state.last_seq,
            generation=generation,
        )
        self.generation = generation
        return generation if generation != used else None
