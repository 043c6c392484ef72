"""A run actor's view of its signal inbox: every signal is read once, in order.

The inbox is a Redis stream. A wake-up poke only says "look again", so the actor must not
re-read the whole inbox per poke (hundreds of pokes against a large inbox would cost the
worker seconds of CPU). It keeps a cursor and reads only the entries after it, in batches,
and remembers just the ids of the signals not yet consumed, by name; the payload of the
signal a wait takes is read when it is taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stalwart.checkpoints import decode_value

if TYPE_CHECKING:
    from stalwart.checkpoints import CheckpointStore

BATCH = 100
"""Inbox entries read per round trip."""


class Inbox:
    """Signals of one run, read incrementally; ``entries_read`` counts the work done."""

    def __init__(self, store: CheckpointStore, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self._cursor = ""
        self._unconsumed: dict[str, list[str]] = {}
        self.entries_read = 0

    async def take(self, name: str, consumed: set[str]) -> tuple[str, Any] | None:
        """The oldest signal ``name`` not in ``consumed``: (signal id, payload), or None."""
        await self._catch_up(consumed)
        sids = self._unconsumed.get(name, [])
        while sids:
            sid = sids[0]
            payload = None if sid in consumed else await self._store.read_signal(self._run_id, sid)
            if payload is None:  # consumed, or deleted since we saw it
                sids.pop(0)
                continue
            self.entries_read += 1
            return sid, decode_value(payload) if payload else None
        return None

    async def consumed(self, name: str, sid: str) -> None:
        """Forget ``sid`` and drop it from the inbox: its consumption is journaled now."""
        sids = self._unconsumed.get(name, [])
        if sid in sids:
            sids.remove(sid)
        await self._store.delete_signals(self._run_id, [sid])

    async def _catch_up(self, consumed: set[str]) -> None:
        stale: list[str] = []
        while True:
            rows = await self._store.read_signals(self._run_id, after=self._cursor, count=BATCH)
            self.entries_read += len(rows)
            for sid, name, _ in rows:
                self._cursor = sid
                if sid in consumed:
                    stale.append(sid)  # journaled by an earlier owner that died before deleting
                else:
                    self._unconsumed.setdefault(name, []).append(sid)
            if len(rows) < BATCH:
                break
        if stale:
            await self._store.delete_signals(self._run_id, stale)
