"""Attempt-aware streams: a run's live chunks with resets applied (issue #17, docs/streaming.md).

Live events emitted inside a step body (``ctx.emit``) carry the step's key, its attempt and
the owner's epoch. When an attempt dies (a retry, a lost owner), the new attempt is preceded
by ``step.reset``; :func:`stream_parts` turns the run's events into :data:`StreamPart` values
a consumer renders without ever showing a dead attempt's text twice:

- a :class:`Reset` before the chunks of a new attempt whenever chunks of an earlier one were
  yielded (also when the ``step.reset`` event itself was lost: a chunk of a newer attempt
  says the same);
- chunks of an attempt older than one already seen for the step, or of an epoch older than
  the run's newest owner, are dropped (a frozen old owner is fenced from the journal, not
  from publishing events);
- steps completed before the consumer attached come from the journal as
  :class:`StepDone` (``streamed=False``) and their stored chunks are skipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from stalwart.checkpoints import Finished, decode_value
from stalwart.checkpoints import StepDone as _DoneEntry
from stalwart.checkpoints import StepError as _ErrorEntry
from stalwart.checkpoints._codec import open_text
from stalwart.errors import PayloadKeyError, RunNotFoundError
from stalwart.messages import (
    EV_RESUMED,
    EV_STARTED,
    EV_STEP_COMPLETED,
    EV_STEP_FAILED,
    EV_STEP_RESET,
    EVENT_DATA,
    RunEvent,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stalwart.checkpoints import JournalEntry, RunRecord
    from stalwart.client._handle import RunHandle

__all__ = [
    "Chunk",
    "Reset",
    "StepDone",
    "StreamEnd",
    "StreamPart",
    "StreamText",
    "stream_parts",
]

DELTA_TYPE = "model.delta"
"""The event type of a model's token delta; its data always has ``"text"``."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """A live event emitted inside attempt ``attempt`` of ``step`` (by ``worker`` in
    ``epoch``): a token delta (``type`` ``model.delta``, ``data["text"]``) or any other item
    agent code streamed. ``seq`` is its position in the run's event stream."""

    part: ClassVar[str] = "chunk"
    step: str
    epoch: int
    attempt: int
    worker: str
    type: str
    data: Any
    seq: int

    def to_dict(self) -> dict[str, Any]:
        """The part as plain JSON-able data, with ``"part": "chunk"``."""
        return {"part": self.part, **asdict(self)}


@dataclass(frozen=True, slots=True)
class Reset:
    """Every chunk of ``step`` yielded so far is void: drop what was shown of it.

    ``epoch``/``attempt`` is the attempt that starts over; ``reason`` is ``retry`` (the
    earlier attempt failed) or ``failover`` (its owner was lost).
    """

    part: ClassVar[str] = "reset"
    step: str
    epoch: int
    attempt: int
    reason: str
    seq: int

    def to_dict(self) -> dict[str, Any]:
        """The part as plain JSON-able data, with ``"part": "reset"``."""
        return {"part": self.part, **asdict(self)}


@dataclass(frozen=True, slots=True)
class StepDone:
    """Step ``step`` was journaled; ``result`` is its journaled value as plain data (None for
    a failed step, whose ``error`` says why). ``streamed``: chunks of its final attempt were
    yielded (False for a step completed before the consumer attached)."""

    part: ClassVar[str] = "step_done"
    step: str
    kind: str
    name: str
    streamed: bool
    result: Any
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The part as plain JSON-able data, with ``"part": "step_done"``."""
        return {"part": self.part, **asdict(self)}


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The run ended (the last part): ``status`` ``completed`` with its ``result``, or
    ``failed`` / ``cancelled`` with ``error`` (``"<type>: <message>"``)."""

    part: ClassVar[str] = "end"
    status: str
    result: Any = None
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The part as plain JSON-able data, with ``"part": "end"``."""
        return {"part": self.part, **asdict(self)}


StreamPart = Chunk | Reset | StepDone | StreamEnd
"""What :meth:`RunHandle.stream` yields."""


@dataclass
class StreamText:
    """The text a consumer shows, rebuilt from stream parts: ``view.apply(part)`` each one.

    ``steps`` maps each step that streamed ``model.delta`` chunks to its text (in the order
    the steps first streamed); a :class:`Reset` empties its step. ``text`` is the whole.
    """

    steps: dict[str, str] = field(default_factory=dict)
    ended: StreamEnd | None = None

    def apply(self, part: StreamPart) -> None:
        """Take one part into account."""
        if isinstance(part, Chunk):
            if part.type == DELTA_TYPE and isinstance(part.data, dict):
                text = part.data.get("text")
                if isinstance(text, str):
                    self.steps[part.step] = self.steps.get(part.step, "") + text
        elif isinstance(part, Reset):
            if part.step in self.steps:
                self.steps[part.step] = ""
        elif isinstance(part, StreamEnd):
            self.ended = part

    @property
    def text(self) -> str:
        """Every step's text, in step order."""
        return "".join(self.steps.values())


Gen = tuple[int, int]
"""An attempt's place: (epoch, attempt); a later one voids an earlier one of the same step."""


def _result(raw: Any) -> Any:
    try:
        return decode_value(raw)
    except PayloadKeyError as exc:
        return f"<encrypted: {exc}>"


