"""Offline replay: run an agent's current code against a run's journal, calling nothing.

``stalwart replay RUN_ID APP`` is a determinism check before deploying new agent code: the
agent function runs from the top with a context whose every step is answered from the
journal, exactly as a resumed run would be answered. Where the code asks for a step the run
never executed, calls a journaled step with other arguments, leaves journaled steps out, or
ends differently, the code would break the run on resume: the report says where and why.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from stalwart.actors._context import RunContext
from stalwart.actors._conversation import Conversation, ConversationBusy, TurnBinding
from stalwart.actors._execute import StepExecutor, error_info
from stalwart.actors._patches import PATCH_KIND
from stalwart.actors._rules import Diverged, RunState, divergence_error
from stalwart.actors._view import JournalView
from stalwart.actors._waits import Waits
from stalwart.checkpoints import ErrorInfo, StepDone, StepError, decode_value, encode_value
from stalwart.checkpoints._codec import open_text
from stalwart.policies import Breakers, RunUsage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stalwart.actors._app import AgentSpec, App
    from stalwart.actors._context import StepSpec
    from stalwart.checkpoints import CheckpointStore, Entry, Finished, JournalEntry, RunRecord

# Failures the runtime imposes at a step boundary, from outside the agent's code: a replay
# that reaches the point where the original stopped for one of these has matched.
_STOPPED_FROM_OUTSIDE = frozenset({"RunDeadlineExceeded", "RunCancelled", "DeadLettered"})


class ReplayReport(msgspec.Struct, kw_only=True):
    """The outcome of :func:`replay_run`."""

    run_id: str
    agent: str
    status: str
    """How the original run stands (``completed``, ``failed``, ``running``...)."""
    matched: bool
    """True when the code asks for the journaled steps, with the same arguments, and ends the
    same way (for an unfinished run: as far as the journal goes)."""
    steps_journaled: int
    steps_replayed: int
    step: str = ""
    """The step key where the code diverged, when it is one step."""
    divergence: str = ""
    original: str = ""
    """How the original run ended (``completed``, ``failed: ValueError: ...``)."""
    replayed: str = ""
    """How the code ended on replay."""
    partial: bool = False
    """The original run has not finished (or was stopped from outside): checked up to where
    its journal ends."""
    patches: list[str] = msgspec.field(default_factory=list)
    """The change ids whose patch marker the run journaled (it took their new code path)."""
    journal_steps: list[str] = msgspec.field(default_factory=list)
    """On divergence: the step keys the journal holds, in journal order."""
    code_steps: list[str] = msgspec.field(default_factory=list)
    """On divergence: the step keys the code asked for on replay, in order."""

    def render(self) -> str:
        """A human-readable report."""
        head = f"run {self.run_id} (agent {self.agent}, {self.status}): "
        counts = f"{self.steps_replayed} of {self.steps_journaled} journaled step(s) replayed"
        if self.patches:
            counts += f"; patched: {', '.join(self.patches)}"
        if self.matched:
            extra = " (the journal ends there: the run has not finished)" if self.partial else ""
            return f"{head}MATCH: {counts}, ended {self.replayed}{extra}"
        where = f" at step {self.step}" if self.step else ""
        lines = [
            f"{head}DIVERGED{where}",
            f"  {self.divergence}",
            f"  original: {self.original}; replay: {self.replayed}; {counts}",
        ]
        if self.journal_steps or self.code_steps:
            lines += _step_diff(self.journal_steps, self.code_steps)
        return "\n".join(lines)


_DIFF_STEPS = 12
"""Step keys shown on each side of a divergence, from the first difference."""


def _step_diff(journal: list[str], code: list[str]) -> list[str]:
    """The two step sequences side by side from where they first differ."""
    first = next(
        (i for i, (a, b) in enumerate(zip(journal, code, strict=False)) if a != b),
        min(len(journal), len(code)),
    )
    start = max(first - 2, 0)

    def show(keys: list[str]) -> str:
        part = keys[start : first + _DIFF_STEPS]
        more = len(keys) - (first + _DIFF_STEPS)
        text = " ".join(("> " if start + i == first else "") + k for i, k in enumerate(part))
        return (
            ("... " if start else "")
            + (text or "(nothing)")
            + (f" ... (+{more})" if more > 0 else "")
        )

    return [
        f"  steps from #{first + 1} (> marks the first difference):",
        f"    journal: {show(journal)}",
        f"    code:    {show(code)}",
    ]


class _Stop(Exception):
    """Raised into the agent where the original run stopped (its journal ends)."""


def _describe(info: ErrorInfo) -> str:
    return f"failed: {info.type}: {open_text(info.message)}"


class _ReadOnly:
    """The journal, event sink and owner of an offline replay: reads, never writes.

    The executor never gets as far as writing: every step the journal lacks is
    ``NotJournaled``, which the replay turns into a stop or a divergence.
    """

    def __init__(self, entries: list[JournalEntry]) -> None:
        self._entries = entries

    async def append(self, entry: Entry) -> JournalEntry:
        """Refused: a replay writes nothing."""
        raise NotImplementedError("_ReadOnly journal: an offline replay writes nothing")

    async def finish(self, entry: Finished) -> JournalEntry:
        """Refused: a replay writes nothing."""
        raise NotImplementedError("_ReadOnly journal: an offline replay writes nothing")

    async def read(self) -> list[JournalEntry]:
        """The journal as it was read."""
        return self._entries

    def emit(self, type: str, *, step: str = "", data: Any = None, attempt: int = 0) -> None:
        """Events are not replayed."""

    def journaled(self, je: JournalEntry) -> None:
        """Events are not replayed."""

    def holds(self) -> bool:
        """Nothing to own: a replay holds no lease, and needs none."""
        return True

    async def confirm(self) -> None:
        """Nothing to own: a replay holds no lease."""

    async def ensure(self) -> None:
        """Nothing stops a replay from outside."""


class ReplayActor:
    """Answers a run's steps from its journal only; never calls a step body, never writes.

    The live actor's step engine (``StepExecutor`` and ``Waits`` over the same rules) on a
    read-only journal; it is the :class:`~stalwart.actors._ports.RunHost` of the context.
    """

    def __init__(self, spec: AgentSpec, record: RunRecord, entries: list[JournalEntry]) -> None:
        self.spec = spec
        self.run_id = record.run_id
        self.epoch = record.epoch
        self.worker_id = "replay"
        view = JournalView.of(entries)
        self.finished = view.finished
        self.state = RunState(
            record.run_id, record.epoch, "replay", spec.policies, RunUsage(), view
        )
        io = _ReadOnly(entries)
        wake = asyncio.Event()
        self.waits = Waits(self.state, io, io, io, wake, unjournaled=self._missing)
        self.engine = StepExecutor(
            self.state,
            io,
            io,
            io,
            Breakers(),
            self.waits,
            wake,
            structlog.get_logger("stalwart.replay").bind(run_id=record.run_id),
            unjournaled=self._missing,
        )
        self.stopped_at = ""
        self.turn: TurnBinding | None = None
        """The run's turn of its conversation, replayed (None: none, or no store given)."""
        self.asked: list[str] = []
        """Step keys the code asked for, in order (for the divergence's step diff)."""
        self._order = [je.entry.key for je in entries if isinstance(je.entry, StepDone | StepError)]

    @property
    def agent(self) -> str:
        """The agent's registered name."""
        return self.spec.name

    @property
    def conversation(self) -> Conversation | None:
        """``ctx.conversation``: the run's conversation once its claim is replayed."""
        return self.turn.view if self.turn is not None else None

    @property
    def replaying(self) -> bool:
        """Always: a replay runs no step live."""
        return self.state.replaying

    @property
    def stops_early(self) -> bool:
        """Whether the original run ended without the agent ending (or has not ended)."""
        fin = self.finished
        if fin is None or fin.status == "cancelled":
            return True
        return (
            fin.status == "failed"
            and fin.error is not None
            and (fin.error.type in _STOPPED_FROM_OUTSIDE)
        )

    def _missing(self, key: str, what: str) -> Exception:
        unasked = self.state.view.unasked()
        if not unasked and self.stops_early:
            self.stopped_at = key
            return _Stop(key)
        return divergence_error(
            self.state,
            Diverged(
                key,
                f"the code asks for {what} ({key}), which the original run never executed"
                + (
                    f"; journaled step(s) not asked for yet: {', '.join(unasked[:5])}"
                    if unasked
                    else ""
                ),
            ),
        )

    async def execute(self, spec: StepSpec, run: Callable[[], Awaitable[Any]]) -> Any:
        """The journaled outcome of ``spec``; ``run`` is never called."""
        self.asked.append(spec.key)
        return await self.engine.execute(spec, run)

    async def wait(self, key: str, signal: str, timeout: float | None) -> Any:
        """The journaled outcome of a durable wait."""
        self.asked.append(key)
        return await self.waits.wait(key, signal, timeout)

    def signal_id(self, key: str) -> str | None:
        """The id of the signal that the finished wait ``key`` took (None: none)."""
        return self.waits.signal_ids.get(key)

    async def emit_live(self, type: str, data: Any, step: str = "") -> None:
        """Live events are not replayed."""

    @property
    def store(self) -> CheckpointStore:
        """Not available: a replay reads the journal only and writes nothing."""
        raise NotImplementedError(
            "ReplayActor has no store: offline replay cannot check agents whose adapter keeps "
            "its own data in the run's store"
        )

    def check_boundary(self) -> None:
        """Nothing stops a replay from outside."""

    def mark_replayed(self, prefix: str) -> None:
        """Journaled steps under ``prefix`` count as replayed (as in the live actor)."""
        self.state.view.mark_replayed(prefix)

    # -- the verdict ---------------------------------------------------------------------------

    def report(self, ended: str, value: Any, info: ErrorInfo | None) -> ReplayReport:
        """Compare how the code ended (``completed``/``failed``/``stopped``/``timeout``)."""
        fin = self.finished
        original: str = "running" if fin is None else fin.status
        if fin is not None and fin.status == "failed" and fin.error is not None:
            original = _describe(fin.error)
        replayed = {"completed": "completed", "stopped": f"stopped at {self.stopped_at}"}.get(
            ended, ended
        )
        if info is not None:
            replayed = _describe(info)
        out = ReplayReport(
            run_id=self.run_id,
            agent=self.spec.name,
            status=original.split(":", 1)[0],
            matched=False,
            steps_journaled=len(self.state.view.done),
            steps_replayed=self.state.steps_replayed,
            original=original,
            replayed=replayed,
            partial=self.stops_early,
            patches=sorted(e.name for e in self.state.view.done.values() if e.kind == PATCH_KIND),
        )
        verdict = self._verdict(ended, value, info)
        if verdict is None:
            out.matched = True
        else:
            out.divergence, out.step = verdict
            out.journal_steps, out.code_steps = self._order, self.asked
        return out

    def _verdict(self, ended: str, value: Any, info: ErrorInfo | None) -> tuple[str, str] | None:
        """None when the replay matches, else (what differs, step key or "")."""
        if self.state.divergence is not None:
            key, message = self.state.divergence
            return message, key
        if ended == "timeout":
            return (
                "the agent did not finish on replay: code outside steps is waiting for "
                "something (I/O, a lock, a clock); put it in a step",
                "",
            )
        unasked = self.state.view.unasked()
        if unasked:
            missing = ", ".join(unasked[:5])
            return (
                f"journaled step(s) {missing} were not asked for: a step was renamed or removed",
                "",
            )
        fin = self.finished
        if ended == "stopped" or self.stops_early or fin is None:
            return None  # reached the end of the journal; the original stopped there too
        if fin.status == "completed":
            if info is not None:
                return f"the original run completed; the code now {_describe(info)}", ""
            try:
                same = decode_value(encode_value(value)) == decode_value(fin.result)
            except TypeError as exc:
                return f"the code returns a value that cannot be stored ({exc})", ""
            if not same:
                return "the code returns a different result than the original run", ""
            return None
        assert fin.error is not None
        if info is None:
            return f"the original run {_describe(fin.error)}; the code now completes", ""
        if info.type != fin.error.type:
            return f"the original run {_describe(fin.error)}; the code now {_describe(info)}", ""
        return None


