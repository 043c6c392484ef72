"""``RunActor``: one run's life on the worker that holds its lease.

The actor owns the lifecycle (load, drive the agent, finish, passivate, hand over); the
steps are the step engine's: a :class:`~stalwart.actors._execute.StepExecutor` and a
:class:`~stalwart.actors._waits.Waits` over the run's
:class:`~stalwart.actors._journal.RunJournal`, sharing one
:class:`~stalwart.actors._rules.RunState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stalwart._text import ERROR_TEXT_LIMIT, clip, exception_text, safe_text, type_name
from stalwart.actors import _telemetry as obs
from stalwart.actors._context import RunContext, _current
from stalwart.actors._conversation import Conversation, ConversationBusy, TurnBinding
from stalwart.actors._events import RunEvents
from stalwart.actors._execute import StepExecutor, error_info
from stalwart.actors._flow import run_flow
from stalwart.actors._journal import RunJournal
from stalwart.actors._owner import LeaseOwner
from stalwart.actors._rules import (
    Drained,
    RunState,
    boundary_error,
    divergence_error,
    unasked_error,
)
from stalwart.actors._view import JournalView
from stalwart.actors._waits import Passivated, Waits
from stalwart.checkpoints import (
    ErrorInfo,
    Finished,
    JournalEntry,
    JournalGap,
    Started,
    check_conversation_id,
    check_on_busy,
    decode_value,
    encode_value,
)
from stalwart.conversations import release_ended
from stalwart.errors import (
    InvalidRequestError,
    LeaseLost,
    PayloadKeyError,
    RunCancelled,
    ServerUnavailableError,
)
from stalwart.messages import (
    EV_LEASE_LOST,
    EV_PASSIVATED,
    EV_RELEASED,
    ReasonData,
    RunPassivatedData,
    data_dict,
)
from stalwart.policies import RunUsage

if TYPE_CHECKING:
    from stalwart.actors._placement import ActorDeps, Placement
    from stalwart.broker import Broker
    from stalwart.checkpoints import CheckpointStore
    from stalwart.policies import Policies

log = structlog.get_logger("stalwart.actor")

_DEADLINE = object()  # sentinel: the run's deadline passed


class _Fail(Exception):
    """Ends the run as failed with a given error (not an exception of the agent's)."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class RunActor:
    """Replays a run's journal, runs the agent from the top, and journals every new step.

    Created by the worker after it won the run's lease and claimed the epoch in Redis.
    """

    def __init__(self, placement: Placement, deps: ActorDeps) -> None:
        p = placement
        self.spec = p.spec
        self.run_id = p.run_id
        self.lease = p.lease
        self.epoch = p.epoch
        self.worker_id = deps.worker_id
        self.deadline = p.deadline
        self.trace_parent = p.trace_parent
        self._placement = p
        self._deps = deps
        self._claimed_at = p.claimed_at or time.time()
        self.log = log.bind(
            run_id=p.run_id, agent=p.spec.name, epoch=self.epoch, worker=deps.worker_id
        )
        self.state = RunState(p.run_id, self.epoch, deps.worker_id, p.spec.policies, RunUsage())
        self.state.cancel_reason = p.cancel
        self._handing_over = False
        self.handover = ""
        """How a draining worker gave the run up: ``released`` at a step boundary, or
        ``cancelled`` in a step body when the drain budget ended; empty otherwise."""
        self.holds_lease = True
        """False once the lease was given up, so the worker stops renewing it."""
        self._wake = asyncio.Event()
        self.journal = RunJournal(deps.store, self.state, p.claim_seq + 1)
        self.events = RunEvents(deps.broker, self.state, self.log, agent=p.spec.name)
        self.owner = LeaseOwner(
            deps.broker.leases, p.lease, self.state, self.log, deps.confirm_retry
        )
        self.waits = Waits(
            self.state,
            self.journal,
            self.events,
            self.owner,
            self._wake,
            broker=deps.broker,
            store=deps.store,
            passivate_after=deps.passivate_after,
        )
        self.engine = StepExecutor(
            self.state,
            self.journal,
            self.events,
            self.owner,
            deps.breakers,
            self.waits,
            self._wake,
            self.log,
            flow=run_flow(deps.flow, self),
        )
        self.turn: TurnBinding | None = None
        """This run's turn of its conversation (None: it has none, or not claimed yet)."""
        # Bound once: RunContext calls these for every step, through no extra frame.
        self.execute = self.engine.execute
        self.wait = self.waits.wait

    # -- what RunContext and the telemetry read -------------------------------------------

    @property
    def agent(self) -> str:
        """The agent's registered name."""
        return self.spec.name

    @property
    def policies(self) -> Policies:
        """The agent's failure handling."""
        return self.state.policies

    @property
    def replaying(self) -> bool:
        """True until the first step that is not in the journal."""
        return self.state.replaying

    @property
    def lost(self) -> bool:
        """The lease is gone: no further step may be journaled."""
        return self.state.lost

    @property
    def abandoned(self) -> bool:
        """The journal was unreachable: the run is given up, never failed for it."""
        return self.state.abandoned

    @property
    def draining(self) -> bool:
        """The worker is shutting down: the run stops at its next step boundary."""
        return self.state.draining

    @property
    def cancel_reason(self) -> str:
        """Why the run was cancelled (empty while it is not)."""
        return self.state.cancel_reason

    @property
    def steps_replayed(self) -> int:
        """Steps answered from the journal in this placement."""
        return self.state.steps_replayed

    @property
    def steps_live(self) -> int:
        """Steps run and journaled in this placement."""
        return self.state.steps_live

    @property
    def store(self) -> CheckpointStore:
        """The checkpoint store this run journals into."""
        return self._deps.store

    @property
    def broker(self) -> Broker:
        """The broker this run publishes through."""
        return self._deps.broker

    @property
    def conversation(self) -> Conversation | None:
        """The run's conversation once held (``ctx.conversation``), else None."""
        return self.turn.view if self.turn is not None else None

    def check_boundary(self) -> None:
        """Raise if the run must stop now (see RunContext.check_boundary)."""
        stop = boundary_error(self.state)
        if stop is not None:
            raise stop

    def mark_replayed(self, prefix: str) -> None:
        """Journaled steps under ``prefix`` count as replayed (see RunContext.mark_replayed)."""
        self.state.view.mark_replayed(prefix)

    def signal_id(self, key: str) -> str | None:
        """The id of the signal that the finished wait ``key`` took (None: none)."""
        return self.waits.signal_ids.get(key)

    async def emit_live(self, type: str, data: Any, step: str = "") -> None:
        """Publish a non-journaled event for this run (see :meth:`RunContext.emit`).

        Inside a step body it carries that step's attempt (and its key, unless ``step`` is
        given), so a stream consumer can tell a void attempt's chunks (docs/streaming.md).
        """
        info = _current.get()
        if info is not None and info.run_id == self.run_id:
            await self.events.emit_user(
                type, step=step or info.key, data=data, attempt=info.attempt
            )
            return
        await self.events.emit_user(type, step=step, data=data)

    # -- what the worker asks ---------------------------------------------------------------

    def drain(self) -> None:
        """Stop at the next step boundary (or now, if waiting out a retry backoff)."""
        self.state.draining = True
        self._wake.set()

    def hand_over(self) -> None:
        """The drain budget ended: the worker cancels this run's task, which then hands the
        run over (releases the lease and publishes the resume request) instead of leaving
        it to lease expiry and the supervisor."""
        self.state.draining = True
        self._handing_over = True

    def stop_lost(self) -> None:
        """The lease is gone: no further step may be journaled."""
        self.state.lost = True
        self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the run to an end: completed, failed, cancelled, drained, or lease lost."""
        with obs.run_scope(self):
            await self._run()

    async def _run(self) -> None:
        broker = self._deps.broker
        try:
            await self._drive()
        except _Fail as exc:
            await self._finish_failed(exc.info)
        except LeaseLost as exc:
            self.state.lost = True
            self.log.warning("run.lease_lost", error=str(exc))
            self.events.emit(EV_LEASE_LOST, data=data_dict(ReasonData(reason=str(exc))))
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
                await broker.leases.release(self.lease)
        except asyncio.CancelledError:
            if self.state.lost:
                self.log.warning("run.stopped_lease_lost")
                return
            if self._handing_over and self.holds_lease:
                # Our own cancel at the end of the drain budget: hand over now. The cancel
                # request was delivered, so these awaits run normally.
                await self._release_for_resume("cancelled")
                return
            raise
        except PayloadKeyError as exc:
            await self._give_up_for_key(exc)
        except RunCancelled as exc:
            reason = clip(safe_text(exc.reason), ERROR_TEXT_LIMIT)
            await self._finish(
                self._finished("cancelled", ErrorInfo("RunCancelled", reason, retryable=False))
            )
        except Exception as exc:
            await self._finish_failed(error_info(exc, False))
        finally:
            broker.events.forget(self.run_id)

    async def _load(self) -> None:
        state = self.state
        # An earlier epoch may have been streaming the step this one runs first: reset it.
        state.resumed = self._placement.claim_seq > 1
        if self._placement.claim_seq == 1:
            # A first placement: the journal holds just the Started entry the claim wrote,
            # and no journaled event can be in the stream yet. Two round trips saved.
            started = Started(epoch=self.epoch, worker=self.worker_id, at=self._claimed_at)
            entries = [JournalEntry(seq=1, entry=started)]
            obs.run_loaded(self, entries)
            self.events.journaled(entries[0])
            return
        entries = await self.journal.read()
        obs.run_loaded(self, entries)
        state.view = JournalView.of(entries)
        try:
            published = await self._deps.broker.events.last_published_jseq(self.run_id)
        except Exception as exc:  # events are best effort: republish (dropped as duplicates)
            self.log.warning("event.last_published_unknown", error=safe_text(exc))
            published = 0
        for je in entries:
            if je.seq > published:
                self.events.journaled(je)

    async def _drive(self) -> None:
        try:
            await self._drive_run()
        except JournalGap as exc:
            await self._replace_after_gap(exc)

    async def _drive_run(self) -> None:
        state = self.state
        await self._load()
        if state.cancel_reason:
            raise RunCancelled(self.run_id, state.cancel_reason)
        raw_input = self._placement.input
        try:
            value = msgspec.convert(
                decode_value(raw_input) if raw_input else None,
                self.spec.input_type,
                strict=False,
            )
        except PayloadKeyError:
            raise  # encrypted with a key this worker lacks: not the input's fault
        except Exception as exc:  # ValidationError, or a decode error / RecursionError
            raise _Fail(
                ErrorInfo(
                    "InvalidInput",
                    f"input does not match agent {self.spec.name!r}'s input type: "
                    f"{clip(exception_text(exc), 2000)}",
                    retryable=False,
                )
            ) from None
        if self.engine.flow is not None:
            self.engine.flow.input = value
        result = await self._run_agent(value)
        if result is _DEADLINE:
            raise _Fail(self._deadline_error())
        if state.fatal is not None:
            raise state.fatal
        unasked = unasked_error(state)
        if unasked is not None:
            raise divergence_error(state, unasked)
        if state.lost or state.abandoned:
            raise LeaseLost(f"run {self.run_id!r}: not finishing, the run was given up")
        await self._finish_completed(result)

    async def _turn(self, value: Any) -> Any:
        """The agent function, after the run's conversation is held (within the run's
        deadline: a turn waiting for its conversation fails at the deadline too)."""
        await self._claim_conversation()
        return await self.spec.fn(RunContext(self), value)

    async def _claim_conversation(self) -> None:
        """Hold the run's conversation (if it has one) before the agent runs."""
        p = self._placement
        conv, on_busy, created = p.conversation, p.on_busy, p.submitted_at
        if p.claim_seq != 1:  # a resume request carries none: the record knows
            conv, on_busy, created = await self.store.run_conversation(self.run_id)
        elif conv:
            await self.store.set_conversation(self.run_id, conv, on_busy)
        if not conv:
            return
        try:
            check_conversation_id(conv)
            check_on_busy(on_busy)
        except InvalidRequestError as exc:
            raise _Fail(ErrorInfo("InvalidRequest", str(exc), retryable=False)) from None
        self.turn = TurnBinding(
            self,
            conv,
            on_busy,
            created or self._claimed_at,
            store=self.store,
            broker=self.broker,
        )
        try:
            await self.turn.claim(self._deps.conversation_recheck)
        except ConversationBusy as exc:
            raise _Fail(exc.info) from None

    async def _release_conversation(self, status: str) -> None:
        """The run ended: hand its conversation on (best effort: a waiting run's re-check
        repairs a hand-off that fails here)."""
        p = self._placement
        try:
            if self.turn is not None:
                await self.turn.release(status)
            elif p.conversation or p.claim_seq != 1:
                await release_ended(self.store, self.broker, self.run_id)
        except Exception as exc:
            self.log.warning("conversation.release_failed", error=safe_text(exc))

    async def _run_agent(self, value: Any) -> Any:
        """Run the agent function, bounded by the run's deadline (which survives resumes)."""
        await self.owner.confirm()  # the agent function is user code too
        if not self.deadline:
            return await self._turn(value)
        remaining = self.deadline - time.time()
        if remaining <= 0:
            return _DEADLINE
        scope = asyncio.timeout(remaining)
        try:
            async with scope:
                return await self._turn(value)
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

    # -- ends -------------------------------------------------------------------------------

    def _finished(self, status: Literal["failed", "cancelled"], error: ErrorInfo) -> Finished:
        return Finished(
            status=status, epoch=self.epoch, worker=self.worker_id, at=time.time(), error=error
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
        await self._finish(self._finished("failed", error))

    async def _finish(self, entry: Finished) -> None:
        broker = self._deps.broker
        try:
            # A frozen worker must not end a run another worker owns by now.
            await self.owner.confirm()
            je = await self.journal.finish(entry)
        except JournalGap as exc:
            await self._replace_after_gap(exc)
            return
        except LeaseLost as exc:
            self.state.lost = True
            self.log.warning("run.finish_fenced", error=str(exc))
            self.events.emit(EV_LEASE_LOST, data=data_dict(ReasonData(reason=str(exc))))
            return
        obs.run_finished(self, entry)
        self.events.journaled(je)
        self.holds_lease = False
        with contextlib.suppress(Exception):  # the lease runs out by itself otherwise
            await broker.leases.release_nowait(self.lease)
        await self._release_conversation(entry.status)
        self.log.info(
            "run.finished", status=entry.status, live=self.steps_live, replayed=self.steps_replayed
        )

    async def _replace_after_gap(self, exc: JournalGap) -> None:
        """The journal lost entries this owner had written (a Redis failover without WAIT):
        going on would journal above a hole. Give the run up and ask for it to be placed
        again at once; the next owner replays what the journal really holds (steps whose
        entries were lost run again)."""
        broker = self._deps.broker
        self.holds_lease = False
        self.log.error("run.journal_gap", error=str(exc))
        with contextlib.suppress(Exception):
            await broker.leases.release(self.lease)
        with contextlib.suppress(Exception):  # else the supervisor re-places it
            await broker.request_resume(self.run_id, self.spec.name, self.epoch, "resume")

    async def _passivate(self, exc: Passivated) -> None:
        """Give the run up while it waits: no slot, no lease, no memory until it is woken."""
        broker = self._deps.broker
        # The run's deadline must still fire while nobody hosts it: wake it by then.
        wakes = [t for t in (exc.wake_at, self.deadline) if t]
        await self._deps.store.passivate(
            self.run_id, self.epoch, exc.waiting_for, min(wakes, default=0.0)
        )
        self.holds_lease = False
        obs.run_passivated(self)
        await broker.leases.release(self.lease)
        self.events.emit(
            EV_PASSIVATED,
            data=data_dict(RunPassivatedData(signal=exc.waiting_for, wake_at=exc.wake_at)),
        )
        self.log.info("run.passivated", signal=exc.waiting_for, wake_at=exc.wake_at)
        # A signal that arrived between our last look and the status change found the run
        # still running and woke nobody: wake it now (the signal side does the same check).
        if exc.waiting_for and await self.waits.next_signal(exc.waiting_for) is not None:
            await broker.request_resume(
                self.run_id, self.spec.name, self.epoch, "wake", lane=self._placement.lane
            )

    async def _give_up_for_key(self, exc: PayloadKeyError) -> None:
        """A payload of the run is encrypted with a key this worker does not have.

        Failing the run would throw away a journal that a worker with the key can continue,
        so the run is left as it is: the lease is no longer renewed (not released, so the
        run is placed again only after a lease TTL, which paces a worker that keeps taking
        it back), the supervisor re-places it, and ``max_placements`` ends it if no worker
        with the key ever comes.
        """
        self.holds_lease = False
        reason = f"payload key unavailable on this worker: {safe_text(exc)}"
        self.log.error("run.payload_key_missing", key_id=exc.key_id, error=safe_text(exc))
        self.events.emit(EV_RELEASED, data=data_dict(ReasonData(reason=reason)))

    async def _release_for_resume(self, how: str) -> None:
        """Give the run up during a graceful shutdown so another worker resumes it at once.

        ``how`` is ``released`` (at a step boundary) or ``cancelled`` (the drain budget ended
        inside a step body, which the next owner runs again).
        """
        broker = self._deps.broker
        self.holds_lease = False
        released = await broker.leases.release(self.lease)
        if not released:
            self.log.warning("run.handover_skipped", reason="the lease is no longer ours")
            return
        self.handover = how
        reason = "worker shutting down"
        if how == "cancelled":
            reason += ": drain budget ended inside a step, which runs again on the next owner"
        self.events.emit(EV_RELEASED, data=data_dict(ReasonData(reason=reason)))
        await self._deps.fetch_closed.wait()
        await broker.request_resume(
            self.run_id, self.spec.name, self.epoch, "resume", lane=self._placement.lane
        )
        self.log.info("run.handed_over", how=how, reason=reason)