def _done_part(entry: _DoneEntry | _ErrorEntry, streamed: bool) -> StepDone:
    if isinstance(entry, _DoneEntry):
        return StepDone(entry.key, entry.kind, entry.name, streamed, _result(entry.result))
    error = f"{entry.error.type}: {open_text(entry.error.message)}"
    return StepDone(entry.key, entry.kind, entry.name, streamed, None, error)


def _end(record: RunRecord) -> StreamEnd:
    if record.status == "completed":
        return StreamEnd(record.status, _result(record.result) if record.result else None)
    return StreamEnd(record.status, None, f"{record.error_type}: {open_text(record.error)}")


class _Parts:
    """The reset rules over one run's events (pure state; :func:`stream_parts` does I/O)."""

    def __init__(self) -> None:
        self.gen: dict[str, Gen] = {}
        """The newest attempt seen of each step."""
        self.shown: dict[str, Gen] = {}
        """The attempt whose chunks were yielded, per step (none since its last reset)."""
        self.done: dict[str, _DoneEntry | _ErrorEntry] = {}
        """Journaled steps read so far."""
        self.reported: set[str] = set()
        """Steps whose StepDone was yielded."""
        self.owner_epoch = 0
        """The newest owner's epoch: chunks of older epochs are void."""
        self.cursor = 0
        """The journal sequence read up to."""

    def take(self, entries: list[JournalEntry]) -> None:
        for je in entries:
            self.cursor = max(self.cursor, je.seq)
            e = je.entry
            if isinstance(e, _DoneEntry | _ErrorEntry):
                self.done[e.key] = e
            if getattr(e, "epoch", 0) > self.owner_epoch:
                self.owner_epoch = e.epoch

    def reset(self, ev: RunEvent) -> Reset | None:
        step, new = ev.step, (ev.epoch, ev.attempt)
        if step in self.reported or new < self.gen.get(step, (0, 0)):
            return None
        self.gen[step] = new
        shown = self.shown.pop(step, None)
        if shown is None or shown >= new:
            return None
        reason = ev.data.get("reason", "") if isinstance(ev.data, dict) else ""
        return Reset(step, ev.epoch, ev.attempt, str(reason), ev.seq)

    def chunk(self, ev: RunEvent) -> list[StreamPart]:
        step, new = ev.step, (ev.epoch, ev.attempt)
        if step in self.reported or ev.epoch < self.owner_epoch:
            return []
        if new < self.gen.get(step, (0, 0)):
            return []
        self.gen[step] = new
        out: list[StreamPart] = []
        shown = self.shown.get(step)
        if shown is not None and shown < new:  # the reset was lost: the chunk says it too
            reason = "failover" if shown[0] < new[0] else "retry"
            out.append(Reset(step, ev.epoch, ev.attempt, reason, ev.seq))
        self.shown[step] = new
        out.append(Chunk(step, ev.epoch, ev.attempt, ev.worker, ev.type, ev.data, ev.seq))
        return out

    def event(self, ev: RunEvent) -> list[StreamPart]:
        """The parts one event makes (a step's end needs its journal entry read first)."""
        if ev.attempt > 0 and ev.type not in EVENT_DATA:  # emitted inside a step attempt
            return self.chunk(ev)
        part: StreamPart | None = None
        if ev.type == EV_STEP_RESET:
            part = self.reset(ev)
        elif ev.type in _STEP_ENDS:
            part = self.step_done(ev.step)
        elif ev.type in (EV_STARTED, EV_RESUMED):
            self.owner_epoch = max(self.owner_epoch, ev.epoch)
        return [] if part is None else [part]

    def unreported(self) -> list[StepDone]:
        """StepDone for every journaled step not reported yet, in journal order."""
        out = []
        for key in list(self.done):
            done = self.step_done(key)
            if done is not None:
                out.append(done)
        return out

    def step_done(self, step: str) -> StepDone | None:
        entry = self.done.get(step)
        if entry is None or step in self.reported:
            return None
        self.reported.add(step)
        streamed = self.shown.pop(step, None) == (entry.epoch, entry.attempt)
        return _done_part(entry, streamed)


_STEP_ENDS = frozenset({EV_STEP_COMPLETED, EV_STEP_FAILED})


async def stream_parts(handle: RunHandle, *, follow: bool = True) -> AsyncIterator[StreamPart]:
    """The parts of ``handle``'s run (see :meth:`RunHandle.stream`)."""
    from stalwart.client._handle import opened_events

    store = handle.client.store
    run_id = handle.run_id
    record = await store.get_run(run_id)
    entries = await store.read_journal(run_id)
    if record is None and not entries:
        raise RunNotFoundError(run_id)
    parts = _Parts()
    parts.take(entries)
    for done in parts.unreported():  # completed before we attached: from the journal
        yield done
    if any(isinstance(je.entry, Finished) for je in entries):
        record = await store.get_run(run_id)
        if record is not None and record.terminal:
            yield _end(record)
            return
    events = opened_events(
        handle.client.broker.subscribe(run_id, follow=follow, ends=handle._has_ended)
    )
    try:
        async for ev in events:
            if ev.type in _STEP_ENDS and ev.step not in parts.reported:
                if ev.step not in parts.done or ev.jseq > parts.cursor:
                    parts.take(await store.read_journal(run_id, parts.cursor))
            for part in parts.event(ev):
                yield part
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
    record = await store.get_run(run_id)
    if record is None or not record.terminal:
        return
    # Steps whose events were lost (events are best effort; the journal is the truth).
    parts.take(await store.read_journal(run_id, parts.cursor))
    for done in parts.unreported():
        yield done
    yield _end(record)
