"""The supervisor: finds runs whose owner died and has them resumed elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from stalwart.broker import Broker
from stalwart.checkpoints import CheckpointStore
from stalwart.messages import RunRequest

if TYPE_CHECKING:
    from stalwart.checkpoints import RunRecord
    from stalwart.config import Settings

log = structlog.get_logger("stalwart.supervisor")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do about one run: nothing, forget it (it ended), or re-place it."""

    action: str  # "none" | "forget" | "replace"
    epoch: int = 0


def judge(record: RunRecord | None, lease_holder: str | None) -> Verdict:
    """Decide about one run from its record and its lease holder (None: no lease).

    Pure, so the rule is testable without servers. Runs still ``accepted`` are left to
    JetStream: their request is unacked in the work queue and will be delivered again.
    """
    if record is None or record.terminal:
        return Verdict("forget")
    if record.status == "running" and lease_holder is None:
        return Verdict("replace", record.epoch)
    return Verdict("none")


class Supervisor:
    """Watches lease expiry and periodically reconciles running runs against their leases.

    Watching gives fast detection; the periodic scan catches what no watch saw (runs that
    expired while no supervisor was up). Re-placement publishes a resume request with
    ``Nats-Msg-Id: <run_id>:resume:<epoch>``, so any number of supervisors, and a draining
    worker that released the run itself, publish it once per lost epoch.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker: Broker | None = None
        self.store: CheckpointStore | None = None
        self.replaced = 0
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """Connect to both servers."""
        assert self.settings.nats_url and self.settings.redis_url, "resolve server URLs first"
        self.store = await CheckpointStore.connect(self.settings.redis_url, self.settings.namespace)
        self.broker = await Broker.connect(self.settings, name="stalwart-supervisor")

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Supervise until :meth:`stop`."""
        if self.broker is None:
            await self.start()
        watcher = asyncio.create_task(self._watch())
        try:
            while not self._stopping.is_set():
                try:
                    await self.reconcile()
                except Exception as exc:  # keep supervising through server restarts
                    log.warning("reconcile.failed", error=repr(exc))
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_interval)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
            await self.close()

    async def close(self) -> None:
        """Close both connections."""
        if self.broker is not None:
            await self.broker.close()
        if self.store is not None:
            await self.store.close()

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
                log.warning("watch.failed", error=repr(exc))
                await asyncio.sleep(1.0)

    async def reconcile(self) -> int:
        """Check every run that has not ended; return how many were re-placed."""
        assert self.store is not None
        count = 0
        for run_id in await self.store.active_runs():
            if await self.check(run_id):
                count += 1
        return count + await self.fire_timers()

    async def fire_timers(self) -> int:
        """Wake passivated runs whose durable sleep or wait timeout is due."""
        assert self.store is not None and self.broker is not None
        woken = 0
        for run_id in await self.store.due_timers(time.time()):
            record = await self.store.get_run(run_id)
            if record is not None and record.status == "waiting":
                await self.broker.publish_request(
                    RunRequest(
                        run_id=run_id, agent=record.agent, kind="resume", epoch=record.epoch
                    ),
                    msg_id=f"{run_id}:timer:{record.epoch}",
                )
                woken += 1
            await self.store.remove_timer(run_id)
        return woken

    async def check(self, run_id: str) -> bool:
        """Re-place ``run_id`` if it is running without an owner; True when it was."""
        assert self.store is not None and self.broker is not None
        record = await self.store.get_run(run_id)
        holder = None
        if record is not None and record.status == "running":
            holder = (await self.broker.leases.state(run_id)).holder
        verdict = judge(record, holder)
        if verdict.action == "forget":
            await self.store.mark_inactive(run_id)
            return False
        if verdict.action != "replace" or record is None:
            return False
        fresh = await self.broker.publish_request(
            RunRequest(run_id=run_id, agent=record.agent, kind="resume", epoch=verdict.epoch),
            msg_id=f"{run_id}:resume:{verdict.epoch}",
        )
        if fresh:
            self.replaced += 1
            log.info("run.replaced", run_id=run_id, lost_epoch=verdict.epoch, owner=record.worker)
        return fresh
