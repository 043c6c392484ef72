"""The step engine's rules as tables: (journal, policy, step or outcome) -> decision.

No servers: ``_rules`` is pure, and the executor runs here against an in-memory journal.
The SIGKILL tests (test_crash, test_failures, test_freeze) stay the end-to-end proof.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

from stalwart.actors._context import StepSpec, current_step
from stalwart.actors._execute import StepExecutor
from stalwart.actors._rules import (
    Attempt,
    Diverged,
    Drained,
    GiveUp,
    NotJournaled,
    OverBudget,
    Retry,
    RunState,
    Stop,
    Unknown,
    WaitLive,
    breaker_gate,
    decide_failure,
    decide_step,
    decide_wait,
    unasked_error,
)
from stalwart.actors._view import JournalView
from stalwart.actors._waits import Waits
from stalwart.checkpoints import (
    Entry,
    ErrorInfo,
    Finished,
    JournalEntry,
    Started,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    WaitStarted,
    decode_value,
    encode_value,
)
from stalwart.errors import (
    BudgetExceeded,
    CircuitOpenError,
    LeaseLost,
    NonDeterminismError,
    NonRetryableError,
    RunCancelled,
    ServerUnavailableError,
    StepFailed,
    StepTimeoutError,
    ToolOutcomeUnknown,
)
from stalwart.policies import (
    NO_RETRY,
    Breakers,
    CircuitBreaker,
    Limits,
    Policies,
    RetryPolicy,
    RunUsage,
    StepOptions,
)

# -- journal entries --------------------------------------------------------------------------


def done(
    key: str = "step:a", *, kind: str = "step", name: str = "a", fp: str = "f1", **kw: Any
) -> StepDone:
    return StepDone(
        key=key, kind=kind, name=name, fp=fp, result=encode_value(kw.pop("value", 1)),
        epoch=1, worker="w", at=10.0, duration=1.0, **kw,
    )  # fmt: skip


def failed(
    key: str = "step:a", *, kind: str = "step", name: str = "a", fp: str = "f1"
) -> StepError:
    return StepError(
        key=key, kind=kind, name=name, fp=fp, error=ErrorInfo("ValueError", "bad", False),
        epoch=1, worker="w", at=10.0, duration=1.0,
    )  # fmt: skip


def tried(n: int, key: str = "step:a", *, at: float = 100.0, delay: float = 5.0) -> StepAttempt:
    return StepAttempt(
        key=key, kind="step", name="a", fp="f1", attempt=n, error=ErrorInfo("E", "x"),
        delay=delay, epoch=1, worker="w", at=at, duration=2.0,
    )  # fmt: skip


def intent(n: int = 1, key: str = "step:a") -> StepIntent:
    return StepIntent(
        key=key, kind="step", name="a", fp="f1", attempt=n, epoch=1, worker="w", at=1.0
    )


def waiting(key: str = "signal:go", signal: str = "go") -> WaitStarted:
    return WaitStarted(key=key, until=0.0, signal=signal, epoch=1, worker="w", at=1.0)


def state_of(*entries: Entry, policies: Policies | None = None) -> RunState:
    view = JournalView.of(JournalEntry(seq=i + 1, entry=e) for i, e in enumerate(entries))
    return RunState("r1", 2, "w2", policies or Policies(), RunUsage(), view)


def spec(
    key: str = "step:a",
    *,
    kind: str = "step",
    name: str = "a",
    fp: str = "f1",
    options: StepOptions | None = None,
    reconcile: Any = None,
) -> StepSpec:
    return StepSpec(key=key, kind=kind, name=name, fp=fp, options=options, reconcile=reconcile)


async def _reconcile() -> Any:
    return "checked"


AMO = StepOptions(at_most_once=True)


# -- replay ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("journal", "step", "expect"),
    [
        ([done()], spec(), StepDone),
        ([failed()], spec(), StepError),
        ([done(fp="f1")], spec(fp="f2"), Diverged),  # same step, other arguments
        ([done(name="a")], spec(name="b", fp="f2"), Diverged),  # renamed (its fp hashes the name)
        ([done(name="a")], spec(name="b"), StepDone),  # only fp and kind are compared
        ([done(kind="step")], spec(kind="tool"), Diverged),  # other kind
        ([done("tool:1", kind="tool")], spec("tool:1", kind="tool"), StepDone),
    ],
)
def test_replay(journal: list[Entry], step: StepSpec, expect: type) -> None:
    st = state_of(*journal)
    d = decide_step(st, step)
    assert isinstance(d, expect)
    assert step.key not in st.view.unreplayed  # asked for: no longer "unreplayed"
    assert st.steps_replayed == (0 if expect is Diverged else 1)
    assert st.replaying  # replaying never flips on a journaled step


def test_divergence_says_what_changed() -> None:
    args = decide_step(state_of(done()), spec(fp="f2"))
    renamed = decide_step(state_of(done()), spec(name="b", fp="f2"))
    assert isinstance(args, Diverged) and isinstance(renamed, Diverged)
    assert "step 'a' is called with different arguments" in args.message
    assert "step 'a' was recorded, the code now asks for step 'b'" in renamed.message
    assert "fork the run" in args.message


def test_replayed_model_steps_count_toward_budgets_after_not_before() -> None:
    limits = Limits(max_iterations=1)
    st = state_of(
        done("model:1", kind="model", name="gpt-4o", model="gpt-4o", input_tokens=5),
        policies=Policies(limits=limits),
    )
    assert isinstance(decide_step(st, spec("model:1", kind="model", name="gpt-4o")), StepDone)
    assert (st.usage.model_calls, st.usage.input_tokens) == (1, 5)
    d = decide_step(st, spec("model:2", kind="model", name="gpt-4o"))
    assert isinstance(d, OverBudget) and d.error.budget == "max_iterations"  # type: ignore[attr-defined]


def test_replayed_tool_loop_is_caught_on_replay_too() -> None:
    st = state_of(
        *(done(f"tool:{i}", kind="tool", name="t") for i in range(3)),
        policies=Policies(limits=Limits(max_repeated_tool_calls=3)),
    )
    kinds = [type(decide_step(st, spec(f"tool:{i}", kind="tool", name="t"))) for i in range(3)]
    assert kinds == [StepDone, StepDone, OverBudget]
    assert isinstance(st.fatal, BudgetExceeded)  # remembered: swallowing it does not help


# -- the step boundary, budgets ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        ({"lost": True}, LeaseLost),
        ({"abandoned": True}, ServerUnavailableError),
        ({"cancel_reason": "user"}, RunCancelled),
        ({"fatal": BudgetExceeded("max_tokens", 1, 2)}, BudgetExceeded),
        ({"draining": True}, Drained),
        # Precedence: a lost lease wins over everything, a cancel over a drain.
        ({"lost": True, "cancel_reason": "x", "draining": True}, LeaseLost),
        ({"cancel_reason": "x", "draining": True}, RunCancelled),
    ],
)
def test_boundary_stops_live_steps_and_waits(flags: dict[str, Any], error: type) -> None:
    for decide in (lambda st: decide_step(st, spec()), lambda st: decide_wait(st, "sleep", "")):
        st = state_of()
        for name, value in flags.items():
            setattr(st, name, value)
        d = decide(st)
        assert isinstance(d, Stop) and isinstance(d.error, error)
        assert st.replaying


def test_boundary_does_not_stop_replayed_steps() -> None:
    st = state_of(done())
    st.draining = True
    assert isinstance(decide_step(st, spec()), StepDone)


@pytest.mark.parametrize(
    ("limits", "usage", "step", "budget"),
    [
        (Limits(max_iterations=2), {"model_calls": 2}, "model", "max_iterations"),
        (Limits(max_iterations=2), {"model_calls": 1}, "model", None),
        (Limits(max_tokens=100), {"input_tokens": 60, "output_tokens": 40}, "model", "max_tokens"),
        (Limits(max_tokens=100), {"input_tokens": 60, "output_tokens": 39}, "model", None),
        (Limits(max_cost_usd=1.0), {"cost_usd": 1.0}, "model", "max_cost_usd"),
        (Limits(max_iterations=0), {}, "tool", None),  # model budgets do not stop tools
        (Limits(max_repeated_tool_calls=2), {"last_tool": "t:f1", "repeats": 1}, "tool", "max_repeated_tool_calls"),
        (Limits(max_repeated_tool_calls=2), {"last_tool": "t:f0", "repeats": 1}, "tool", None),
        (Limits(max_repeated_tool_calls=None), {"last_tool": "t:f1", "repeats": 9}, "tool", None),
        (Limits(max_iterations=0), {}, "step", None),
    ],
)  # fmt: skip
def test_budgets_before_a_live_step(
    limits: Limits, usage: dict[str, Any], step: str, budget: str | None
) -> None:
    st = state_of(policies=Policies(limits=limits))
    for name, value in usage.items():
        setattr(st.usage, name, value)
    d = decide_step(st, spec(f"{step}:1", kind=step, name="t"))
    if budget is None:
        assert isinstance(d, Attempt)
        assert st.fatal is None
    else:
        assert isinstance(d, OverBudget) and d.error.budget == budget  # type: ignore[attr-defined]
        assert st.fatal is d.error


# -- at-most-once ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("journal", "options", "reconcile", "by_name", "expect"),
    [
        ([intent(1)], AMO, None, False, Unknown(intent(1), "fail")),
        ([intent(1)], AMO, _reconcile, False, Unknown(intent(1), "reconcile")),
        ([intent(1)], StepOptions(at_most_once=True, on_unknown="signal"), _reconcile, False, Unknown(intent(1), "signal")),
        ([intent(1)], None, None, True, Unknown(intent(1), "fail")),  # Policies.at_most_once
        # The attempt failed and said so: the intent is answered, the retry goes on.
        ([intent(1), tried(1)], AMO, None, False, 2),
        # ...but a later intent without its outcome is unknown again.
        ([intent(1), tried(1), intent(2)], AMO, None, False, Unknown(intent(2), "fail")),
        ([], AMO, None, False, 1),
        ([intent(1)], None, None, False, 1),  # not at-most-once: an intent means nothing
    ],
)  # fmt: skip
def test_at_most_once(
    journal: list[Entry], options: StepOptions | None, reconcile: Any, by_name: bool, expect: Any
) -> None:
    policies = Policies(at_most_once=frozenset({"a"}) if by_name else frozenset())
    d = decide_step(
        state_of(*journal, policies=policies), spec(options=options, reconcile=reconcile)
    )
    if isinstance(expect, int):
        assert isinstance(d, Attempt) and d.attempt == expect
    else:
        assert d == expect


# -- attempts: retry policy, resume inside a backoff, timeouts, breakers -------------------


CUSTOM = RetryPolicy(max_attempts=7)


@pytest.mark.parametrize(
    ("step", "policies", "attempt", "resume_at", "policy", "timeout", "breaker"),
    [
        (spec(), Policies(), 1, 0.0, Policies().retry["step"], None, ""),
        (spec("model:1", kind="model", name="gpt"), Policies(), 1, 0.0, Policies().retry["model"], None, "model:gpt"),
        (spec("tool:1", kind="tool", name="t"), Policies(), 1, 0.0, Policies().retry["tool"], None, "tool:t"),
        (spec(options=AMO), Policies(), 1, 0.0, NO_RETRY, None, ""),  # at-most-once: no retry
        (spec(options=StepOptions(at_most_once=True, retry=CUSTOM)), Policies(), 1, 0.0, CUSTOM, None, ""),
        (spec(), Policies(retry_by_name={"a": CUSTOM}), 1, 0.0, CUSTOM, None, ""),
        (spec(), Policies(step_timeout={"step": 3.0}), 1, 0.0, Policies().retry["step"], 3.0, ""),
        (spec(options=StepOptions(timeout=1.5)), Policies(step_timeout={"step": 3.0}), 1, 0.0, Policies().retry["step"], 1.5, ""),
    ],
)  # fmt: skip
def test_live_attempt(
    step: StepSpec,
    policies: Policies,
    attempt: int,
    resume_at: float,
    policy: RetryPolicy,
    timeout: float | None,
    breaker: str,
) -> None:
    st = state_of(policies=policies)
    assert decide_step(st, step) == Attempt(
        attempt,
        resume_at,
        policy,
        timeout,
        bool(step.options and step.options.at_most_once),
        breaker,
    )


def test_resume_continues_the_retry_sequence_and_its_backoff() -> None:
    st = state_of(tried(1, at=100.0, delay=1.0), tried(2, at=104.0, delay=5.0))
    d = decide_step(st, spec())
    # Attempt 3, not 1; and not before attempt 2's backoff ends (start + duration + delay).
    assert isinstance(d, Attempt) and (d.attempt, d.resume_at) == (3, 104.0 + 2.0 + 5.0)


class _Http(Exception):
    def __init__(self, status: int, retry_after: str | None = None) -> None:
        super().__init__(status)
        self.status_code = status
        self.headers = {"retry-after": retry_after} if retry_after else {}


class _Hostile(Exception):
    @property
    def status_code(self) -> int:
        raise RuntimeError("no")


P3 = RetryPolicy(max_attempts=3, initial_interval=1.0, backoff=2.0, jitter=0.0)


@pytest.mark.parametrize(
    ("exc", "attempt", "policy", "expect"),
    [
        (ValueError("x"), 1, P3, Retry(1, 1.0)),
        (ValueError("x"), 2, P3, Retry(2, 2.0)),  # exponential
        (ValueError("x"), 3, P3, GiveUp(3, True)),  # attempts used up
        (ValueError("x"), 1, NO_RETRY, GiveUp(1, True)),
        (NonRetryableError("x"), 1, P3, GiveUp(1, False)),
        (ToolOutcomeUnknown("x"), 1, P3, GiveUp(1, False)),
        (BudgetExceeded("max_tokens", 1, 2), 1, P3, GiveUp(1, False)),
        (StepTimeoutError("slow"), 1, P3, Retry(1, 1.0)),  # a timeout is retried
        (_Http(429, "7"), 1, P3, Retry(1, 7.0)),  # the server's retry-after wins
        (_Http(503), 1, P3, Retry(1, 1.0)),
        (_Http(400), 1, P3, GiveUp(1, False)),  # an answer, not an outage
        (_Http(404, "7"), 1, P3, GiveUp(1, False)),
        (CircuitOpenError("t", 4.0), 1, P3, Retry(1, 4.0)),
        (KeyError("x"), 1, RetryPolicy(non_retryable=(KeyError,)), GiveUp(1, False)),
        (KeyError("x"), 1, RetryPolicy(retry_on=(ValueError,)), GiveUp(1, False)),
        (_Hostile(), 1, P3, GiveUp(1, False)),  # attributes that raise: not retryable
        (ValueError("x"), 1, RetryPolicy(max_interval=0.5, jitter=0.0), Retry(1, 0.5)),
    ],
)
def test_failed_attempt(exc: BaseException, attempt: int, policy: RetryPolicy, expect: Any) -> None:
    assert decide_failure(exc, attempt, policy, rand=0.5) == expect


@pytest.mark.parametrize(
    ("failures", "state"),
    [
        ([ValueError()], "closed"),
        ([ValueError(), ValueError()], "open"),  # threshold 2
        ([_Http(400), _Http(400), _Http(400)], "closed"),  # answers do not trip it
        ([CircuitOpenError("t", 1.0)] * 3, "closed"),  # failing fast does not count
    ],
)
def test_breaker_counts_outages_only(failures: list[BaseException], state: str) -> None:
    breaker = CircuitBreaker(threshold=2, cooldown=30.0)
    for exc in failures:
        decide_failure(exc, 1, P3, breaker, rand=0.5, now=0.0)
    assert breaker.state(now=1.0) == state


def test_breaker_gate_fails_fast_then_lets_one_trial_through() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown=10.0)
    assert breaker_gate(breaker, "t", now=0.0) is None
    decide_failure(ValueError(), 1, P3, breaker, rand=0.5, now=0.0)
    shut = breaker_gate(breaker, "t", now=4.0)
    assert isinstance(shut, CircuitOpenError) and shut.retry_after == pytest.approx(6.0)
    assert breaker_gate(breaker, "t", now=11.0) is None  # half-open: one trial
    assert isinstance(breaker_gate(breaker, "t", now=11.0), CircuitOpenError)  # only one


# -- waits --------------------------------------------------------------------------------


SIGNAL_DONE = StepDone(
    key="signal:go", kind="signal", name="go", fp="go", result=encode_value({"sid": "1-0", "payload": 5}),
    epoch=1, worker="w", at=1.0, duration=1.0,
)  # fmt: skip


@pytest.mark.parametrize(
    ("journal", "key", "signal", "live", "expect"),
    [
        ([SIGNAL_DONE], "signal:go", "go", True, SIGNAL_DONE),
        ([SIGNAL_DONE], "signal:go", "", True, Diverged),  # was a signal, now a sleep
        ([], "signal:go", "go", True, WaitLive(None)),
        ([waiting()], "signal:go", "go", True, WaitLive(waiting())),  # continue, same deadline
        ([], "signal:go", "go", False, NotJournaled("signal:go", "a signal wait 'go'")),
        ([], "sleep", "", False, NotJournaled("sleep", "a sleep")),
    ],
)  # fmt: skip
def test_wait(journal: list[Entry], key: str, signal: str, live: bool, expect: Any) -> None:
    d = decide_wait(state_of(*journal), key, signal, live=live)
    assert isinstance(d, expect) if isinstance(expect, type) else d == expect


# -- the end of a run, offline replay ---------------------------------------------------------


@pytest.mark.parametrize(
    ("journal", "asked", "marked", "diverged"),
    [
        ([done("step:a")], ["step:a"], "", False),
        ([done("step:a"), done("step:b")], ["step:a"], "", True),  # b was removed
        ([done("tool:x"), done("tool:x/model:1")], ["tool:x"], "", False),  # nested: skipped
        ([done("tool:x/model:1")], [], "tool:x/", False),  # an adapter's own checkpoint
        ([done("tool:x"), done("tool:x/model:1")], [], "", True),
    ],
)
def test_unasked_steps_mean_the_code_changed(
    journal: list[Entry], asked: list[str], marked: str, diverged: bool
) -> None:
    st = state_of(*journal)
    for key in asked:
        decide_step(st, spec(key))
    if marked:
        st.view.mark_replayed(marked)
    d = unasked_error(st)
    assert (d is not None) == diverged
    if d is not None:
        assert "were not asked for on replay" in d.message


@pytest.mark.parametrize(
    ("journal", "step", "expect"),
    [
        ([], spec(), NotJournaled("step:a", "step 'a'")),
        ([done()], spec(), StepDone),
        ([intent(1)], spec(options=AMO), NotJournaled("step:a", "step 'a'")),  # never "unknown"
    ],
)
def test_offline_replay_never_runs_a_step(
    journal: list[Entry], step: StepSpec, expect: Any
) -> None:
    st = state_of(*journal)
    st.draining = True  # nothing from outside stops an offline replay
    d = decide_step(st, step, live=False)
    assert isinstance(d, expect) if isinstance(expect, type) else d == expect


def test_view_of_a_journal() -> None:
    fin = Finished(status="completed", epoch=1, worker="w", at=3.0)
    journal: list[Entry] = [
        Started(epoch=1, worker="w", at=0.0), intent(1), tried(1), done(), waiting(), fin
    ]  # fmt: skip
    view = JournalView.of(JournalEntry(seq=i + 1, entry=e) for i, e in enumerate(journal))
    assert set(view.done) == {"step:a"} and view.unreplayed == {"step:a"}
    assert [a.attempt for a in view.attempts["step:a"]] == [1]
    assert view.intents["step:a"].attempt == 1 and "signal:go" in view.waits
    assert view.finished == fin


# -- the executor, carried out against an in-memory journal ---------------------------------


@dataclass
class _Memory:
    """Journal, event sink and owner in memory: what the executor's protocols ask for."""

    entries: list[Entry] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    confirmed: int = 0
    resets: list[tuple[str, int, str]] = field(default_factory=list)
    appended: asyncio.Event = field(default_factory=asyncio.Event)

    async def append(self, entry: Entry) -> JournalEntry:
        self.entries.append(entry)
        self.appended.set()
        return JournalEntry(seq=len(self.entries), entry=entry)

    async def finish(self, entry: Finished) -> JournalEntry:
        return await self.append(entry)

    async def read(self) -> list[JournalEntry]:
        return [JournalEntry(seq=i + 1, entry=e) for i, e in enumerate(self.entries)]

    def emit(self, type: str, *, step: str = "", data: Any = None, attempt: int = 0) -> None:
        self.events.append(type)
        if type == "step.reset":
            self.resets.append((step, attempt, data["reason"]))

    def journaled(self, je: JournalEntry) -> None:
        self.events.append(type(je.entry).__name__)

    def holds(self) -> bool:
        return False  # never known without asking: every step awaits confirm()

    async def confirm(self) -> None:
        self.confirmed += 1

    async def ensure(self) -> None:
        self.confirmed += 1


