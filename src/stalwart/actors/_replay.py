"""Offline replay: run an agent's current code against a run's journal, calling nothing.

``stalwart replay RUN_ID APP`` is a determinism check before deploying new agent code: the
agent function runs from the top with a context whose every step is answered from the
journal, exactly as a resumed run would be answered. Where the code asks for a step the run
never executed, calls a journaled step with other arguments, leaves journaled steps out, or
ends differently, the code would break the run on resume: the report says where and why.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

import msgspec
import structlog

from stalwart.actors._context import RunContext
from stalwart.actors._execute import StepExecutor, _under_replayed, error_info
from stalwart.actors._waits import Waits
from stalwart.checkpoints import (
    ErrorInfo,
    Finished,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    WaitStarted,
    decode_value,
    encode_value,
)
from stalwart.errors import NonDeterminismError
from stalwart.policies import Breakers, RunUsage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stalwart.actors._actor import RunActor
    from stalwart.actors._app import AgentSpec, App
    from stalwart.actors._context import StepSpec
    from stalwart.checkpoints import CheckpointStore, JournalEntry, RunRecord

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

    def render(self) -> str:
        """A human-readable report."""
        head = f"run {self.run_id} (agent {self.agent}, {self.status}): "
        counts = f"{self.steps_replayed} of {self.steps_journaled} journaled step(s) replayed"
        if self.matched:
            extra = " (the journal ends there: the run has not finished)" if self.partial else ""
            return f"{head}MATCH: {counts}, ended {self.replayed}{extra}"
        where = f" at step {self.step}" if self.step else ""
        return "\n".join(
            [
                f"{head}DIVERGED{where}",
                f"  {self.divergence}",
                f"  original: {self.original}; replay: {self.replayed}; {counts}",
            ]
        )


class _Stop(Exception):
    """Raised into the agent where the original run stopped (its journal ends)."""


def _describe(info: ErrorInfo) -> str:
    return f"failed: {info.type}: {info.message}"


class ReplayActor(StepExecutor, Waits):
    """Answers a run's steps from its journal only; never calls a step body, never writes.

    Provides what :class:`~stalwart.actors.RunContext` uses (``run_id``, ``spec``, ``epoch``,
    ``worker_id``, ``replaying``, ``execute``, ``wait``, ``emit_live``) and reuses the live
    actor's replay rules (fingerprints, kinds, budgets, waits).
    """

    def __init__(self, spec: AgentSpec, record: RunRecord, entries: list[JournalEntry]) -> None:
        self.spec = spec
        self.run_id = record.run_id
        self.epoch = record.epoch
        self.worker_id = "replay"
        self.replaying = True
        self.cancel_reason = ""
        self.passivate_after = float("inf")
        self.policies = spec.policies
        self.breakers = Breakers()
        self.usage = RunUsage()
        self.first_live_step_at = None
        self.steps_replayed = 0
        self.steps_live = 0
        self.log = structlog.get_logger("stalwart.replay").bind(run_id=record.run_id)
        self._fatal = None
        self._wake = asyncio.Event()
        self._journal: dict[str, StepDone | StepError] = {}
        self._attempts: dict[str, list[StepAttempt]] = {}
        self._intents: dict[str, StepIntent] = {}
        self._waits: dict[str, WaitStarted] = {}
        self._consumed_signals: set[str] = set()
        self.finished: Finished | None = None
        for je in entries:
            e = je.entry
            if isinstance(e, StepDone | StepError):
                self._journal[e.key] = e
            elif isinstance(e, Finished):
                self.finished = e
        self._unreplayed = set(self._journal)
        self.divergence = ""
        self.diverged_at = ""
        self.stopped_at = ""

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

    def _diverge(self, key: str, message: str) -> NonDeterminismError:
        # Kept here as well as raised: agent code may swallow the exception.
        if not self.divergence:
            self.divergence, self.diverged_at = message, key
        return NonDeterminismError(message)

    def _unasked(self) -> list[str]:
        # As the live actor judges it: steps nested under a replayed step do not count.
        return sorted(
            k for k in self._unreplayed if not _under_replayed(k, self._journal, self._unreplayed)
        )

    def _missing(self, key: str, what: str) -> Exception:
        if not self._unasked() and self.stops_early:
            self.stopped_at = key
            return _Stop(key)
        return self._diverge(
            key,
            f"the code asks for {what} ({key}), which the original run never executed"
            + (
                f"; journaled step(s) not asked for yet: {', '.join(self._unasked()[:5])}"
                if self._unasked()
                else ""
            ),
        )

    async def execute(self, spec: StepSpec, run: Callable[[], Awaitable[Any]]) -> Any:
        """The journaled outcome of ``spec``; ``run`` is never called."""
        recorded = self._journal.get(spec.key)
        if recorded is None:
            self._guard(spec)  # a budget that stopped the original here stops the replay too
            raise self._missing(spec.key, f"{spec.kind} {spec.name!r}")
        self._unreplayed.discard(spec.key)
        if spec.kind != "model":
            self._guard(spec)
        try:
            return self._replay(spec, recorded)
        except NonDeterminismError as exc:
            raise self._diverge(spec.key, str(exc)) from None

    async def wait(self, key: str, signal: str, timeout: float | None) -> Any:
        """The journaled outcome of a durable wait."""
        kind = "signal" if signal else "sleep"
        recorded = self._journal.get(key)
        if recorded is None:
            raise self._missing(key, f"a {kind} wait {signal!r}" if signal else "a sleep")
        self._unreplayed.discard(key)
        try:
            return self._replayed_wait(key, kind, recorded)
        except NonDeterminismError as exc:
            raise self._diverge(key, str(exc)) from None

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
        self._unreplayed = {k for k in self._unreplayed if not k.startswith(prefix)}

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
            steps_journaled=len(self._journal),
            steps_replayed=self.steps_replayed,
            original=original,
            replayed=replayed,
            partial=self.stops_early,
        )
        verdict = self._verdict(ended, value, info)
        if verdict is None:
            out.matched = True
        else:
            out.divergence, out.step = verdict
        return out

    def _verdict(self, ended: str, value: Any, info: ErrorInfo | None) -> tuple[str, str] | None:
        """None when the replay matches, else (what differs, step key or "")."""
        if self.divergence:
            return self.divergence, self.diverged_at
        if ended == "timeout":
            return (
                "the agent did not finish on replay: code outside steps is waiting for "
                "something (I/O, a lock, a clock); put it in a step",
                "",
            )
        unasked = self._unasked()
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
    app: App, record: RunRecord, entries: list[JournalEntry], *, timeout: float = 60.0
) -> ReplayReport:
    """Run ``record``'s agent from ``app`` against the run's journal ``entries``, offline.

    No step body, model or tool is called and nothing is written. Raises
    :class:`~stalwart.errors.UnknownAgentError` if ``app`` has no agent of the run's name.
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
    # RunContext needs only what ReplayActor provides (see its docstring).
    ctx = RunContext(cast("RunActor", actor))
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            result = await spec.fn(ctx, value)
    except Exception as exc:
        if actor.stopped_at:  # _Stop, or whatever the agent turned it into
            return actor.report("stopped", None, None)
        if isinstance(exc, TimeoutError) and scope.expired():
            return actor.report("timeout", None, None)
        return actor.report("failed", None, error_info(exc, False))
    if actor.stopped_at:
        return actor.report("stopped", None, None)
    if actor._fatal is not None:  # a budget the agent swallowed still ends the run
        return actor.report("failed", None, error_info(actor._fatal, False))
    return actor.report("completed", result, None)
