"""The supervisor: finds runs whose owner died and has them resumed elsewhere.

Several can run; one leads (a lease in the same KV bucket as run leases), the others
stand by and take over within a lease TTL when the leader dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import structlog
from nats.js.errors import NotFoundError

from stalwart._services import ServiceDeps, start_services, stop_services
from stalwart._tasks import cancel_and_wait
from stalwart.broker import Broker, LeaseManager
from stalwart.checkpoints import CheckpointStore
from stalwart.conversations import release_ended
from stalwart.messages import (
    EV_FAILED,
    EV_STUCK,
    ErrorData,
    RunEndedData,
    RunEvent,
    RunStuckData,
    data_dict,
)
from stalwart.supervisor import _telemetry as obs
from stalwart.supervisor._advisories import Refused, verify_advisory
from stalwart.supervisor._liveness import Liveness
from stalwart.supervisor._pending import pending_by_lane
from stalwart.supervisor._unserved import reject_unserved

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from stalwart._services import Service
    from stalwart.broker import Lease
    from stalwart.checkpoints import RunRecord
    from stalwart.config import Settings

log = structlog.get_logger("stalwart.supervisor")


Action = Literal["none", "forget", "replace", "stuck", "requeue", "rewake"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do about one run: nothing, forget it (it ended), re-place it, flag it stuck,
    publish its request again if it was lost (``requeue``), or its timer's wake-up
    (``rewake``)."""

    action: Action
    epoch: int = 0


def judge(
    record: RunRecord | None,
    lease_holder: str | None,
    *,
    now: float | None = None,
    stuck_after: float = 0.0,
    requeue_after: float = 0.0,
) -> Verdict:
    """Decide about one run from its record and its lease holder (None: no lease).

    Pure, so the rule is testable without servers. Runs still ``accepted`` are left to
    JetStream (their request is unacked and will be delivered again) until they are older
    than ``requeue_after`` (0: for ever): then ``requeue``, and the caller publishes their
    request again if it is surely gone from the runs stream. ``waiting`` runs are
    passivated on purpose and woken by a signal or their timer; one still waiting
    ``requeue_after`` past its timer lost its wake-up request (``rewake``).
    """
    if record is None or record.terminal:
        return Verdict("forget")
    now = time.time() if now is None else now
    if record.status == "accepted":
        if requeue_after > 0 and now - record.created_at > requeue_after:
            return Verdict("requeue", record.epoch)
        return Verdict("none")
    if record.status == "waiting":
        overdue = record.wake_at > 0 and now - record.wake_at > requeue_after
        return Verdict("rewake", record.epoch) if requeue_after > 0 and overdue else Verdict("none")
    if record.status != "running":
        return Verdict("none")
    if lease_holder is None:
        return Verdict("replace", record.epoch)
    if stuck_after > 0 and now - record.updated_at > stuck_after:
        return Verdict("stuck", record.epoch)
    return Verdict("none")


