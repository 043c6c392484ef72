"""Running one step: replay, retries, timeouts, breakers, budgets, at-most-once.

A mixin of :class:`~stalwart.actors._actor.RunActor`, kept apart so the actor's lifecycle
and the per-step rules can each be read on their own.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from stalwart._text import ERROR_TEXT_LIMIT, clip, exception_text, safe_text, type_name
from stalwart.actors._context import StepInfo, _current
from stalwart.checkpoints import (
    ErrorInfo,
    JournalEntry,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    decode_value,
    encode_value,
)
from stalwart.errors import (
    CircuitOpenError,
    LeaseLost,
    NonDeterminismError,
    StalwartError,
    StepFailed,
    StepTimeoutError,
    ToolOutcomeUnknown,
)
from stalwart.messages import EV_OUTCOME_UNKNOWN, EV_STEP_STARTED
from stalwart.observability import _hooks as obs
from stalwart.policies import Breakers, Policies, RetryPolicy, RunUsage, StepOptions, classify

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import structlog

    from stalwart.actors._context import StepSpec
    from stalwart.checkpoints import Entry
    from stalwart.messages import RunEvent

_BREAKER_KINDS = frozenset({"model", "tool"})


class Drained(Exception):
    """Raised at a step boundary when the worker is shutting down and gives the run up."""


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


def _classify(exc: BaseException, policy: RetryPolicy) -> tuple[bool, float | None]:
    """:func:`classify`, treating an exception whose attributes raise as not retryable."""
    try:
        return classify(exc, policy)
    except Exception:
        return False, None


def _under_replayed(key: str, journal: dict[str, Any], unreplayed: set[str]) -> bool:
    parts = key.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        if parent in journal and parent not in unreplayed:
            return True
    return False


class StepExecutor:
    """Per-step rules of a run actor. The actor provides the attributes declared here."""

    run_id: str
    epoch: int
    worker_id: str
    replaying: bool
    policies: Policies
    breakers: Breakers
    usage: RunUsage
    first_live_step_at: float | None
    steps_replayed: int
    steps_live: int
    log: structlog.typing.FilteringBoundLogger
    _journal: dict[str, StepDone | StepError]
    _attempts: dict[str, list[StepAttempt]]
    _intents: dict[str, StepIntent]
    _unreplayed: set[str]
    _fatal: StalwartError | None
    _wake: asyncio.Event

    async def _append(self, entry: Entry) -> JournalEntry:
        raise NotImplementedError

    async def _emit(self, event: RunEvent) -> None:
        raise NotImplementedError

    def _event(self, type: str, *, jseq: int = 0, step: str = "", data: Any = None) -> RunEvent:
        raise NotImplementedError

    def _journal_event(self, je: JournalEntry) -> RunEvent:
        raise NotImplementedError

    def _check_boundary(self) -> None:
        raise NotImplementedError

    async def _ensure_lease(self) -> None:
        raise NotImplementedError

    async def _confirm_owner(self) -> None:
        raise NotImplementedError

    if TYPE_CHECKING:  # provided by the Waits mixin; a stub here would shadow it (MRO)

        async def wait(self, key: str, signal: str, timeout: float | None) -> Any: ...

    # -- replay ---------------------------------------------------------------------------

    def _replay(self, spec: StepSpec, entry: StepDone | StepError) -> Any:
        if entry.fp != spec.fp or entry.kind != spec.kind:
            what = (
                f"{entry.kind} {entry.name!r} was recorded, the code now asks for "
                f"{spec.kind} {spec.name!r}"
                if (entry.name, entry.kind) != (spec.name, spec.kind)
                else f"{spec.kind} {spec.name!r} is called with different arguments"
            )
            raise NonDeterminismError(
                f"run {self.run_id!r}, step {spec.key!r}: {what}. The agent code changed "
                "since this run started; deploy the change for new runs only, or fork the "
                "run from an earlier step."
            )
        self.steps_replayed += 1
        if isinstance(entry, StepError):
            raise StepFailed(spec.key, entry.error.type, entry.error.message)
        self._account_model(entry)
        return decode_value(entry.result, spec.result_type)

    def _check_replayed_all(self) -> None:
        """A journaled step the code never asked for again means the code changed."""
        # Steps nested under a replayed step (``tool:x/...``, a delegated agent's steps)
        # were not asked for because that step's body did not run again: not a change.
        unasked = [
            k for k in self._unreplayed if not _under_replayed(k, self._journal, self._unreplayed)
        ]
        if unasked:
            missing = ", ".join(sorted(unasked)[:5])
            raise NonDeterminismError(
                f"run {self.run_id!r}: journaled step(s) {missing} were not asked for on "
                "replay; the agent code changed since this run started (a step was renamed "
                "or removed)"
            )

    # -- accounting -------------------------------------------------------------------------

    def _account_model(self, entry: StepDone) -> None:
        if entry.kind == "model":
            self.usage.add_model(
                self.policies.limits, entry.model, entry.input_tokens, entry.output_tokens
            )

    def _guard(self, spec: StepSpec) -> None:
        """Budgets and loop detection, checked before a step (replayed or live) goes on."""
        try:
            if spec.kind == "model":
                self.usage.before_model(self.policies.limits)
            elif spec.kind == "tool":
                self.usage.add_tool(self.policies.limits, spec.name, spec.fp)
        except StalwartError as exc:
            # Remembered, so agent code that swallows it cannot carry on regardless.
            self._fatal = exc
            raise

    # -- the step -------------------------------------------------------------------------

    async def execute(self, spec: StepSpec, run: Callable[[], Awaitable[Any]]) -> Any:
        """Return the journaled outcome of step ``spec``, or run it live and journal it."""
        recorded = self._journal.get(spec.key)
        if recorded is not None:
            self._unreplayed.discard(spec.key)
            if spec.kind != "model":
                self._guard(spec)
            return self._replay(spec, recorded)
        self._check_boundary()
        self._guard(spec)
        if self.replaying:
            self.replaying = False
            self.first_live_step_at = time.monotonic()
        opts = spec.options
        at_most_once = bool(opts and opts.at_most_once) or spec.name in self.policies.at_most_once
        with obs.step_scope(self, spec):
            intent = self._intents.get(spec.key)
            tried = self._attempts.get(spec.key, [])
            known = bool(tried) and intent is not None and tried[-1].attempt >= intent.attempt
            if at_most_once and intent is not None and not known:
                # Started and never reported back (a failed attempt would be journaled).
                return await self._unknown_outcome(spec, intent)
            return await self._attempts_loop(spec, run, opts, at_most_once)

    async def _attempts_loop(
        self,
        spec: StepSpec,
        run: Callable[[], Awaitable[Any]],
        opts: StepOptions | None,
        at_most_once: bool,
    ) -> Any:
        policy = self.policies.retry_for(spec.kind, spec.name, opts, at_most_once=at_most_once)
        timeout = self.policies.timeout_for(spec.kind, opts)
        breaker = (
            self.breakers.get(f"{spec.kind}:{spec.name}") if spec.kind in _BREAKER_KINDS else None
        )
        previous = self._attempts.get(spec.key, [])
        attempt = len(previous) + 1
        if previous:  # resumed inside a backoff: wait out what is left of it
            last = previous[-1]
            await self._pause(last.at + last.duration + last.delay - time.time())
        while True:
            self._check_boundary()
            started = time.time()
            t0 = time.perf_counter()
            token = _current.set(StepInfo(self.run_id, spec.key, attempt))
            try:
                retry_in = breaker.before_call() if breaker is not None else None
                if retry_in is not None:
                    raise CircuitOpenError(spec.name, retry_in)
                if at_most_once:
                    await self._append(self._intent(spec, attempt, started))
                await self._emit(
                    self._event(
                        EV_STEP_STARTED, step=spec.key, data={"kind": spec.kind, "attempt": attempt}
                    )
                )
                # Last thing before the body: the lease must still be ours (a frozen worker's
                # flags say nothing). Costs one clock read while renewals are on time.
                await self._confirm_owner()
                value = await self._call(spec, run, timeout)
            except (LeaseLost, Drained, asyncio.CancelledError):
                if breaker is not None:
                    breaker.abandon()  # an interrupted half-open trial must not wedge it
                raise
            except Exception as exc:
                duration = time.perf_counter() - t0
                retryable, retry_after = _classify(exc, policy)
                if breaker is not None and not isinstance(exc, CircuitOpenError):
                    # Only failures that say "the other side is unwell" count; a declined
                    # card or a 4xx is an answer, not an outage.
                    if retryable:
                        breaker.record(False)
                    else:
                        breaker.abandon()
                if retryable and attempt < policy.max_attempts:
                    delay = policy.delay(attempt, retry_after)
                    await self._record_attempt(spec, exc, attempt, delay, started, duration)
                    await self._pause(delay)
                    attempt += 1
                    continue
                info = await self._record_error(spec, exc, started, duration, attempt, retryable)
                raise StepFailed(spec.key, info.type, info.message) from exc
            finally:
                _current.reset(token)
            if breaker is not None:
                breaker.record(True)
            return await self._record_done(spec, value, started, time.perf_counter() - t0, attempt)

    async def _call(
        self, spec: StepSpec, run: Callable[[], Awaitable[Any]], timeout: float | None
    ) -> Any:
        if timeout is None:
            return await run()
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
        self._check_boundary()

    # -- journal writes -------------------------------------------------------------------------

    def _intent(self, spec: StepSpec, attempt: int, at: float) -> StepIntent:
        return StepIntent(
            key=spec.key,
            kind=spec.kind,
            name=spec.name,
            fp=spec.fp,
            attempt=attempt,
            epoch=self.epoch,
            worker=self.worker_id,
            at=at,
        )

    async def _record_done(
        self, spec: StepSpec, value: Any, started: float, duration: float, attempt: int
    ) -> Any:
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
            epoch=self.epoch,
            worker=self.worker_id,
            at=started,
            duration=duration,
            attempt=attempt,
            model=usage.model if usage else "",
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
        )
        je = await self._append(entry)
        self._journal[spec.key] = entry
        self.steps_live += 1
        self._account_model(entry)
        obs.step_journaled(self, entry)
        await self._emit(self._journal_event(je))
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
            epoch=self.epoch,
            worker=self.worker_id,
            at=started,
            duration=duration,
        )
        je = await self._append(entry)
        self._attempts.setdefault(spec.key, []).append(entry)
        obs.step_retried(entry)
        self.log.info(
            "step.retrying",
            step=spec.key,
            attempt=attempt,
            delay=round(delay, 3),
            error=f"{info.type}: {clip(info.message, 500)}",
        )
        await self._emit(self._journal_event(je))

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
            epoch=self.epoch,
            worker=self.worker_id,
            at=started,
            duration=duration,
            attempt=attempt,
        )
        je = await self._append(entry)
        self._journal[spec.key] = entry
        obs.step_journaled(self, entry)
        await self._emit(self._journal_event(je))
        return info

    async def _unknown_outcome(self, spec: StepSpec, intent: StepIntent) -> Any:
        """An at-most-once step started before a crash and never reported back."""
        started = time.time()
        if spec.options is not None and spec.options.on_unknown == "signal":
            signal = f"outcome:{spec.key}"
            await self._emit(
                self._event(
                    EV_OUTCOME_UNKNOWN,
                    step=spec.key,
                    data={"signal": signal, "idempotency_key": f"{self.run_id}:{spec.key}"},
                )
            )
            # The wait is journaled under the step's own key, so it replays with it.
            value = await self.wait(f"{spec.key}/outcome", signal, None)
            return await self._record_done(spec, value, started, 0.0, intent.attempt)
        if spec.reconcile is not None:
            await self._ensure_lease()
            token = _current.set(StepInfo(self.run_id, spec.key, intent.attempt))
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
            f"effect with idempotency key {self.run_id}:{spec.key}, or give it a reconcile hook."
        )
        await self._record_error(spec, unknown, started, 0.0, intent.attempt, False)
        raise StepFailed(spec.key, "ToolOutcomeUnknown", str(unknown)) from unknown