def _executor(st: RunState, mem: _Memory, wake: asyncio.Event | None = None) -> StepExecutor:
    wake = wake or asyncio.Event()
    waits = Waits(st, mem, mem, mem, wake)
    log = structlog.get_logger("test")
    return StepExecutor(st, mem, mem, mem, Breakers(), waits, wake, log)


FAST = Policies(retry={"step": RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)})


async def test_executor_retries_then_journals_the_result() -> None:
    st, mem = state_of(policies=FAST), _Memory()
    calls: list[int] = []

    async def body() -> int:
        info = current_step()
        assert info is not None and info.idempotency_key == "r1:step:a"
        calls.append(info.attempt)
        if len(calls) < 3:
            raise ValueError("flaky")
        return 42

    assert await _executor(st, mem).execute(spec(), body) == 42
    assert calls == [1, 2, 3]
    assert [type(e).__name__ for e in mem.entries] == ["StepAttempt", "StepAttempt", "StepDone"]
    assert mem.confirmed == 3  # the lease is confirmed before every attempt's body
    assert not st.replaying and st.steps_live == 1


async def test_a_retry_is_announced_by_a_reset_before_its_start() -> None:
    st, mem = state_of(policies=FAST), _Memory()
    tries: list[int] = []

    async def body() -> int:
        tries.append(1)
        if len(tries) < 3:
            raise ValueError("flaky")
        return 1

    await _executor(st, mem).execute(spec(), body)
    starts = [e for e in mem.events if e in ("step.reset", "step.started")]
    assert starts == ["step.started", "step.reset", "step.started", "step.reset", "step.started"]
    assert mem.resets == [("step:a", 2, "retry"), ("step:a", 3, "retry")]


