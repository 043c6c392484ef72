"""The small interfaces between the step engine and what it runs against.

``StepExecutor`` and ``Waits`` carry the decisions of ``_rules`` out against a
:class:`Journal`, an :class:`EventSink` and an :class:`Owner`; ``RunContext`` talks to a
:class:`RunHost`. The live actor and offline replay each provide their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stalwart.actors._context import StepSpec
    from stalwart.actors._rules import RunState
    from stalwart.checkpoints import CheckpointStore, Entry, Finished, JournalEntry


class Journal(Protocol):
    """A run's journal: fenced appends at the next position, the final entry, a full read."""

    async def append(self, entry: Entry) -> JournalEntry:
        """Append ``entry``; raise ``LeaseLost`` if a newer epoch owns the run."""
        ...

    async def finish(self, entry: Finished) -> JournalEntry:
        """Append the run's last entry and end the run's record with it."""
        ...

    async def read(self) -> list[JournalEntry]:
        """Every entry, in order."""
        ...


class EventSink(Protocol):
    """Where a run's events go (best effort: the journal is the truth)."""

    def emit(self, type: str, *, step: str = "", data: Any = None, attempt: int = 0) -> None:
        """Queue a non-journaled event of the run (``attempt``: see ``RunEvent.attempt``).

        A plain call, like :meth:`journaled`: events never wait (they are batched and sent
        a moment later), and the step path calls these several times per step."""
        ...

    def journaled(self, je: JournalEntry) -> None:
        """Queue the event that tells of journal entry ``je``."""
        ...


class Owner(Protocol):
    """The run's claim to go on: user code starts only while it holds."""

    def holds(self) -> bool:
        """Whether the lease is known to be ours without asking (a recent renewal): then
        :meth:`confirm` would return at once, and the step path skips awaiting it."""
        ...

    async def confirm(self) -> None:
        """Return once the lease is known to be ours; raise ``LeaseLost`` if it is not."""
        ...

    async def ensure(self) -> None:
        """The step-boundary check, then :meth:`confirm`."""
        ...


class RunHost(Protocol):
    """What a :class:`~stalwart.actors.RunContext` needs from the run it serves."""

    state: RunState
    """The step rules' view of the run (``ctx.patched`` reads its journal view)."""

    @property
    def run_id(self) -> str: ...

    @property
    def agent(self) -> str: ...

    @property
    def epoch(self) -> int: ...

    @property
    def worker_id(self) -> str: ...

    @property
    def replaying(self) -> bool: ...

    @property
    def store(self) -> CheckpointStore: ...

    def check_boundary(self) -> None:
        """Raise if the run must stop now."""
        ...

    def mark_replayed(self, prefix: str) -> None:
        """Journaled steps under ``prefix`` count as replayed."""
        ...

    def execute(self, spec: StepSpec, run: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
        """The outcome of step ``spec``: replayed, or ``run`` live and journaled."""
        ...

    def wait(self, key: str, signal: str, timeout: float | None) -> Awaitable[Any]:
        """A durable wait for ``signal`` (or a sleep, with ``signal == ""``)."""
        ...

    def signal_id(self, key: str) -> str | None:
        """The id of the signal that the finished wait ``key`` took (None: none)."""
        ...

    async def emit_live(self, type: str, data: Any, step: str = "") -> None:
        """Publish a non-journaled event."""
        ...
