"""Carrying out the step rules: the one async part of the step engine.

``_rules`` decides what a step does next; :class:`StepExecutor` does it against a
:class:`~stalwart.actors._ports.Journal`, an :class:`~stalwart.actors._ports.EventSink` and
an :class:`~stalwart.actors._ports.Owner`: the body, its timeout, journal writes, events and
backoff sleeps. Offline replay runs the same executor over a read-only journal.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from stalwart._journal_events import step_started_data
from stalwart._text import ERROR_TEXT_LIMIT, clip, exception_text, safe_text, type_name
from stalwart.actors import _telemetry as obs
from stalwart.actors._context import StepInfo, _current
from stalwart.actors._flow import FlowPassivated
from stalwart.actors._rules import (
    Attempt,
    Diverged,
    Drained,
    GiveUp,
    OnRun,
    OverBudget,
    Stop,
    Unknown,
    account,
    boundary_error,
    breaker_gate,
    decide_failure,
    decide_step,
    divergence_error,
)
from stalwart.checkpoints import (
    ErrorInfo,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    decode_value,
    encode_value,
)
from stalwart.checkpoints._codec import open_text
from stalwart.errors import (
    CircuitOpenError,
    LeaseLost,
    PayloadKeyError,
    StepFailed,
    StepTimeoutError,
    ToolOutcomeUnknown,
)
from stalwart.messages import (
    EV_OUTCOME_UNKNOWN,
    EV_STEP_RESET,
    EV_STEP_STARTED,
    OutcomeUnknownData,
    StepResetData,
    data_dict,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import structlog

    from stalwart.actors._context import StepSpec
    from stalwart.actors._flow import Permit, RunFlow
    from stalwart.actors._ports import EventSink, Journal, Owner
    from stalwart.actors._rules import RunState
    from stalwart.actors._waits import Waits
    from stalwart.flow import RuleHandle
    from stalwart.policies import Breakers, CircuitBreaker, RetryPolicy

__all__ = ["Drained", "StepExecutor", "error_info"]


def error_info(exc: BaseException, retryable: bool = True) -> ErrorInfo:
    """How the journal records ``exc``. Never raises, whatever ``exc`` does.

    It runs in the handlers that record a failure: an exception whose ``str()``, ``repr()``
    or class name raises must still be recorded, or the actor's task would die and the run
    be placed again and again. The message is cut to ``ERROR_TEXT_LIMIT`` characters.
    """
    try:
        if type(exc) is StepFailed or _is_step_failed(exc):
            error_type = clip(safe_text(exc.error_type), 200)  # type: ignore[attr-defined]
            message = safe_text(exc.message)  # type: ignore[attr-defined]
        else:
            error_type, message = type_name(exc), exception_text(exc)
        return ErrorInfo(error_type, clip(message, ERROR_TEXT_LIMIT), bool(retryable))
    except Exception:
        return ErrorInfo(type_name(exc), "<the exception could not be rendered>", bool(retryable))


def _is_step_failed(exc: BaseException) -> bool:
    # By the real type: isinstance() may consult a hostile __class__ or metaclass.
    try:
        return issubclass(type(exc), StepFailed)
    except Exception:
        return False


class StepExecutor(OnRun):
    """Runs one step at a time as ``_rules`` decides, journaling what the rules require.

    ``unjournaled`` makes it a read-only replay: a step the journal lacks is never run, the
    exception it returns is raised instead.
    """

    def __init__(
        self,
        state: RunState,
        journal: Journal,
        events: EventSink,
        owner: Owner,
        breakers: Breakers,
        waits: Waits,
        wake: asyncio.Event,
        log: structlog.typing.FilteringBoundLogger,
        unjournaled: Callable[[str, str], BaseException] | None = None,
        *,
        flow: RunFlow | None = None,
    ) -> None:
        self.state = state
        self._journal = journal
        self._events = events
        self._owner = owner
        self._breakers = breakers
        self._waits = waits
        self._wake = wake
        self._log = log
        self._unjournaled = unjournaled
        self._live = unjournaled is None
        self.flow = flow if unjournaled is None else None
        """The run's flow gate (None: the app has no flow rules, or this is a replay)."""

    # -- the step -------------------------------------------------------------------------

    async def execute(self, spec: StepSpec, run: Callable[[], Awaitable[Any]]) -> Any:
        """Return the journaled outcome of step ``spec``, or run it live and journal it."""
        state = self.state
        d = decide_step(state, spec, live=self._live)
        # The live step is tested for first: it is the one run at speed.
        if isinstance(d, Attempt | Unknown):
            if state.replaying:
                state.replaying = False
                state.first_live_step_at = time.monotonic()
            with obs.step_scope(self, spec):
                if isinstance(d, Unknown):
                    return await self._unknown_outcome(spec, d)
                return await self._attempts(spec, run, d)
        if isinstance(d, StepDone):
            try:
                return decode_value(d.result, spec.result_type)
            except PayloadKeyError as exc:
                # Encrypted with a key this worker lacks: the run must not go on (agent code
                # that catches it cannot run further steps), and nothing is lost by stopping.
                state.fatal = exc
                raise
        if isinstance(d, StepError):
            raise StepFailed(spec.key, d.error.type, open_text(d.error.message))
        if isinstance(d, Stop | OverBudget):
            raise d.error
        if isinstance(d, Diverged):
            raise divergence_error(state, d)
        assert self._unjournaled is not None
        raise self._unjournaled(d.key, d.what)

    async def _attempts(self, spec: StepSpec, run: Callable[[], Awaitable[Any]], d: Attempt) -> Any:
        state = self.state
        policy = d.policy
        breaker = self._local_breaker(spec, d) if d.breaker else None
        attempt = d.attempt
        if d.resume_at:
            await self._pause(d.resume_at - time.time())
        while True:
            # No boundary check here: decide_step made it just before (nothing awaited
            # since), and _pause makes it after every wait (the backoff, a resumed one).
            # The one flow gate (rate limits, spend ...): a dict lookup when no rule matches.
            rules = self.flow.match(spec.kind, spec.name) if self.flow is not None else ()
            permit = await self._admit(spec, attempt, rules, policy) if rules else None
            started = time.time()
            t0 = time.perf_counter()
            token = _current.set(StepInfo(state.run_id, spec.key, attempt))
            try:
                if breaker is not None and (shut := breaker_gate(breaker, spec.name)):
                    raise shut
                if d.at_most_once:
                    await self._journal.append(self._intent(spec, attempt, started))
                self._started(spec, attempt, d.attempt)
                # Last thing before the body: the lease must still be ours (a frozen worker's
                # flags say nothing). Costs one clock read while renewals are on time.
                if not self._owner.holds():
                    await self._owner.confirm()
                # Without a timeout, the body is awaited here: a coroutine level less.
                value = await (run() if d.timeout is None else self._call(spec, run, d.timeout))
            except (LeaseLost, Drained, asyncio.CancelledError):
                if breaker is not None:
                    breaker.abandon()  # an interrupted half-open trial must not wedge it
                await self._settle(permit, spec, False, None)
                raise
            except Exception as exc:
                await self._settle(permit, spec, False, None, exc)
                duration = time.perf_counter() - t0
                after = decide_failure(exc, attempt, policy, breaker)
                if isinstance(after, GiveUp):
                    info = await self._record_error(
                        spec, exc, started, duration, attempt, after.retryable
                    )
                    raise StepFailed(spec.key, info.type, info.message) from exc
                await self._record_attempt(spec, exc, attempt, after.delay, started, duration)
                await self._pause(after.delay)
                attempt += 1
                continue
            finally:
                _current.reset(token)
            if breaker is not None:
                breaker.record(True)
            if permit is not None:
                await self._settle(permit, spec, True, value)
            return await self._record_done(spec, value, started, time.perf_counter() - t0, attempt)

    def _started(self, spec: StepSpec, attempt: int, first: int) -> None:
        """Announce an attempt of ``spec``; first, when an earlier attempt may have streamed
        live events, a ``step.reset`` voiding them.

        A reset goes before a retry (``attempt`` > 1), and before the attempts of a resumed
        run until its first live step completes (the lost owner may have been streaming any
        of them): ``failover`` for this epoch's ``first`` attempt then, else ``retry``. It is
        never dropped by the event batch, unlike a ``step.started`` (see EventPublisher).
        """
        state = self.state
        window = state.resumed and not state.steps_live
        if attempt > 1 or window:
            self._reset(spec, attempt, "failover" if window and attempt == first else "retry")
        self._events.emit(
            EV_STEP_STARTED, step=spec.key, data=step_started_data(spec.kind, attempt)
        )

    def _reset(self, spec: StepSpec, attempt: int, reason: str) -> None:
        self._events.emit(
            EV_STEP_RESET,
            step=spec.key,
            attempt=attempt,
            data=data_dict(StepResetData(attempt=attempt, reason=reason)),
        )

    def _local_breaker(self, spec: StepSpec, d: Attempt) -> CircuitBreaker | None:
        """This worker's breaker for the step, unless it has none or a shared breaker (a flow
        rule) replaces it for the step's resource."""
        if not d.breaker or (self.flow and self.flow.gate.shares_breaker(spec.kind, spec.name)):
            return None
        return self._breakers.get(d.breaker)

    async def _admit(
        self, spec: StepSpec, attempt: int, rules: tuple[RuleHandle, ...], policy: RetryPolicy
    ) -> Permit:
        """Wait until the flow rules governing ``spec`` (``rules``) admit this attempt."""
        assert self.flow is not None
        try:
            return await self.flow.admit(spec, attempt, rules, policy)
        except CircuitOpenError as exc:
            # An open shared breaker the step's retry policy will not wait for: journaled
            # as the step's outcome, like any failure the policy gives up on.
            info = await self._record_error(spec, exc, time.time(), 0.0, attempt, False)
            raise StepFailed(spec.key, info.type, info.message) from exc
        except FlowPassivated as exc:
            # Kept, so agent code that swallows it cannot run further steps.
            self.state.fatal = exc
            raise

    async def _settle(
        self,
        permit: Permit | None,
        spec: StepSpec,
        ok: bool,
        value: Any,
        error: BaseException | None = None,
    ) -> None:
        """Tell the flow rules how the attempt ended (with a model step's usage)."""
        if permit is None or self.flow is None:
            return
        usage = None
        if ok and spec.usage is not None:
            try:
                usage = spec.usage(value)
            except Exception:  # _record_done reports a broken extractor; flow only counts
                usage = None
        await permit.settle(self.flow.outcome(ok, usage, error))

    async def _call(self, spec: StepSpec, run: Callable[[], Awaitable[Any]], timeout: float) -> Any:
        """The body under its start-to-close timeout (without one it is awaited directly)."""
        try:
            async with asyncio.timeout(timeout):
                return await run()
        except TimeoutError as exc:
            raise StepTimeoutError(
                f"step {spec.key!r} exceeded its {timeout:g}s start-to-close timeout"
            ) from exc

    async def _pause(self, seconds: float) -> None:
        """Sleep for a retry backoff, waking early when the run must stop (drain, lease)."""
        if seconds > 0:
            try:
                await asyncio.wait_for(self._wake.wait(), seconds)
            except TimeoutError:
                pass
        stop = boundary_error(self.state)
        if stop is not None:
            raise stop

    # -- journal writes -------------------------------------------------------------------------

    def _intent(self, spec: StepSpec, attempt: int, at: float) -> StepIntent:
        return StepIntent(
            key=spec.key,
            kind=spec.kind,
            name=spec.name,
            fp=spec.fp,
            attempt=attempt,
            epoch=self.state.epoch,
            worker=self.state.worker_id,
            at=at,
        )

    async def _record_done(
        self, spec: StepSpec, value: Any, started: float, duration: float, attempt: int
    ) -> Any:
        state = self.state
        try:
            raw = encode_value(value)
        except Exception as exc:  # TypeError, or RecursionError for a too deeply nested value
            err = TypeError(
                f"step {spec.key!r} returned a {type_name(value)}, which cannot be "
                f"journaled ({clip(exception_text(exc), 300)}); return plain data, a "
                "msgspec Struct or a dataclass, nested less than a few hundred levels"
            )
            await self._record_error(spec, err, started, duration, attempt, False)
            raise StepFailed(spec.key, "TypeError", str(err)) from exc
        usage = spec.usage(value) if spec.usage is not None else None
        entry = StepDone(
            key=spec.key,
            kind=spec.kind,
            name=spec.name,
            fp=spec.fp,
            result=raw,
            epoch=state.epoch,
            worker=state.worker_id,
            at=started,
            duration=duration,
            attempt=attempt,
            model=usage.model if usage else "",
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
        )
        je = await self._journal.append(entry)
        state.view.done[spec.key] = entry
        state.steps_live += 1
        account(state, entry)
        obs.step_journaled(self, entry)
        self._events.journaled(je)
        # Decode what was journaled so the live path returns exactly what a replay would.
        return decode_value(raw, spec.result_type)

    async def _record_attempt(
        self,
        spec: StepSpec,
        exc: BaseException,
        attempt: int,
        delay: float,
        started: float,
        duration: float,
    ) -> None:
        info = error_info(exc)
        entry = StepAttempt(
            key=spec.key,
            kind=spec.kind,
            name=spec.name,
            fp=spec.fp,
            attempt=attempt,
            error=info,
            delay=delay,
            epoch=self.state.epoch,
            worker=self.state.worker_id,
            at=started,
            duration=duration,
        )
        je = await self._journal.append(entry)
        self.state.view.add(entry)
        obs.step_retried(entry)
        self._log.info(
            "step.retrying",
            step=spec.key,
            attempt=attempt,
            delay=round(delay, 3),
            error=f"{info.type}: {clip(info.message, 500)}",
        )
        # The journaled event (with its jseq): a new owner that republishes it after a
        # crash publishes the same message, which the stream drops as a duplicate.
        self._events.journaled(je)

    async def _record_error(
        self,
        spec: StepSpec,
        exc: BaseException,
        started: float,
        duration: float,
        attempt: int = 1,
        retryable: bool = False,
    ) -> ErrorInfo:
        info = error_info(exc, retryable)
        entry = StepError(
            key=spec.key,
            kind=spec.kind,
            name=spec.name,
            fp=spec.fp,
            error=info,
            epoch=self.state.epoch,
            worker=self.state.worker_id,
            at=started,
            duration=duration,
            attempt=attempt,
        )
        je = await self._journal.append(entry)
        self.state.view.done[spec.key] = entry
        obs.step_journaled(self, entry)
        self._events.journaled(je)
        return info

    async def _unknown_outcome(self, spec: StepSpec, d: Unknown) -> Any:
        """An at-most-once step started before a crash and never reported back."""
        started = time.time()
        run_id, intent = self.state.run_id, d.intent
        if d.how == "signal":
            signal = f"outcome:{spec.key}"
            self._events.emit(
                EV_OUTCOME_UNKNOWN,
                step=spec.key,
                data=data_dict(
                    OutcomeUnknownData(signal=signal, idempotency_key=f"{run_id}:{spec.key}")
                ),
            )
            # The wait is journaled under the step's own key, so it replays with it.
            value = await self._waits.wait(f"{spec.key}/outcome", signal, None)
            return await self._record_done(spec, value, started, 0.0, intent.attempt)
        if d.how == "reconcile":
            assert spec.reconcile is not None
            await self._owner.ensure()
            token = _current.set(StepInfo(run_id, spec.key, intent.attempt))
            try:
                value = await spec.reconcile()
            except (LeaseLost, Drained, asyncio.CancelledError):
                raise
            except Exception as exc:
                info = await self._record_error(spec, exc, started, 0.0, intent.attempt, False)
                raise StepFailed(spec.key, info.type, info.message) from exc
            finally:
                _current.reset(token)
            return await self._record_done(spec, value, started, 0.0, intent.attempt)
        unknown = ToolOutcomeUnknown(
            f"step {spec.key!r} ({spec.name}) is at-most-once and was running when its worker "
            f"(epoch {intent.epoch}, {intent.worker}) died; it is not run again. Check its "
            f"effect with idempotency key {run_id}:{spec.key}, or give it a reconcile hook."
        )
        await self._record_error(spec, unknown, started, 0.0, intent.attempt, False)
        raise StepFailed(spec.key, "ToolOutcomeUnknown", str(unknown)) from unknown