async def test_a_resumed_run_resets_the_steps_until_its_first_live_step_completes() -> None:
    st, mem = state_of(policies=FAST), _Memory()
    st.resumed = True  # an earlier epoch may have been streaming the step this one redoes

    async def body() -> int:
        return 1

    ex = _executor(st, mem)
    await ex.execute(spec("step:a"), body)
    await ex.execute(spec("step:b", name="b"), body)
    assert mem.resets == [("step:a", 1, "failover")]
    fresh, mem2 = state_of(policies=FAST), _Memory()
    await _executor(fresh, mem2).execute(spec(), body)
    assert mem2.resets == []  # a first placement streams nothing twice


async def test_executor_after_a_crash_continues_at_the_next_attempt() -> None:
    st, mem = (
        state_of(tried(1, at=0.0, delay=0.0), tried(2, at=0.0, delay=0.0), policies=FAST),
        _Memory(),
    )

    async def body() -> int:
        raise ValueError("still broken")

    with pytest.raises(StepFailed, match="still broken"):
        await _executor(st, mem).execute(spec(), body)
    (entry,) = mem.entries  # attempt 3 was the last: no third StepAttempt
    assert isinstance(entry, StepError) and entry.attempt == 3 and entry.error.retryable


async def test_executor_never_repeats_an_unknown_at_most_once_call() -> None:
    st, mem = state_of(intent(1)), _Memory()

    async def body() -> int:
        raise AssertionError("must not run again")

    with pytest.raises(StepFailed) as caught:
        await _executor(st, mem).execute(spec(options=AMO), body)
    assert caught.value.error_type == "ToolOutcomeUnknown" and "r1:step:a" in caught.value.message
    (entry,) = mem.entries
    assert isinstance(entry, StepError) and not entry.error.retryable


