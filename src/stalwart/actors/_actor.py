"""``RunActor``: one run's life on the worker that holds its lease."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import structlog
from nats.errors import Error as NatsError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stalwart._journal_events import entry_event
from stalwart._text import ERROR_TEXT_LIMIT, clip, exception_text, safe_text, type_name
from stalwart.actors._context import RunContext
from stalwart.actors._execute import Drained, StepExecutor, error_info
from stalwart.actors._waits import Passivated, Waits
from stalwart.checkpoints import (
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
from stalwart.checkpoints._store import SettlingFuture
from stalwart.errors import LeaseLost, RunCancelled, ServerUnavailableError, StalwartError
from stalwart.messages import (
    EV_LEASE_LOST,
    EV_PASSIVATED,
    EV_RELEASED,
    RunEvent,
    RunRequest,
)
from stalwart.observability import _hooks as obs
from stalwart.policies import Breakers, Policies, RunUsage

T = TypeVar("T")

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from stalwart.actors._app import AgentSpec
    from stalwart.broker import Broker, Lease
    from stalwart.checkpoints import CheckpointStore, Entry

log = structlog.get_logger("stalwart.actor")

_DEADLINE = object()  # sentinel: the run's deadline passed


async def _uncancellable(write: Coroutine[Any, Any, T] | asyncio.Future[T]) -> T:
    """Finish a journal write even if the caller is cancelled meanwhile, then re-raise.

    Frameworks cancel their own tasks (a tripped guardrail, a failed sibling tool). A write
    abandoned mid-flight may still land in Redis; if the position counter did not move with
    it, the next write would collide with it. So the write always completes (or fails) and
    its outcome is accounted for before the cancellation goes on. A write that is already a
    future (``CheckpointStore.append_future``) needs no task of its own.
    """
    fut = asyncio.ensure_future(write)
    try:
        if isinstance(fut, SettlingFuture):  # refuses cancellation itself: no shield needed
            return await fut
        return await asyncio.shield(fut)
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


class _Fail(Exception):
    """Ends the run as failed with a given error (not an exception of the agent's)."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class RunActor(StepExecutor, Waits):
    """Replays a run's journal, runs the agent from the top, and journals every new step.

    Created by the worker after it won the run's lease and claimed the epoch in Redis.
    """

    def __init__(
        self,
        *,
        spec: AgentSpec,
        run_id: str,
        lease: Lease,
        claim_seq: int,
        claimed_at: float = 0.0,
        input: bytes,
        cancel: str,
        deadline: float,
        policies: Policies,
        breakers: Breakers,
        fetch_closed: asyncio.Event,
        passivate_after: float = 60.0,
        confirm_retry: float = 0.25,
        store: CheckpointStore,
        broker: Broker,
        worker_id: str,
        trace_parent: obs.TraceParent = obs.NO_PARENT,
    ) -> None:
        self.spec = spec
        self.run_id = run_id
        self.lease = lease
        self.epoch = lease.epoch
        self.worker_id = worker_id
        self._store = store
        self._broker = broker
        self._input = input
        self._claim_seq = claim_seq
        self._claimed_at = claimed_at or time.time()
        self._fetch_closed = fetch_closed
        self.cancel_reason = cancel
        self.draining = False
        self._handing_over = False
        self.handover = ""
        """How a draining worker gave the run up: ``released`` at a step boundary, or
        ``cancelled`` in a step body when the drain budget ended; empty otherwise."""
        self.lost = False
        self.abandoned = False
        """Set when the journal is unreachable: the run is given up, never failed for it."""
        self.holds_lease = True
        """False once the lease was given up, so the worker stops renewing it."""
        self.replaying = True
        self.deadline = deadline
        self.policies = policies
        self.breakers = breakers
        self.usage = RunUsage()
        self._fatal: StalwartError | None = None
        self._wake = asyncio.Event()
        self._attempts: dict[str, list[StepAttempt]] = {}
        self._intents: dict[str, StepIntent] = {}
        self.passivate_after = passivate_after
        self._confirm_retry = confirm_retry
        self._waits: dict[str, WaitStarted] = {}
        self._consumed_signals: set[str] = set()
        self._journal: dict[str, StepDone | StepError] = {}
        self._unreplayed: set[str] = set()
        self._next_seq = claim_seq + 1
        self._append_lock = asyncio.Lock()
        self.steps_replayed = 0
        self.steps_live = 0
        self.first_live_step_at: float | None = None
        self.trace_parent = trace_parent
        """The trace this placement continues (the submitter's, from the run record)."""
        self.log = log.bind(run_id=run_id, agent=spec.name, epoch=self.epoch, worker=worker_id)

    # -- events -------------------------------------------------------------------------

    def _event(self, type: str, *, jseq: int = 0, step: str = "", data: Any = None) -> RunEvent:
        return RunEvent(
            type=type,
            run_id=self.run_id,
            at=time.time(),
            worker=self.worker_id,
            epoch=self.epoch,
            jseq=jseq,
            step=step,
            data=data,
        )

    async def _emit(self, event: RunEvent) -> None:
        try:
            await self._broker.events.publish(event)
        except Exception as exc:  # events are best effort; the journal is the truth
            self.log.warning("event.publish_failed", type=event.type, error=repr(exc))

    async def emit_live(self, type: str, data: Any, step: str = "") -> None:
        """Publish a non-journaled event for this run (see :meth:`RunContext.emit`)."""
        await self._emit(self._event(type, step=step, data=data))

    def _journal_event(self, je: JournalEntry) -> RunEvent:
        return entry_event(self.run_id, je, journaled_steps=len(self._journal))

    # -- journal ------------------------------------------------------------------------

    async def _append(self, entry: Entry) -> JournalEntry:
        """Fenced append at the next position; raises LeaseLost if a newer epoch owns the run."""
        if self.lost:
            raise LeaseLost(f"run {self.run_id!r}: epoch {self.epoch} lost its lease")
        async with self._append_lock:
            seq = self._next_seq
            t0 = time.perf_counter()
            try:
                cancel = await _uncancellable(
                    self._store.append_future(self.run_id, self.epoch, seq, entry)
                )
            except _WrittenThenCancelled:
                self._next_seq = seq + 1
                raise
            except LeaseLost:
                self.lost = True
                raise
            except ServerUnavailableError:
                self.abandoned = True
                raise
            self._next_seq = seq + 1
            obs.journal_appended(time.perf_counter() - t0)
        if cancel and not self.cancel_reason:
            self.cancel_reason = cancel
        return JournalEntry(seq=seq, entry=entry)

    async def _load(self) -> None:
        if self._claim_seq == 1:
            # A first placement: the journal holds just the Started entry the claim wrote,
            # and no journaled event can be in the stream yet. Two round trips saved.
            started = Started(epoch=self.epoch, worker=self.worker_id, at=self._claimed_at)
            entries = [JournalEntry(seq=1, entry=started)]
            obs.run_loaded(self, entries)
            self._next_seq = 2
            await self._emit(self._journal_event(entries[0]))
            return
        entries = await self._store.read_journal(self.run_id)
        obs.run_loaded(self, entries)
        for je in entries:
            e = je.entry
            if isinstance(e, StepDone | StepError):
                self._journal[e.key] = e
            elif isinstance(e, StepAttempt):
                self._attempts.setdefault(e.key, []).append(e)
            elif isinstance(e, StepIntent):
                self._intents[e.key] = e
            elif isinstance(e, WaitStarted):
                self._waits[e.key] = e
        if entries:
            self._next_seq = entries[-1].seq + 1
        self._unreplayed = set(self._journal)
        try:
            published = await self._broker.events.last_published_jseq(self.run_id)
        except Exception as exc:  # events are best effort: republish (dropped as duplicates)
            self.log.warning("event.last_published_unknown", error=safe_text(exc))
            published = 0
        for je in entries:
            if je.seq > published:
                await self._emit(self._journal_event(je))

    # -- steps --------------------------------------------------------------------------

    def _check_boundary(self) -> None:
        # Flags, not just exceptions: agent code that swallows an exception with a broad
        # `except Exception` must still not get to run more steps.
        if self.lost:
            raise LeaseLost(f"run {self.run_id!r}: epoch {self.epoch} lost its lease")
        if self.abandoned:
            raise ServerUnavailableError(f"run {self.run_id!r}: the journal is unreachable")
        if self.cancel_reason:
            raise RunCancelled(self.run_id, self.cancel_reason)
        if self._fatal is not None:
            raise self._fatal
        if self.draining:
            raise Drained(self.run_id)

    async def _ensure_lease(self) -> None:
        """Before user code starts: the step-boundary check, then :meth:`_confirm_owner`."""
        self._check_boundary()
        await self._confirm_owner()

    async def _confirm_owner(self) -> None:
        """Return only once the lease is known to be ours; raise :class:`LeaseLost` if not.

        The flags alone are not enough: a worker frozen (SIGSTOP, a stalled VM, a long GC)
        wakes with ``lost`` unset while another worker may already have taken the run over
        and journaled the very step it is about to start. So unless the last confirmed
        renewal is recent (one clock read, see ``lease_margin``), the lease is renewed now,
        and no user code starts until the server said yes. A server that cannot be asked is
        retried until the lease has surely expired; then the run is given up (the supervisor
        re-places it). Raises nothing but ``LeaseLost``, so a step can call it inside the
        ``try`` that records the body's own errors.
        """
        if self.lost:
            raise LeaseLost(f"run {self.run_id!r}: epoch {self.epoch} lost its lease")
        leases = self._broker.leases
        if leases.fresh(self.lease):
            return
        while True:
            try:
                if await leases.confirm(self.lease):
                    return
                why = "was taken over (found when confirming it before user code)"
            except (OSError, NatsError) as exc:
                if not leases.expired(self.lease):
                    self.log.warning("lease.confirm_failed", error=repr(exc))
                    await asyncio.sleep(self._confirm_retry)
                    continue
                why = "could not be confirmed within its TTL (server unreachable)"
            self.lost = True
            raise LeaseLost(f"run {self.run_id!r}: the lease of epoch {self.epoch} {why}")

    @property
    def store(self) -> CheckpointStore:
        """The checkpoint store this run journals into."""
        return self._store

    def check_boundary(self) -> None:
        """Public form of the step-boundary check (see RunContext.check_boundary)."""
        self._check_boundary()

    def mark_replayed(self, prefix: str) -> None:
        """Journaled steps under ``prefix`` count as replayed (see RunContext.mark_replayed)."""
        self._unreplayed = {k for k in self._unreplayed if not k.startswith(prefix)}

    def drain(self) -> None:
        """Stop at the next step boundary (or now, if waiting out a retry backoff)."""
        self.draining = True
        self._wake.set()

    def hand_over(self) -> None:
        """The drain budget ended: the worker cancels this run's task, which then hands the
        run over (releases the lease and publishes the resume request) instead of leaving
        it to lease expiry and the supervisor."""
        self.draining = True
        self._handing_over = True

    def stop_lost(self) -> None:
        """The lease is gone: no further step may be journaled."""
        self.lost = True
        self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the run to an end: completed, failed, cancelled, drained, or lease lost."""
        with obs.run_scope(self):
            await self._run()

    async def _run(self) -> None:
        try:
            await self._drive()
        except _Fail as exc:
            await self._finish_failed(exc.info)
        except LeaseLost as exc:
            self.lost = True
            self.log.warning("run.lease_lost", error=str(exc))
            await self._emit(self._event(EV_LEASE_LOST, data={"reason": str(exc)}))
        except Drained:
            await self._release_for_resume("released")
        except Passivated as exc:
            await self._passivate(exc)
        except (ServerUnavailableError, RedisConnectionError, RedisTimeoutError) as exc:
            # Failing the run for an outage would be wrong: give it up; the supervisor
            # re-places it once the servers answer again, and it resumes from its journal.
            self.log.error("run.abandoned", error=str(exc))
            self.holds_lease = False
            with contextlib.suppress(Exception):
                await self._broker.leases.release(self.lease)
        except asyncio.CancelledError:
            if self.lost:
                self.log.warning("run.stopped_lease_lost")
                return
            if self._handing_over and self.holds_lease:
                # Our own cancel at the end of the drain budget: hand over now. The cancel
                # request was delivered, so these awaits run normally.
                await self._release_for_resume("cancelled")
                return
            raise
        except RunCancelled as exc:
            await self._finish(
                Finished(
                    status="cancelled",
                    epoch=self.epoch,
                    worker=self.worker_id,
                    at=time.time(),
                    error=ErrorInfo(
                        "RunCancelled",
                        clip(safe_text(exc.reason), ERROR_TEXT_LIMIT),
                        retryable=False,
                    ),
                )
            )
        except Exception as exc:
            await self._finish_failed(error_info(exc, False))
        finally:
            self._broker.events.forget(self.run_id)

    async def _drive(self) -> None:
        await self._load()
        if self.cancel_reason:
            raise RunCancelled(self.run_id, self.cancel_reason)
        try:
            value = msgspec.convert(
                decode_value(self._input) if self._input else None,
                self.spec.input_type,
                strict=False,
            )
        except Exception as exc:  # ValidationError, or a decode error / RecursionError
            raise _Fail(
                ErrorInfo(
                    "InvalidInput",
                    f"input does not match agent {self.spec.name!r}'s input type: "
                    f"{clip(exception_text(exc), 2000)}",
                    retryable=False,
                )
            ) from None
        result = await self._run_agent(value)
        if result is _DEADLINE:
            raise _Fail(self._deadline_error())
        if self._fatal is not None:
            raise self._fatal
        self._check_replayed_all()
        if self.lost or self.abandoned:
            raise LeaseLost(f"run {self.run_id!r}: not finishing, the run was given up")
        await self._finish_completed(result)

    async def _run_agent(self, value: Any) -> Any:
        """Run the agent function, bounded by the run's deadline (which survives resumes)."""
        await self._confirm_owner()  # the agent function is user code too
        if not self.deadline:
            return await self.spec.fn(RunContext(self), value)
        remaining = self.deadline - time.time()
        if remaining <= 0:
            return _DEADLINE
        scope = asyncio.timeout(remaining)
        try:
            async with scope:
                return await self.spec.fn(RunContext(self), value)
        except TimeoutError:
            if scope.expired():
                return _DEADLINE
            raise

    def _deadline_error(self) -> ErrorInfo:
        when = datetime.fromtimestamp(self.deadline, tz=UTC).isoformat(timespec="seconds")
        return ErrorInfo(
            "RunDeadlineExceeded",
            f"run {self.run_id!r} passed its deadline {when}",
            retryable=False,
        )

    async def _finish_completed(self, result: Any) -> None:
        try:
            raw = encode_value(result)
        except Exception as exc:  # TypeError, or RecursionError for a too deeply nested value
            await self._finish_failed(
                ErrorInfo(
                    "TypeError",
                    f"agent {self.spec.name!r} returned a {type_name(result)}, which "
                    f"cannot be stored ({clip(exception_text(exc), 300)})",
                    retryable=False,
                )
            )
            return
        await self._finish(
            Finished(
                status="completed",
                epoch=self.epoch,
                worker=self.worker_id,
                at=time.time(),
                result=raw,
            )
        )

    async def _finish_failed(self, error: ErrorInfo) -> None:
        await self._finish(
            Finished(
                status="failed",
                epoch=self.epoch,
                worker=self.worker_id,
                at=time.time(),
                error=error,
            )
        )

    async def _finish(self, entry: Finished) -> None:
        try:
            # A frozen worker must not end a run another worker owns by now.
            await self._confirm_owner()
            async with self._append_lock:
                seq = self._next_seq
                try:
                    await _uncancellable(self._store.finish(self.run_id, self.epoch, seq, entry))
                except _WrittenThenCancelled:
                    self._next_seq = seq + 1
                    raise
                self._next_seq = seq + 1
        except LeaseLost as exc:
            self.lost = True
            self.log.warning("run.finish_fenced", error=str(exc))
            await self._emit(self._event(EV_LEASE_LOST, data={"reason": str(exc)}))
            return
        obs.run_finished(self, entry)
        await self._emit(self._journal_event(JournalEntry(seq=seq, entry=entry)))
        self.holds_lease = False
        with contextlib.suppress(Exception):  # the lease runs out by itself otherwise
            await self._broker.leases.release_nowait(self.lease)
        self.log.info(
            "run.finished", status=entry.status, live=self.steps_live, replayed=self.steps_replayed
        )

    async def _passivate(self, exc: Passivated) -> None:
        """Give the run up while it waits: no slot, no lease, no memory until it is woken."""
        # The run's deadline must still fire while nobody hosts it: wake it by then.
        wakes = [t for t in (exc.wake_at, self.deadline) if t]
        await self._store.passivate(
            self.run_id, self.epoch, exc.waiting_for, min(wakes, default=0.0)
        )
        self.holds_lease = False
        obs.run_passivated(self)
        await self._broker.leases.release(self.lease)
        await self._emit(
            self._event(EV_PASSIVATED, data={"signal": exc.waiting_for, "wake_at": exc.wake_at})
        )
        self.log.info("run.passivated", signal=exc.waiting_for, wake_at=exc.wake_at)
        # A signal that arrived between our last look and the status change found the run
        # still running and woke nobody: wake it now (the signal side does the same check).
        if exc.waiting_for and await self._next_signal(exc.waiting_for) is not None:
            await self._broker.publish_request(
                RunRequest(
                    run_id=self.run_id, agent=self.spec.name, kind="resume", epoch=self.epoch
                ),
                msg_id=f"{self.run_id}:wake:{self.epoch}",
            )

    async def _release_for_resume(self, how: str) -> None:
        """Give the run up during a graceful shutdown so another worker resumes it at once.

        ``how`` is ``released`` (at a step boundary) or ``cancelled`` (the drain budget ended
        inside a step body, which the next owner runs again).
        """
        self.holds_lease = False
        released = await self._broker.leases.release(self.lease)
        if not released:
            self.log.warning("run.handover_skipped", reason="the lease is no longer ours")
            return
        self.handover = how
        reason = "worker shutting down"
        if how == "cancelled":
            reason += ": drain budget ended inside a step, which runs again on the next owner"
        await self._emit(self._event(EV_RELEASED, data={"reason": reason}))
        await self._fetch_closed.wait()
        await self._broker.publish_request(
            RunRequest(run_id=self.run_id, agent=self.spec.name, kind="resume", epoch=self.epoch),
            msg_id=f"{self.run_id}:resume:{self.epoch}",
        )
        self.log.info("run.handed_over", how=how, reason=reason)