class Supervisor:
    """Watches lease expiry and periodically reconciles running runs against their leases.

    Watching gives fast detection; the periodic scan catches what no watch saw (runs that
    expired while no supervisor was up). Re-placement publishes a ``resume`` request
    (:meth:`Broker.request_resume`, deduplicated per lost epoch), so any number of
    supervisors, and a draining worker that released the run itself, publish it once.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        supervisor_id: str = "",
        services: Sequence[Callable[[ServiceDeps], Awaitable[Service]]] = (),
    ) -> None:
        """``services``: started on the supervisor's connections (the ``stalwart
        supervisor`` command passes the control API, ``stalwart.api``)."""
        self.settings = settings
        self.supervisor_id = (
            supervisor_id
            or f"supervisor-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        )
        self.broker: Broker | None = None
        self.store: CheckpointStore | None = None
        self.replaced = 0
        self.dead_lettered = 0
        self.advisories_ignored = 0
        """Max-deliveries advisories that did not check out (forged or stale)."""
        self.unserved_rejected = 0
        """Requests rejected because no consumer served their agent (``unserved_after``)."""
        self.pending_requests: dict[tuple[str, str], int] = {}
        """Run requests waiting per (agent, lane) as of the last pass led here (see
        :mod:`._pending`); lane "" is the default lane."""
        self.requeued = 0
        """Requests of ``accepted`` runs published again because theirs was lost."""
        self._runs_info: tuple[float, tuple[float, dict[str, int]]] | None = None
        self.is_leader = False
        self.liveness: Liveness | None = None
        """Fast failure detection while leading (``liveness_interval`` > 0), else None."""
        self._lease: Lease | None = None
        self._election: LeaseManager | None = None
        self._reported_stuck: set[tuple[str, int]] = set()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._service_factories = services
        self._services: list[Service] = []
        self.log = log.bind(supervisor=self.supervisor_id)

    async def start(self) -> None:
        """Connect to both servers."""
        assert self.settings.nats_url and self.settings.redis_url, "resolve server URLs first"
        Broker.check_url(self.settings.nats_url)
        self.store = await CheckpointStore.connect(
            self.settings.redis_url,
            self.settings.namespace,
            connect_timeout=self.settings.connect_timeout,
            settings=self.settings,
        )
        self.broker = await Broker.connect(self.settings, name=f"stalwart {self.supervisor_id}")
        self._election = LeaseManager(
            self.broker.js,
            self.broker.names,
            self.settings.lease_ttl,
            self.supervisor_id,
            prefix="supervisor.",
        )
        deps = ServiceDeps(self.broker, self.store, self.settings, self.log)
        self._services = await start_services(self._service_factories, deps)
        obs.watch_supervisor(self)

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Supervise until :meth:`stop`: lead when elected, stand by otherwise."""
        if self.broker is None:
            await self.start()
        work = asyncio.create_task(self._supervise())
        stopped = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # A pass in flight is cancelled, not waited for, and every step of the shutdown
            # is bounded: a slow or silent server must not keep a stopping supervisor alive.
            await cancel_and_wait([work, stopped], _STOP_TIMEOUT)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._resign(), _STOP_TIMEOUT)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.close(), _STOP_TIMEOUT)
        if work.done() and not work.cancelled():
            work.result()  # an error that ended supervising is the caller's to see

    async def _supervise(self) -> None:
        leading: list[asyncio.Task[None]] = []
        tick = min(self.settings.reconcile_interval, self.settings.lease_ttl / 3)
        try:
            while not self._stopping.is_set():
                try:
                    await self._elect()
                    if self.is_leader and not leading:
                        leading = [
                            asyncio.create_task(self._watch()),
                            asyncio.create_task(self._dead_letters()),
                        ]
                        if self.settings.liveness_interval > 0:
                            self.liveness = Liveness(self, self.settings.liveness_interval)
                            leading.append(asyncio.create_task(self.liveness.run()))
                    elif not self.is_leader and leading:
                        await cancel_and_wait(leading)
                        leading = []
                    if self.is_leader:
                        await self._maybe_reconcile()
                except Exception as exc:  # keep supervising through server restarts
                    self.log.warning("supervise.failed", error=repr(exc))
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), tick)
        finally:
            await cancel_and_wait(leading)

    _last_reconcile = 0.0

    async def _maybe_reconcile(self) -> None:
        if time.monotonic() - self._last_reconcile >= self.settings.reconcile_interval:
            self._last_reconcile = time.monotonic()
            # Independent: a pass that fails (a resume the full runs stream refuses) must
            # not keep unserved requests, which take room in that stream, from going.
            for step in (self.reconcile, self.reject_unserved, self.read_pending):
                try:
                    await step()
                except Exception as exc:
                    self.log.warning("supervise.step_failed", step=step.__name__, error=repr(exc))

    async def reject_unserved(self) -> int:
        """Reject requests nothing consumes after ``unserved_after`` (see :mod:`._unserved`)."""
        assert self.store is not None and self.broker is not None
        count = await reject_unserved(self.broker, self.store, self.settings.unserved_after)
        self.unserved_rejected += count
        return count

    async def read_pending(self) -> dict[tuple[str, str], int]:
        """Read the run requests waiting per (agent, lane) (the ``stalwart.requests.pending``
        gauge)."""
        assert self.broker is not None
        self.pending_requests = await pending_by_lane(self.broker)
        return self.pending_requests

    async def _elect(self) -> None:
        assert self._election is not None
        if self._lease is None:
            self._lease = await self._election.acquire("leader")
            if self._lease is not None:
                self.is_leader = True
                self._last_reconcile = 0.0
                self.log.info("supervisor.leading")
            return
        if await self._election.renew([self._lease]):
            self.log.warning("supervisor.lost_leadership")
            self._lease = None
            self.is_leader = False

    async def _resign(self) -> None:
        if self._lease is not None and self._election is not None:
            with contextlib.suppress(Exception):
                await self._election.release(self._lease)
        self._lease = None
        self.is_leader = False

    async def close(self) -> None:
        """Close both connections."""
        await stop_services(self._services)
        self._services = []
        if self.broker is not None:
            await self.broker.close()
        if self.store is not None:
            await self.store.close()

    # -- detection ------------------------------------------------------------------------

    async def _watch(self) -> None:
        assert self.broker is not None
        while True:
            try:
                kv = await self.broker.js.key_value(self.broker.names.lease_bucket)
                watcher = await kv.watch("run.>", include_history=False)
                async for entry in watcher:
                    if entry is None or entry.operation not in ("PURGE", "DEL"):
                        continue
                    await self.check(entry.key.removeprefix("run."))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("watch.failed", error=repr(exc))
                await asyncio.sleep(1.0)

    async def reconcile(self) -> int:
        """Check every run that has not ended, and fire due timers; return runs re-placed."""
        assert self.store is not None
        count = 0
        run_ids = await self.store.active_runs()
        obs.supervisor_pass(self, run_ids)
        for run_id in run_ids:
            try:
                if await self.check(run_id):
                    count += 1
            except Exception as exc:  # one bad run (corrupt record, refused publish) must
                # not leave every run after it in the pass unsupervised
                self.log.warning("reconcile.run_failed", run_id=run_id, error=repr(exc))
        return count + await self.fire_timers()

    async def check(self, run_id: str) -> bool:
        """Re-place ``run_id`` if it is running without an owner; True when it was."""
        assert self.store is not None and self.broker is not None
        record = await self.store.get_run(run_id)
        obs.run_seen(self, run_id, record)
        holder = None
        if record is not None and record.status == "running":
            holder = (await self.broker.leases.state(run_id)).holder
        verdict = judge(
            record,
            holder,
            stuck_after=self.settings.stuck_after,
            requeue_after=self.settings.requeue_after,
        )
        if verdict.action == "requeue" and record is not None:
            return await self._requeue(record)
        if verdict.action == "rewake" and record is not None:
            # Same message id as the timer's own wake-up: dropped while that one is still
            # in the stream's duplicate window, published when it was lost with its stream.
            fresh = await self.broker.request_resume(
                run_id, record.agent, record.epoch, "timer", lane=record.route_lane
            )
            if fresh:
                self.requeued += 1
                self.log.warning("run.rewoken", run_id=run_id, wake_at=record.wake_at)
            return fresh
        if verdict.action == "forget":
            await self.store.mark_inactive(run_id)
            return False
        if verdict.action == "stuck" and record is not None:
            await self._stuck(record)
            return False
        if verdict.action != "replace" or record is None:
            return False
        subject = self.broker.names.runs_subject(record.agent, record.route_lane)
        with obs.resume_span(record, subject, verdict.epoch):
            fresh = await self.broker.request_resume(
                run_id, record.agent, verdict.epoch, "resume", lane=record.route_lane
            )
        if fresh:
            obs.failover(record.agent)
            self.replaced += 1
            self.log.info(
                "run.replaced", run_id=run_id, lost_epoch=verdict.epoch, owner=record.worker
            )
        return fresh

    async def _requeue(self, record: RunRecord) -> bool:
        """Publish an ``accepted`` run's request again if it is surely gone; True if it was.

        Gone: the runs stream was created after the run (its request went into another
        stream: a new NATS, a recreated stream), or the stream holds no request at all for
        the run's agent (purged, or never published). A run whose agent has requests queued
        is left alone (its own may be among them), unless the stream is younger than it.
        The request is a resume at the record's epoch (0: never placed), so repeated passes
        and several supervisors publish it once per duplicate window; a copy that meets the
        run placed already is dropped by the worker (lease held, or a newer epoch).
        """
        assert self.broker is not None
        runs = await self._runs_stream()
        if runs is None:
            return False
        created, queued = runs
        subject = self.broker.names.runs_subject(record.agent, record.route_lane)
        younger = created > record.created_at
        if not younger and queued.get(subject, 0) > 0:
            return False
        fresh = await self.broker.request_resume(
            record.run_id, record.agent, record.epoch, "resume", lane=record.route_lane
        )
        if fresh:
            self.requeued += 1
            self.log.warning(
                "run.requeued",
                run_id=record.run_id,
                agent=record.agent,
                accepted_for=round(time.time() - record.created_at, 3),
                reason="runs stream younger than the run" if younger else "no request queued",
            )
        return fresh

    async def _runs_stream(self) -> tuple[float, dict[str, int]] | None:
        """The runs stream's creation time and requests per subject (None: no stream).

        Read at most once a second: one pass asks once however many runs wait.
        """
        assert self.broker is not None
        now = time.monotonic()
        if self._runs_info is not None and now - self._runs_info[0] < 1.0:
            return self._runs_info[1]
        names = self.broker.names
        try:
            info = await self.broker.js.stream_info(
                names.runs_stream, subjects_filter=names.runs_wildcard
            )
        except NotFoundError:
            return None
        created = info.created.timestamp() if info.created is not None else 0.0
        found = (created, dict(info.state.subjects or {}))
        self._runs_info = (now, found)
        return found

    async def _stuck(self, record: RunRecord) -> None:
        assert self.broker is not None
        key = (record.run_id, record.epoch)
        if key in self._reported_stuck:
            return
        self._reported_stuck.add(key)
        idle = time.time() - record.updated_at
        action = self.settings.stuck_action
        self.log.warning(
            "run.stuck",
            run_id=record.run_id,
            owner=record.worker,
            idle=round(idle, 1),
            action=action,
        )
        await self.broker.events.publish(
            RunEvent(
                type=EV_STUCK,
                run_id=record.run_id,
                at=time.time(),
                worker=record.worker,
                epoch=record.epoch,
                agent=record.agent,
                data=data_dict(RunStuckData(idle_seconds=round(idle, 3), action=action)),
            ),
            acked=True,
        )
        if action == "replace":
            # The owner's next renewal fails and it stops; the next pass re-places the run.
            await self.broker.leases.revoke(record.run_id)

    async def fire_timers(self) -> int:
        """Wake passivated runs whose durable sleep or wait timeout is due."""
        assert self.store is not None and self.broker is not None
        woken = 0
        for run_id in await self.store.due_timers(time.time()):
            try:
                record = await self.store.get_run(run_id)
            except Exception as exc:  # a corrupt record: the other timers still fire
                self.log.warning("timer.run_failed", run_id=run_id, error=repr(exc))
                continue
            if record is not None and record.status == "waiting":
                await self.broker.request_resume(
                    run_id, record.agent, record.epoch, "timer", lane=record.route_lane
                )
                woken += 1
            await self.store.remove_timer(run_id)
        return woken

    # -- dead letters -----------------------------------------------------------------------

    async def _dead_letters(self) -> None:
        """Take requests that hit max_deliver out of the work queue and fail their runs.

        A work-queue stream keeps such a message forever otherwise; JetStream announces it
        with a max-deliveries advisory, which is where we pick it up.
        """
        assert self.broker is not None
        subject = self.broker.names.max_deliveries_advisories
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def on_advisory(msg: Any) -> None:
            await queue.put(msg)

        sub = await self.broker.nc.subscribe(subject, cb=on_advisory)
        try:
            while True:
                msg = await queue.get()
                try:
                    advisory = json.loads(msg.data)
                except ValueError:
                    advisory = None  # refused by dead_letter like any other bad advisory
                try:
                    await self.dead_letter(advisory)
                except Exception as exc:
                    self.log.warning("dead_letter.failed", error=repr(exc))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def dead_letter(self, advisory: Any) -> bool:
        """Handle one max-deliveries advisory; True when it dead-lettered a request.

        The advisory is only a hint: it is checked against the stream and the consumer
        first (see :func:`verify_advisory`), and anything that does not hold is logged
        and ignored, so a forged advisory deletes nothing.
        """
        assert self.broker is not None and self.store is not None
        try:
            found = await verify_advisory(self.broker, advisory)
        except Refused as exc:
            self.advisories_ignored += 1
            self.log.warning("dead_letter.advisory_ignored", reason=str(exc))
            return False
        req, seq, deliveries = found.request, found.seq, found.deliveries
        reason = f"request not placed after {deliveries} deliveries (max_deliver); dead-lettered"
        try:
            await self.broker.drop_request(seq)
        except Exception:
            return False  # gone meanwhile (placed at the last moment, or another supervisor)
        if not req.run_id:
            self.log.warning("dead_letter.undecodable", stream_seq=seq)
            return True
        if await self.store.dead_letter(req.run_id, req.agent, reason):
            obs.dead_lettered(req.agent)
            self.dead_lettered += 1
            self.log.warning("run.dead_lettered", run_id=req.run_id, deliveries=deliveries)
            with contextlib.suppress(Exception):  # else a waiting run's re-check repairs it
                await release_ended(self.store, self.broker, req.run_id)
            await self.broker.events.publish(
                RunEvent(
                    type=EV_FAILED,
                    run_id=req.run_id,
                    at=time.time(),
                    agent=req.agent,
                    data=data_dict(
                        RunEndedData(error=ErrorData(type="DeadLettered", message=reason))
                    ),
                ),
                acked=True,
            )
        return True


_STOP_TIMEOUT = 10.0
"""Seconds each step of a supervisor's shutdown may take."""