async def test_executor_asks_the_reconcile_hook() -> None:
    st, mem = state_of(intent(1)), _Memory()

    async def body() -> int:
        raise AssertionError("must not run again")

    assert (
        await _executor(st, mem).execute(spec(options=AMO, reconcile=_reconcile), body) == "checked"
    )
    (entry,) = mem.entries
    assert isinstance(entry, StepDone) and decode_value(entry.result) == "checked"


async def test_executor_journals_an_intent_before_an_at_most_once_body() -> None:
    st, mem = state_of(), _Memory()

    async def body() -> str:
        assert [type(e).__name__ for e in mem.entries] == ["StepIntent"]
        return "ok"

    assert await _executor(st, mem).execute(spec(options=AMO), body) == "ok"
    assert [type(e).__name__ for e in mem.entries] == ["StepIntent", "StepDone"]


async def test_executor_times_an_attempt_out() -> None:
    policies = Policies(retry={"step": NO_RETRY}, step_timeout={"step": 0.01})
    st, mem = state_of(policies=policies), _Memory()

    async def body() -> None:
        await asyncio.Event().wait()

    with pytest.raises(StepFailed, match="start-to-close timeout"):
        await _executor(st, mem).execute(spec(), body)
    assert mem.entries[-1].error.type == "StepTimeoutError"  # type: ignore[union-attr]


