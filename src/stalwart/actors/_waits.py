"""Durable waits: ``ctx.wait_for_signal`` and ``ctx.sleep``, with passivation.

A wait is journaled when it starts (with its absolute deadline) and when it ends (the
signal consumed, or the timeout), so a resume anywhere continues the same wait. A wait that
lasts longer than ``passivate_after`` gives up the worker slot and the lease: the run is
marked ``waiting`` and is placed again when its signal arrives or its timer fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from stalwart.actors._inbox import Inbox
from stalwart.checkpoints import StepDone, WaitStarted, decode_value, encode_value
from stalwart.errors import NonDeterminismError, StalwartError
from stalwart.messages import EV_WAIT_STARTED
from stalwart.observability import _hooks as obs

if TYPE_CHECKING:
    from stalwart.broker import Broker
    from stalwart.checkpoints import CheckpointStore, Entry, JournalEntry, StepError
    from stalwart.messages import RunEvent
    from stalwart.policies import Policies

# Even with notifications, look at the inbox now and then: a notification can be lost.
_RECHECK = 5.0


class WaitTimeout(StalwartError, TimeoutError):
    """A durable wait reached its timeout (also raised on replay of that outcome)."""


class Passivated(Exception):
    """Raised out of the agent to give the run up while it waits (internal)."""

    def __init__(self, waiting_for: str, wake_at: float) -> None:
        super().__init__(waiting_for)
        self.waiting_for = waiting_for
        self.wake_at = wake_at


class Waits:
    """Durable waits of a run actor. The actor provides the attributes declared here."""

    run_id: str
    epoch: int
    worker_id: str
    replaying: bool
    cancel_reason: str
    passivate_after: float
    policies: Policies
    first_live_step_at: float | None
    _store: CheckpointStore
    _broker: Broker
    _journal: dict[str, StepDone | StepError]
    _unreplayed: set[str]
    _waits: dict[str, WaitStarted]
    _consumed_signals: set[str]
    _wake: asyncio.Event

    async def _append(self, entry: Entry) -> JournalEntry:
        raise NotImplementedError

    async def _emit(self, event: RunEvent) -> None:
        raise NotImplementedError

    def _journal_event(self, je: JournalEntry) -> RunEvent:
        raise NotImplementedError

    def _check_boundary(self) -> None:
        raise NotImplementedError

    async def _ensure_lease(self) -> None:
        raise NotImplementedError

    async def wait(self, key: str, signal: str, timeout: float | None) -> Any:
        """Wait for ``signal`` (or, with ``signal == ""``, just for ``timeout``)."""
        kind = "signal" if signal else "sleep"
        recorded = self._journal.get(key)
        if recorded is not None:
            self._unreplayed.discard(key)
            return self._replayed_wait(key, kind, recorded)
        self._check_boundary()
        if self.replaying:
            self.replaying = False
            self.first_live_step_at = time.monotonic()
        started = self._waits.get(key)
        if started is None:
            until = time.time() + timeout if timeout is not None else 0.0
            started = WaitStarted(
                key=key,
                until=until,
                signal=signal,
                epoch=self.epoch,
                worker=self.worker_id,
                at=time.time(),
            )
            je = await self._append(started)
            self._waits[key] = started
            await self._emit(self._journal_event(je))
        with obs.wait_scope(self, key, signal):
            return await self._wait_live(key, kind, started)

    def _replayed_wait(self, key: str, kind: str, entry: StepDone | StepError) -> Any:
        if entry.kind != kind:
            raise NonDeterminismError(
                f"run {self.run_id!r}, step {key!r}: {entry.kind} {entry.name!r} was recorded, "
                f"the code now asks for a {kind}"
            )
        assert isinstance(entry, StepDone)
        outcome = decode_value(entry.result)
        if isinstance(outcome, dict):
            if outcome.get("timeout"):
                raise WaitTimeout(f"wait {key!r} timed out")
            if "sid" in outcome:
                self._consumed_signals.add(outcome["sid"])
            return outcome.get("payload")
        return None

    async def _wait_live(self, key: str, kind: str, started: WaitStarted) -> Any:
        poke = asyncio.Event()

        async def on_poke(_: Any) -> None:
            poke.set()

        sub = await self._broker.nc.subscribe(
            self._broker.names.signals_subject(self.run_id), cb=on_poke
        )
        waited_since = time.monotonic()
        # A cancel stored after this run's last step but before the subscription above
        # poked nobody: read the flag once now (any later cancel pokes the subscription).
        await self._refresh_cancel()
        try:
            while True:
                # A wake-up hands control back to user code: only while the lease is ours.
                await self._ensure_lease()
                if started.signal:
                    found = await self._next_signal(started.signal)
                    if found is not None:
                        sid, payload = found
                        self._consumed_signals.add(sid)
                        await self._end_wait(key, kind, started, {"sid": sid, "payload": payload})
                        # Journaled: the inbox need not keep it (it counts against the
                        # run's pending-signal limit). A failure only leaves it for later.
                        with contextlib.suppress(Exception):
                            await self._signal_inbox().consumed(started.signal, sid)
                        return payload
                now = time.time()
                if started.until and now >= started.until:
                    await self._end_wait(
                        key, kind, started, {"timeout": True} if started.signal else None
                    )
                    if started.signal:
                        raise WaitTimeout(f"wait for signal {started.signal!r} timed out")
                    return None
                remaining = started.until - now if started.until else float("inf")
                idle = time.monotonic() - waited_since
                if idle >= self.passivate_after and remaining > 1.0:
                    raise Passivated(started.signal, started.until)
                poke.clear()
                pause = min(remaining, max(self.passivate_after - idle, 0.0), _RECHECK)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(poke, self._wake), pause)
                # On a poke, and on every recheck too: a poke is a core NATS message and can
                # be lost, and a cancel must not wait for passivation to be noticed.
                await self._refresh_cancel()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    _inbox: Inbox | None = None

    def _signal_inbox(self) -> Inbox:
        if self._inbox is None:
            self._inbox = Inbox(self._store, self.run_id)
        return self._inbox

    async def _next_signal(self, name: str) -> tuple[str, Any] | None:
        # Incremental: a poke costs one short read when nothing new has arrived.
        return await self._signal_inbox().take(name, self._consumed_signals)

    async def _refresh_cancel(self) -> None:
        # One field, not the whole record (which carries the run's input): pokes are cheap.
        reason = await self._store.cancel_flag(self.run_id)
        if reason and not self.cancel_reason:
            self.cancel_reason = reason

    async def _end_wait(self, key: str, kind: str, started: WaitStarted, outcome: Any) -> None:
        entry = StepDone(
            key=key,
            kind=kind,
            name=started.signal or "sleep",
            fp=started.signal,
            result=encode_value(outcome),
            epoch=self.epoch,
            worker=self.worker_id,
            at=started.at,
            duration=time.time() - started.at,
        )
        je = await self._append(entry)
        self._journal[key] = entry
        obs.step_journaled(self, entry)
        await self._emit(self._journal_event(je))


async def _first(a: asyncio.Event, b: asyncio.Event) -> None:
    """Return when either event is set."""
    tasks = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


__all__ = ["EV_WAIT_STARTED", "Passivated", "WaitTimeout", "Waits"]
