"""``RunActor``: one run's life on the worker that holds its lease."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from stalwart.actors._context import RunContext, StepInfo, StepSpec, _current
from stalwart.checkpoints import (
    ErrorInfo,
    Finished,
    JournalEntry,
    Started,
    StepDone,
    StepError,
    decode_value,
    encode_value,
)
from stalwart.errors import (
    LeaseLost,
    NonDeterminismError,
    RunCancelled,
    ServerUnavailableError,
    StepFailed,
)
from stalwart.messages import (
    EV_CANCELLED,
    EV_COMPLETED,
    EV_FAILED,
    EV_LEASE_LOST,
    EV_RELEASED,
    EV_RESUMED,
    EV_STARTED,
    EV_STEP_COMPLETED,
    EV_STEP_FAILED,
    EV_STEP_STARTED,
    RunEvent,
    RunRequest,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stalwart.actors._app import AgentSpec
    from stalwart.broker import Broker, Lease
    from stalwart.checkpoints import CheckpointStore, Entry

log = structlog.get_logger("stalwart.actor")

# Results up to this size travel in the run.completed event; larger ones only in the record,
# so an event never exceeds the NATS payload limit.
_MAX_EVENT_RESULT = 64 * 1024


class Drained(Exception):
    """Raised at a step boundary when the worker is shutting down and gives the run up."""


def _error_info(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, StepFailed):
        return ErrorInfo(exc.error_type, exc.message)
    return ErrorInfo(type(exc).__name__, str(exc) or repr(exc))


class RunActor:
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
        input: bytes,
        cancel: str,
        fetch_closed: asyncio.Event,
        store: CheckpointStore,
        broker: Broker,
        worker_id: str,
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
        self._fetch_closed = fetch_closed
        self.cancel_reason = cancel
        self.draining = False
        self.lost = False
        self.abandoned = False
        """Set when the journal is unreachable: the run is given up, never failed for it."""
        self.holds_lease = True
        """False once the lease was given up, so the worker stops renewing it."""
        self.replaying = True
        self._journal: dict[str, StepDone | StepError] = {}
        self._unreplayed: set[str] = set()
        self._next_seq = claim_seq + 1
        self._append_lock = asyncio.Lock()
        self.steps_replayed = 0
        self.steps_live = 0
        self.first_live_step_at: float | None = None
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
        e = je.entry
        if isinstance(e, Started):
            return RunEvent(
                type=EV_RESUMED if e.resumed else EV_STARTED,
                run_id=self.run_id,
                at=e.at,
                worker=e.worker,
                epoch=e.epoch,
                jseq=je.seq,
                data={"journaled_steps": len(self._journal)} if e.resumed else None,
            )
        if isinstance(e, StepDone | StepError):
            data: dict[str, Any] = {"kind": e.kind, "name": e.name, "duration": e.duration}
            if isinstance(e, StepError):
                data["error"] = {"type": e.error.type, "message": e.error.message}
            return RunEvent(
                type=EV_STEP_COMPLETED if isinstance(e, StepDone) else EV_STEP_FAILED,
                run_id=self.run_id,
                at=e.at + e.duration,
                worker=e.worker,
                epoch=e.epoch,
                jseq=je.seq,
                step=e.key,
                data=data,
            )
        status_event = {"completed": EV_COMPLETED, "failed": EV_FAILED}.get(e.status, EV_CANCELLED)
        fin: dict[str, Any] = {}
        if len(e.result) > _MAX_EVENT_RESULT:
            fin["result_bytes"] = len(e.result)  # too big for an event: read the record
        elif len(e.result):
            fin["result"] = decode_value(e.result)
        if e.error is not None:
            fin["error"] = {"type": e.error.type, "message": e.error.message}
        return RunEvent(
            type=status_event,
            run_id=self.run_id,
            at=e.at,
            worker=e.worker,
            epoch=e.epoch,
            jseq=je.seq,
            data=fin,
        )

    # -- journal ------------------------------------------------------------------------

    async def _append(self, entry: Entry) -> JournalEntry:
        """Fenced append at the next position; raises LeaseLost if a newer epoch owns the run."""
        if self.lost:
            raise LeaseLost(f"run {self.run_id!r}: epoch {self.epoch} lost its lease")
        async with self._append_lock:
            seq = self._next_seq
            try:
                cancel = await self._store.append(self.run_id, self.epoch, seq, entry)
            except LeaseLost:
                self.lost = True
                raise
            except ServerUnavailableError:
                self.abandoned = True
                raise
            self._next_seq = seq + 1
        if cancel and not self.cancel_reason:
            self.cancel_reason = cancel
        return JournalEntry(seq=seq, entry=entry)

    async def _load(self) -> None:
        entries = await self._store.read_journal(self.run_id)
        for je in entries:
            if isinstance(je.entry, StepDone | StepError):
                self._journal[je.entry.key] = je.entry
        if entries:
            self._next_seq = entries[-1].seq + 1
        self._unreplayed = set(self._journal)
        published = await self._broker.events.last_published_jseq(self.run_id)
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
        if self.draining:
            raise Drained(self.run_id)

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
        return decode_value(entry.result, spec.result_type)

    def _check_replayed_all(self) -> None:
        """A journaled step the code never asked for again means the code changed."""
        if self._unreplayed:
            missing = ", ".join(sorted(self._unreplayed)[:5])
            raise NonDeterminismError(
                f"run {self.run_id!r}: journaled step(s) {missing} were not asked for on "
                "replay; the agent code changed since this run started (a step was renamed "
                "or removed)"
            )

    async def execute(self, spec: StepSpec, run: Callable[[], Awaitable[Any]]) -> Any:
        """Return the journaled outcome of step ``spec``, or run it live and journal it."""
        recorded = self._journal.get(spec.key)
        if recorded is not None:
            self._unreplayed.discard(spec.key)
            return self._replay(spec, recorded)
        self._check_boundary()
        if self.replaying:
            self.replaying = False
            self.first_live_step_at = time.monotonic()
        await self._emit(self._event(EV_STEP_STARTED, step=spec.key, data={"kind": spec.kind}))
        token = _current.set(StepInfo(self.run_id, spec.key, attempt=1))
        started = time.time()
        t0 = time.perf_counter()
        try:
            value = await run()
        except (LeaseLost, Drained, asyncio.CancelledError):
            raise
        except Exception as exc:
            await self._record_error(spec, exc, started, time.perf_counter() - t0)
            raise StepFailed(spec.key, type(exc).__name__, str(exc) or repr(exc)) from exc
        finally:
            _current.reset(token)
        duration = time.perf_counter() - t0
        try:
            raw = encode_value(value)
        except TypeError as exc:
            err = TypeError(
                f"step {spec.key!r} returned a {type(value).__qualname__}, which cannot be "
                f"journaled ({exc}); return plain data, a msgspec Struct or a dataclass"
            )
            await self._record_error(spec, err, started, duration)
            raise StepFailed(spec.key, "TypeError", str(err)) from exc
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
        )
        je = await self._append(entry)
        self._journal[spec.key] = entry
        self.steps_live += 1
        await self._emit(self._journal_event(je))
        # Decode what was journaled so the live path returns exactly what a replay would.
        return decode_value(raw, spec.result_type)

    async def _record_error(
        self, spec: StepSpec, exc: BaseException, started: float, duration: float
    ) -> None:
        entry = StepError(
            key=spec.key,
            kind=spec.kind,
            name=spec.name,
            fp=spec.fp,
            error=_error_info(exc),
            epoch=self.epoch,
            worker=self.worker_id,
            at=started,
            duration=duration,
        )
        je = await self._append(entry)
        self._journal[spec.key] = entry
        await self._emit(self._journal_event(je))

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the run to an end: completed, failed, cancelled, drained, or lease lost."""
        try:
            await self._load()
            if self.cancel_reason:
                raise RunCancelled(self.run_id, self.cancel_reason)
            try:
                value = msgspec.convert(
                    decode_value(self._input) if self._input else None,
                    self.spec.input_type,
                    strict=False,
                )
            except msgspec.ValidationError as exc:
                await self._finish_failed(
                    ErrorInfo(
                        "InvalidInput",
                        f"input does not match agent {self.spec.name!r}'s input type: {exc}",
                        retryable=False,
                    )
                )
                return
            result = await self.spec.fn(RunContext(self), value)
            self._check_replayed_all()
            if self.lost or self.abandoned:
                raise LeaseLost(f"run {self.run_id!r}: not finishing, the run was given up")
            await self._finish_completed(result)
        except LeaseLost as exc:
            self.lost = True
            self.log.warning("run.lease_lost", error=str(exc))
            await self._emit(self._event(EV_LEASE_LOST, data={"reason": str(exc)}))
        except Drained:
            await self._release_for_resume()
        except ServerUnavailableError as exc:
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
            raise
        except RunCancelled as exc:
            await self._finish(
                Finished(
                    status="cancelled",
                    epoch=self.epoch,
                    worker=self.worker_id,
                    at=time.time(),
                    error=ErrorInfo("RunCancelled", exc.reason, retryable=False),
                )
            )
        except Exception as exc:
            await self._finish_failed(_error_info(exc))
        finally:
            self._broker.events.forget(self.run_id)

    async def _finish_completed(self, result: Any) -> None:
        try:
            raw = encode_value(result)
        except TypeError as exc:
            await self._finish_failed(
                ErrorInfo(
                    "TypeError",
                    f"agent {self.spec.name!r} returned a {type(result).__qualname__}, which "
                    f"cannot be stored ({exc})",
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
            async with self._append_lock:
                seq = self._next_seq
                await self._store.finish(self.run_id, self.epoch, seq, entry)
                self._next_seq = seq + 1
        except LeaseLost as exc:
            self.lost = True
            self.log.warning("run.finish_fenced", error=str(exc))
            await self._emit(self._event(EV_LEASE_LOST, data={"reason": str(exc)}))
            return
        await self._emit(self._journal_event(JournalEntry(seq=seq, entry=entry)))
        self.holds_lease = False
        await self._broker.leases.release(self.lease)
        self.log.info(
            "run.finished", status=entry.status, live=self.steps_live, replayed=self.steps_replayed
        )

    async def _release_for_resume(self) -> None:
        """Give the run up during a graceful shutdown so another worker resumes it at once."""
        self.holds_lease = False
        released = await self._broker.leases.release(self.lease)
        if not released:
            return
        await self._emit(self._event(EV_RELEASED, data={"reason": "worker shutting down"}))
        await self._fetch_closed.wait()
        await self._broker.publish_request(
            RunRequest(run_id=self.run_id, agent=self.spec.name, kind="resume", epoch=self.epoch),
            msg_id=f"{self.run_id}:resume:{self.epoch}",
        )
        self.log.info("run.released")
