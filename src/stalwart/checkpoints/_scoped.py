"""``RunStore``: the part of the checkpoint store a run's own code may use.

Agent code and adapters get this through ``RunContext.store``, never the whole
:class:`CheckpointStore` (which can claim, cancel, fail or fork any run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalwart.checkpoints._fence import Fence
from stalwart.checkpoints._keys import RunKeys
from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from stalwart.checkpoints._entries import JournalEntry
    from stalwart.checkpoints._store import CheckpointStore


class RunStore:
    """One run's view of the store, as its owner at ``epoch`` sees it.

    It reads the run's journal, and lets an adapter keep data of its own by the run: keys
    from :attr:`keys` (``keys.own(...)``, in the run's hash slot) written by scripts built
    with :func:`~stalwart.checkpoints.fenced` and called through :attr:`fence`, so a write
    of a worker that lost the run is refused exactly like its journal appends.
    """

    __slots__ = ("_store", "epoch", "run_id")

    def __init__(self, store: CheckpointStore, run_id: str, epoch: int) -> None:
        self._store = store
        self.run_id = run_id
        self.epoch = epoch

    def __repr__(self) -> str:
        return f"RunStore(run_id={self.run_id!r}, epoch={self.epoch})"

    @property
    def keys(self) -> RunKeys:
        """The run's keys; ``keys.own(suffix)`` for data of one's own."""
        return RunKeys(self._store.ns, self.run_id)

    @property
    def fence(self) -> Fence:
        """The run's epoch fence for this owner (see :class:`Fence`)."""
        return Fence(self.keys, self.epoch)

    @property
    def ns(self) -> str:
        """The key namespace."""
        return self._store.ns

    @property
    def redis(self) -> aioredis.Redis:
        """The Redis client, for scripts over the run's own keys under :attr:`fence`."""
        return self._store.redis

    @property
    def retry_for(self) -> float:
        """How long the store's writes ride out a Redis outage; adapters' writes should too."""
        return self._store.retry_for

    async def read_journal(self, run_id: str | None = None, after: int = 0) -> list[JournalEntry]:
        """This run's journal entries with ``seq > after``, in order.

        ``run_id`` may name this run (for callers written against the store); another run's
        journal is not this run's to read.
        """
        if run_id is not None and run_id != self.run_id:
            raise ConfigurationError(
                f"run {self.run_id!r} may read its own journal only, not run {run_id!r}'s"
            )
        return await self._store.read_journal(self.run_id, after)