async def test_executor_replays_without_calling_the_body() -> None:
    st, mem = state_of(done(value={"x": 1})), _Memory()

    async def body() -> None:
        raise AssertionError("replayed steps do not run")

    assert await _executor(st, mem).execute(spec(), body) == {"x": 1}
    with pytest.raises(NonDeterminismError):
        await _executor(st, mem).execute(spec("step:a", fp="other"), body)
    assert mem.entries == [] and st.divergence is not None


async def test_executor_backoff_wakes_early_for_a_drain() -> None:
    slow = Policies(retry={"step": RetryPolicy(max_attempts=3, initial_interval=60.0)})
    st, mem = state_of(policies=slow), _Memory()
    wake = asyncio.Event()
    engine = _executor(st, mem, wake)

    async def body() -> None:
        raise ValueError("down")

    task = asyncio.create_task(engine.execute(spec(), body))
    await mem.appended.wait()  # the first attempt failed and its backoff began
    st.draining = True
    wake.set()  # what RunActor.drain does
    with pytest.raises(Drained):
        await asyncio.wait_for(task, 5)
    assert [type(e).__name__ for e in mem.entries] == ["StepAttempt"]


async def test_executor_refuses_a_step_over_budget_and_remembers_it() -> None:
    st, mem = state_of(policies=Policies(limits=Limits(max_iterations=0))), _Memory()

    async def body() -> None:
        raise AssertionError("over budget: never called")

    with pytest.raises(BudgetExceeded):
        await _executor(st, mem).execute(spec("model:1", kind="model", name="m"), body)
    # Swallowed by agent code, it still stops the next step of any kind.
    with pytest.raises(BudgetExceeded):
        await _executor(st, mem).execute(spec("step:b", name="b"), body)
    assert mem.entries == [] and st.replaying
