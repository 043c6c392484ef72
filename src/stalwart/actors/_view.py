"""What a run's journal says, in the shape the step rules ask about it. Pure: no I/O.

Built from the journal entries of ``stalwart.checkpoints`` when a run is placed (or replayed
offline), then kept up to date by every entry the run journals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalwart.actors._patches import is_tolerated
from stalwart.checkpoints import (
    Finished,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    WaitStarted,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from stalwart.checkpoints import Entry, JournalEntry


def _tolerated(entry: StepDone | StepError | None) -> bool:
    # A deprecated patch's marker: code that no longer calls ``deprecate_patch`` skips it.
    return entry is not None and is_tolerated(entry.kind, entry.name)


class JournalView:
    """A run's journal by step key: what is done, attempted, intended, waiting, unreplayed."""

    __slots__ = ("attempts", "done", "finished", "intents", "unreplayed", "waits")

    def __init__(self) -> None:
        self.done: dict[str, StepDone | StepError] = {}
        """Steps (and waits) with a journaled outcome."""
        self.attempts: dict[str, list[StepAttempt]] = {}
        """Failed attempts that were to be retried, in order."""
        self.intents: dict[str, StepIntent] = {}
        """The last attempt an at-most-once step started."""
        self.waits: dict[str, WaitStarted] = {}
        """Durable waits that began (with their absolute deadline)."""
        self.unreplayed: set[str] = set()
        """Journaled outcomes the code has not asked for again (yet)."""
        self.finished: Finished | None = None

    @classmethod
    def of(cls, entries: Iterable[JournalEntry]) -> JournalView:
        """The view of a journal as read; every journaled outcome is still to be replayed."""
        view = cls()
        for je in entries:
            view.add(je.entry)
        view.unreplayed = set(view.done)
        return view

    def add(self, e: Entry) -> None:
        """Take one journaled entry into account."""
        if isinstance(e, StepDone | StepError):
            self.done[e.key] = e
        elif isinstance(e, StepAttempt):
            self.attempts.setdefault(e.key, []).append(e)
        elif isinstance(e, StepIntent):
            self.intents[e.key] = e
        elif isinstance(e, WaitStarted):
            self.waits[e.key] = e
        elif isinstance(e, Finished):
            self.finished = e

    def mark_replayed(self, prefix: str) -> None:
        """Journaled steps under ``prefix`` count as replayed (skipped on purpose)."""
        self.unreplayed = {k for k in self.unreplayed if not k.startswith(prefix)}

    def unasked(self) -> list[str]:
        """Journaled steps the code did not ask for again, sorted.

        Steps nested under a replayed step (``tool:x/...``, a delegated agent's steps) are
        left out: they were not asked for because that step's body did not run again.
        """
        return sorted(
            k
            for k in self.unreplayed
            if not self._under_replayed(k) and not _tolerated(self.done.get(k))
        )

    def _under_replayed(self, key: str) -> bool:
        parts = key.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in self.done and parent not in self.unreplayed:
                return True
        return False
