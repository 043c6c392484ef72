"""The step engine's pure core: what to do next for a step, a failed attempt, a wait.

Every rule a step obeys (replay, divergence, budgets, the step boundary, at-most-once,
retry classification and backoff, circuit breakers) is decided here, synchronously, over
plain data: a :class:`RunState` (the run's flags and counters and its
:class:`~stalwart.actors._view.JournalView`) and the agent's ``Policies``. The answers are
tagged values; ``StepExecutor`` carries them out (journal writes, events, sleeps, the body).

A decision may advance the run's accounting (budget counters, a breaker's state, the set of
steps not yet replayed) exactly as the step that follows it would; it never does I/O, never
sleeps and never reads a clock unless given one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import msgspec

from stalwart.actors._view import JournalView
from stalwart.checkpoints import StepDone, StepError, StepIntent
from stalwart.errors import (
    CircuitOpenError,
    LeaseLost,
    NonDeterminismError,
    RunCancelled,
    ServerUnavailableError,
    StalwartError,
)
from stalwart.policies import RetryPolicy, classify

if TYPE_CHECKING:
    from stalwart.actors._context import StepSpec
    from stalwart.checkpoints import WaitStarted
    from stalwart.policies import CircuitBreaker, Policies, RunUsage

_BREAKER_KINDS = frozenset({"model", "tool"})


class Drained(Exception):
    """Raised at a step boundary when the worker is shutting down and gives the run up."""


class RunState:
    """What the step rules know about one run: flags, counters, usage and its journal view."""

    __slots__ = (
        "abandoned",
        "cancel_reason",
        "consumed_signals",
        "divergence",
        "draining",
        "epoch",
        "fatal",
        "first_live_step_at",
        "lost",
        "policies",
        "replaying",
        "resumed",
        "run_id",
        "steps_live",
        "steps_replayed",
        "usage",
        "view",
        "worker_id",
    )

    def __init__(
        self,
        run_id: str,
        epoch: int,
        worker_id: str,
        policies: Policies,
        usage: RunUsage,
        view: JournalView | None = None,
    ) -> None:
        self.run_id = run_id
        self.epoch = epoch
        self.worker_id = worker_id
        self.policies = policies
        self.usage = usage
        self.view = view if view is not None else JournalView()
        self.replaying = True
        self.resumed = False
        """The run had an earlier epoch (its journal held more than this claim's start)."""
        self.first_live_step_at: float | None = None
        self.steps_replayed = 0
        self.steps_live = 0
        self.lost = False
        self.abandoned = False
        """The journal is unreachable: the run is given up, never failed for it."""
        self.cancel_reason = ""
        self.draining = False
        self.fatal: StalwartError | None = None
        """A budget the agent may have swallowed: the run ends with it regardless."""
        self.divergence: tuple[str, str] | None = None
        """The first non-determinism found: (step key, message)."""
        self.consumed_signals: set[str] = set()


class OnRun:
    """A part of a run (its step executor, its waits) that works on the run's :class:`RunState`.

    It names the run the way the telemetry hooks read it (``run_id``, ``epoch``, ``worker_id``,
    ``policies``), so each part can be handed to them as it is.
    """

    __slots__ = ()
    state: RunState

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.state.run_id

    @property
    def epoch(self) -> int:
        """The owner's epoch."""
        return self.state.epoch

    @property
    def worker_id(self) -> str:
        """The worker running this part of the run."""
        return self.state.worker_id

    @property
    def policies(self) -> Policies:
        """The agent's failure handling."""
        return self.state.policies


# -- decisions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stop:
    """The run must stop before this step (lease lost, cancelled, draining, a budget...)."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class OverBudget:
    """A budget or the tool-loop guard forbids the step; the run ends with ``error``."""

    error: StalwartError


@dataclass(frozen=True, slots=True)
class Diverged:
    """The code asks for something else than the journal holds at ``key``."""

    key: str
    message: str


@dataclass(frozen=True, slots=True)
class NotJournaled:
    """Offline replay only: the code asks for a step the run never executed."""

    key: str
    what: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """An at-most-once step started (``intent``) and never reported back: not run again.

    ``how``: wait for the ``outcome:<key>`` signal, ask the reconcile hook, or fail.
    """

    intent: StepIntent
    how: Literal["signal", "reconcile", "fail"]


class Attempt(msgspec.Struct, frozen=True, gc=False):
    """Run the step live, starting with attempt ``attempt``.

    A msgspec Struct, not a frozen dataclass like the other decisions: one is built for
    every live step, and a frozen dataclass costs ~1.6 us to build against ~0.2 us.

    ``resume_at`` (a wall-clock time, 0 for none) is when the backoff of an earlier owner's
    failed attempt ends: the attempt waits until then.
    """

    attempt: int
    resume_at: float
    policy: RetryPolicy
    timeout: float | None
    at_most_once: bool
    breaker: str
    """The circuit breaker's name (``kind:name``), or "" for kinds without one."""


@dataclass(frozen=True, slots=True)
class Retry:
    """A failed attempt is retried after ``delay`` seconds (journaled as a ``StepAttempt``)."""

    attempt: int
    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """A failed attempt is the step's outcome (journaled as a ``StepError``)."""

    attempt: int
    retryable: bool


@dataclass(frozen=True, slots=True)
class WaitLive:
    """Wait live; ``started`` is the wait an earlier owner began (None: begin it now)."""

    started: WaitStarted | None


StepDecision = (
    StepDone | StepError | Stop | OverBudget | Diverged | NotJournaled | Unknown | Attempt
)
"""A recorded ``StepDone``/``StepError`` means: replay it."""
FailureDecision = Retry | GiveUp
WaitDecision = StepDone | StepError | Stop | Diverged | NotJournaled | WaitLive


# -- rules ------------------------------------------------------------------------------------


def boundary_error(state: RunState) -> BaseException | None:
    """Why the run must not take another step now, if it must not.

    Flags, not just exceptions: agent code that swallows an exception with a broad
    ``except Exception`` must still not get to run more steps.
    """
    if state.lost:
        return LeaseLost(f"run {state.run_id!r}: epoch {state.epoch} lost its lease")
    if state.abandoned:
        return ServerUnavailableError(f"run {state.run_id!r}: the journal is unreachable")
    if state.cancel_reason:
        return RunCancelled(state.run_id, state.cancel_reason)
    if state.fatal is not None:
        return state.fatal
    if state.draining:
        return Drained(state.run_id)
    return None


def guard(state: RunState, spec: StepSpec) -> OverBudget | None:
    """Budgets and loop detection, checked (and counted) before a step goes on."""
    limits = state.policies.limits
    try:
        if spec.kind == "model":
            state.usage.before_model(limits)
        elif spec.kind == "tool":
            state.usage.add_tool(limits, spec.name, spec.fp)
    except StalwartError as exc:
        # Remembered, so agent code that swallows it cannot carry on regardless.
        state.fatal = exc
        return OverBudget(exc)
    return None


def account(state: RunState, entry: StepDone) -> None:
    """Count a model step's usage (replayed or live) toward the run's budgets."""
    if entry.kind == "model":
        state.usage.add_model(
            state.policies.limits, entry.model, entry.input_tokens, entry.output_tokens
        )


def _changed(run_id: str, spec: StepSpec, entry: StepDone | StepError) -> str:
    what = (
        f"{entry.kind} {entry.name!r} was recorded, the code now asks for {spec.kind} {spec.name!r}"
        if (entry.name, entry.kind) != (spec.name, spec.kind)
        else f"{spec.kind} {spec.name!r} is called with different arguments"
    )
    return (
        f"run {run_id!r}, step {spec.key!r}: {what}. The agent code changed since this run "
        "started; deploy the change for new runs only, or fork the run from an earlier step."
    )


def decide_step(state: RunState, spec: StepSpec, *, live: bool = True) -> StepDecision:
    """What to do for step ``spec``: replay it, stop, run it live, or report a problem.

    ``live=False`` is offline replay: a step the journal lacks is :class:`NotJournaled`.
    """
    view = state.view
    recorded = view.done.get(spec.key)
    if recorded is not None:
        view.unreplayed.discard(spec.key)
        # Model budgets count a model step's usage after it, so only tools check on replay.
        if spec.kind != "model" and (over := guard(state, spec)) is not None:
            return over
        if recorded.fp != spec.fp or recorded.kind != spec.kind:
            return Diverged(spec.key, _changed(state.run_id, spec, recorded))
        state.steps_replayed += 1
        if isinstance(recorded, StepDone):
            account(state, recorded)
        return recorded
    if not live:
        # A budget that stopped the original here stops the replay too.
        return guard(state, spec) or NotJournaled(spec.key, f"{spec.kind} {spec.name!r}")
    stop = boundary_error(state)
    if stop is not None:
        return Stop(stop)
    if (over := guard(state, spec)) is not None:
        return over
    opts = spec.options
    policies = state.policies
    at_most_once = bool(opts and opts.at_most_once) or spec.name in policies.at_most_once
    tried = view.attempts.get(spec.key)
    if at_most_once:
        intent = view.intents.get(spec.key)
        # Started and never reported back (a failed attempt would be journaled).
        if intent is not None and not (tried and tried[-1].attempt >= intent.attempt):
            if opts is not None and opts.on_unknown == "signal":
                return Unknown(intent, "signal")
            return Unknown(intent, "reconcile" if spec.reconcile is not None else "fail")
    resume_at = 0.0
    if tried:  # resumed inside a backoff: wait out what is left of it
        last = tried[-1]
        resume_at = last.at + last.duration + last.delay
    return Attempt(
        attempt=len(tried) + 1 if tried else 1,
        resume_at=resume_at,
        policy=policies.retry_for(spec.kind, spec.name, opts, at_most_once=at_most_once),
        timeout=policies.timeout_for(spec.kind, opts),
        at_most_once=at_most_once,
        breaker=f"{spec.kind}:{spec.name}" if spec.kind in _BREAKER_KINDS else "",
    )


def breaker_gate(
    breaker: CircuitBreaker, name: str, now: float | None = None
) -> CircuitOpenError | None:
    """The error an attempt fails with when ``breaker`` is open (None: go ahead)."""
    retry_in = breaker.before_call(now)
    return None if retry_in is None else CircuitOpenError(name, retry_in)


def decide_failure(
    exc: BaseException,
    attempt: int,
    policy: RetryPolicy,
    breaker: CircuitBreaker | None = None,
    *,
    rand: float | None = None,
    now: float | None = None,
) -> FailureDecision:
    """Whether failed ``attempt`` is retried, and after how long; counts it in ``breaker``."""
    try:
        retryable, retry_after = classify(exc, policy)
    except Exception:  # an exception whose attributes raise: not retryable
        retryable, retry_after = False, None
    if breaker is not None and not isinstance(exc, CircuitOpenError):
        # Only failures that say "the other side is unwell" count; a declined card or a
        # 4xx is an answer, not an outage.
        if retryable:
            breaker.record(False, now)
        else:
            breaker.abandon()
    if retryable and attempt < policy.max_attempts:
        return Retry(attempt, policy.delay(attempt, retry_after, rand))
    return GiveUp(attempt, retryable)


def decide_wait(state: RunState, key: str, signal: str, *, live: bool = True) -> WaitDecision:
    """What to do for a durable wait: replay its outcome, stop, or wait live."""
    kind = "signal" if signal else "sleep"
    recorded = state.view.done.get(key)
    if recorded is not None:
        state.view.unreplayed.discard(key)
        if recorded.kind != kind:
            return Diverged(
                key,
                f"run {state.run_id!r}, step {key!r}: {recorded.kind} {recorded.name!r} was "
                f"recorded, the code now asks for a {kind}",
            )
        return recorded
    if not live:
        return NotJournaled(key, f"a {kind} wait {signal!r}" if signal else "a sleep")
    stop = boundary_error(state)
    if stop is not None:
        return Stop(stop)
    return WaitLive(state.view.waits.get(key))


def divergence_error(state: RunState, d: Diverged) -> NonDeterminismError:
    """The error to raise for ``d``; the first divergence is also kept in ``state``.

    Kept as well as raised: agent code may swallow the exception (offline replay reports it).
    """
    if state.divergence is None:
        state.divergence = (d.key, d.message)
    return NonDeterminismError(d.message)


def unasked_error(state: RunState) -> Diverged | None:
    """At the end of a run: journaled steps the code never asked for again mean it changed."""
    unasked = state.view.unasked()
    if not unasked:
        return None
    missing = ", ".join(unasked[:5])
    return Diverged(
        "",
        f"run {state.run_id!r}: journaled step(s) {missing} were not asked for on replay; "
        "the agent code changed since this run started (a step was renamed or removed)",
    )