async def replay_run(
    app: App,
    record: RunRecord,
    entries: list[JournalEntry],
    *,
    timeout: float = 60.0,
    store: CheckpointStore | None = None,
) -> ReplayReport:
    """Run ``record``'s agent from ``app`` against the run's journal ``entries``, offline.

    No step body, model or tool is called and nothing is written. Raises
    :class:`~stalwart.errors.UnknownAgentError` if ``app`` has no agent of the run's name.
    With ``store``, a turn of a conversation reads the items its journal says it read
    (``ctx.conversation``, read-only); without one, ``ctx.conversation`` is None.
    """
    spec = app.get(record.agent)
    actor = ReplayActor(spec, record, entries)
    try:
        value = msgspec.convert(
            record.decode_input() if record.input is not None else None,
            spec.input_type,
            strict=False,
        )
    except msgspec.ValidationError as exc:
        return actor.report("failed", None, ErrorInfo("InvalidInput", str(exc), False))
    ctx = RunContext(actor)
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            if record.conversation and store is not None:
                actor.turn = TurnBinding(
                    actor, record.conversation, "queue", record.created_at, store=store, broker=None
                )
                await actor.turn.claim(1.0)  # answered from the journal, waits included
            result = await spec.fn(ctx, value)
    except ConversationBusy as busy:
        return actor.report("failed", None, busy.info)
    except Exception as exc:
        if actor.stopped_at:  # _Stop, or whatever the agent turned it into
            return actor.report("stopped", None, None)
        if isinstance(exc, TimeoutError) and scope.expired():
            return actor.report("timeout", None, None)
        return actor.report("failed", None, error_info(exc, False))
    if actor.stopped_at:
        return actor.report("stopped", None, None)
    if actor.state.fatal is not None:  # a budget the agent swallowed still ends the run
        return actor.report("failed", None, error_info(actor.state.fatal, False))
    return actor.report("completed", result, None)
