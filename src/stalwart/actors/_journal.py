"""A live run's journal: fenced appends at the next position, safe against cancellation."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, Any, TypeVar

from stalwart.actors import _telemetry as obs
from stalwart.checkpoints import JournalEntry
from stalwart.checkpoints._store import SettlingFuture
from stalwart.checkpoints._writer import JournalGap
from stalwart.errors import LeaseLost, ServerUnavailableError

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from stalwart.actors._rules import RunState
    from stalwart.checkpoints import CheckpointStore, Entry, Finished

T = TypeVar("T")


async def _uncancellable(write: Coroutine[Any, Any, T] | asyncio.Future[T]) -> T:
    """Finish a journal write even if the caller is cancelled meanwhile, then re-raise.

    Frameworks cancel their own tasks (a tripped guardrail, a failed sibling tool). A write
    abandoned mid-flight may still land in Redis; if the position counter did not move with
    it, the next write would collide with it. So the write always completes (or fails) and
    its outcome is accounted for before the cancellation goes on. A write that is already a
    future (``CheckpointStore.append_future``) needs no task of its own.
    """
    settling = type(write) is SettlingFuture  # refuses cancellation itself: no shield needed
    fut: asyncio.Future[T] = write if settling else asyncio.ensure_future(write)  # type: ignore[assignment]
    try:
        return await fut if settling else await asyncio.shield(fut)
    except asyncio.CancelledError:
        if not fut.done():
            await asyncio.wait({fut})
        if not fut.cancelled() and fut.exception() is None:
            # Landed: the caller bumps the position before the cancellation propagates.
            raise _WrittenThenCancelled(fut.result()) from None
        raise


class _WrittenThenCancelled(asyncio.CancelledError):
    """Cancellation that arrived during a journal write which nonetheless succeeded."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


class RunJournal:
    """The :class:`~stalwart.actors._ports.Journal` of a run this worker owns, by epoch.

    Sets the run's flags from what the store answers: ``lost`` when a newer epoch fenced a
    write, ``abandoned`` when Redis is unreachable, ``cancel_reason`` when a cancel is stored.
    """

    def __init__(self, store: CheckpointStore, state: RunState, next_seq: int) -> None:
        self._store = store
        self._state = state
        self.next_seq = next_seq
        """Where the next entry goes (the claim wrote the one before)."""
        # One append at a time (parallel steps of a run append in turn, FIFO). Not an
        # asyncio.Lock: the uncontended case, nearly every append, costs a flag here.
        self._busy = False
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    async def _take_turn(self) -> None:
        if not self._busy:
            self._busy = True
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn  # settled by _pass_turn, which hands the turn over (busy stays set)
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._pass_turn()  # handed over just as this waiter was cancelled
            else:
                self._waiting.remove(turn)
            raise

    def _pass_turn(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._busy = False

    async def append(self, entry: Entry) -> JournalEntry:
        """Fenced append at the next position; raises LeaseLost if a newer epoch owns the run."""
        state = self._state
        if state.lost:
            raise LeaseLost(f"run {state.run_id!r}: epoch {state.epoch} lost its lease")
        if self._busy:
            await self._take_turn()
        else:
            self._busy = True
        try:
            seq = self.next_seq
            t0 = time.perf_counter()
            write = self._store.append_future(state.run_id, state.epoch, seq, entry)
            try:
                # A SettlingFuture refuses cancellation itself: awaited directly, without
                # _uncancellable's coroutine (this is once per step).
                cancel = await (write if type(write) is SettlingFuture else _uncancellable(write))
            except _WrittenThenCancelled:
                self.next_seq = seq + 1
                raise
            except asyncio.CancelledError:
                if write.done() and not write.cancelled() and write.exception() is None:
                    # Landed: the position moves before the cancellation goes on.
                    self.next_seq = seq + 1
                    raise _WrittenThenCancelled(write.result()) from None
                raise
            except LeaseLost:
                state.lost = True
                raise
            except ServerUnavailableError:
                state.abandoned = True
                raise
            except JournalGap as exc:
                # No further step may run above the hole, even if agent code swallows this.
                state.fatal = exc
                raise
            self.next_seq = seq + 1
            obs.journal_appended(time.perf_counter() - t0)
        finally:
            self._pass_turn()
        if cancel and not state.cancel_reason:
            state.cancel_reason = cancel
        return JournalEntry(seq=seq, entry=entry)

    async def finish(self, entry: Finished) -> JournalEntry:
        """Journal the run's end and end its record (fenced like :meth:`append`)."""
        state = self._state
        await self._take_turn()
        try:
            seq = self.next_seq
            try:
                await _uncancellable(self._store.finish(state.run_id, state.epoch, seq, entry))
            except _WrittenThenCancelled:
                self.next_seq = seq + 1
                raise
            self.next_seq = seq + 1
        finally:
            self._pass_turn()
        return JournalEntry(seq=seq, entry=entry)

    async def read(self) -> list[JournalEntry]:
        """The whole journal; the next append goes after its last entry."""
        entries = await self._store.read_journal(self._state.run_id)
        if entries:
            self.next_seq = entries[-1].seq + 1
        return entries
