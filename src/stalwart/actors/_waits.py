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

from stalwart.actors import _telemetry as obs
from stalwart.actors._inbox import Inbox
from stalwart.actors._rules import (
    Diverged,
    NotJournaled,
    OnRun,
    Stop,
    decide_wait,
    divergence_error,
)
from stalwart.checkpoints import StepDone, StepError, WaitStarted, decode_value, encode_value
from stalwart.errors import PayloadKeyError, StalwartError

if TYPE_CHECKING:
    from collections.abc import Callable

    from stalwart.actors._ports import EventSink, Journal, Owner
    from stalwart.actors._rules import RunState
    from stalwart.broker import Broker
    from stalwart.checkpoints import CheckpointStore

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


class Waits(OnRun):
    """Durable waits of one run, carried out as ``_rules.decide_wait`` decides.

    ``broker`` and ``store`` serve live waits only; offline replay (``unjournaled`` given)
    answers every wait from the journal and has neither.
    """

    def __init__(
        self,
        state: RunState,
        journal: Journal,
        events: EventSink,
        owner: Owner,
        wake: asyncio.Event,
        *,
        broker: Broker | None = None,
        store: CheckpointStore | None = None,
        passivate_after: float = 60.0,
        unjournaled: Callable[[str, str], BaseException] | None = None,
    ) -> None:
        self.state = state
        self._journal = journal
        self._events = events
        self._owner = owner
        self._wake = wake
        self._broker = broker
        self._store = store
        self.passivate_after = passivate_after
        self._unjournaled = unjournaled
        self._inbox: Inbox | None = None
        self.signal_ids: dict[str, str] = {}
        """The id of the signal each finished wait took (by wait key), replayed or live."""

    async def wait(self, key: str, signal: str, timeout: float | None) -> Any:
        """Wait for ``signal`` (or, with ``signal == ""``, just for ``timeout``)."""
        state = self.state
        d = decide_wait(state, key, signal, live=self._unjournaled is None)
        if isinstance(d, StepDone | StepError):
            return self._replayed_wait(key, d)
        if isinstance(d, Stop):
            raise d.error
        if isinstance(d, Diverged):
            raise divergence_error(state, d)
        if isinstance(d, NotJournaled):
            assert self._unjournaled is not None
            raise self._unjournaled(d.key, d.what)
        if state.replaying:
            state.replaying = False
            state.first_live_step_at = time.monotonic()
        started = d.started
        if started is None:
            until = time.time() + timeout if timeout is not None else 0.0
            started = WaitStarted(
                key=key,
                until=until,
                signal=signal,
                epoch=state.epoch,
                worker=state.worker_id,
                at=time.time(),
            )
            je = await self._journal.append(started)
            state.view.waits[key] = started
            self._events.journaled(je)
        with obs.wait_scope(self, key, signal):
            return await self._wait_live(key, "signal" if signal else "sleep", started)

    def _replayed_wait(self, key: str, entry: StepDone | StepError) -> Any:
        assert isinstance(entry, StepDone)
        try:
            outcome = decode_value(entry.result)
        except PayloadKeyError as exc:  # see StepExecutor.execute
            self.state.fatal = exc
            raise
        if isinstance(outcome, dict):
            if outcome.get("timeout"):
                raise WaitTimeout(f"wait {key!r} timed out")
            if "sid" in outcome:
                self.state.consumed_signals.add(outcome["sid"])
                self.signal_ids[key] = outcome["sid"]
            return outcome.get("payload")
        return None

    async def _wait_live(self, key: str, kind: str, started: WaitStarted) -> Any:
        assert self._broker is not None
        poke = asyncio.Event()

        async def on_poke(_: Any) -> None:
            poke.set()

        sub = await self._broker.nc.subscribe(
            self._broker.names.signals_subject(self.state.run_id), cb=on_poke
        )
        waited_since = time.monotonic()
        await self._note(started.signal, started.until)
        # A cancel stored after this run's last step but before the subscription above
        # poked nobody: read the flag once now (any later cancel pokes the subscription).
        await self._refresh_cancel()
        try:
            while True:
                # A wake-up hands control back to user code: only while the lease is ours.
                await self._owner.ensure()
                if started.signal:
                    found = await self.next_signal(started.signal)
                    if found is not None:
                        sid, payload = found
                        self.state.consumed_signals.add(sid)
                        self.signal_ids[key] = sid
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

    def _signal_inbox(self) -> Inbox:
        if self._inbox is None:
            assert self._store is not None
            self._inbox = Inbox(self._store, self.state.run_id)
        return self._inbox

    async def next_signal(self, name: str) -> tuple[str, Any] | None:
        """The oldest signal ``name`` this run has not consumed: (id, payload), or None."""
        # Incremental: a poke costs one short read when nothing new has arrived.
        return await self._signal_inbox().take(name, self.state.consumed_signals)

    async def drop_signal(self, name: str, sid: str) -> None:
        """Delete signal ``sid`` from the inbox: consumed outside a journaled wait."""
        await self._signal_inbox().consumed(name, sid)

    async def _refresh_cancel(self) -> None:
        assert self._store is not None
        # One field, not the whole record (which carries the run's input): pokes are cheap.
        reason = await self._store.cancel_flag(self.state.run_id)
        if reason and not self.state.cancel_reason:
            self.state.cancel_reason = reason

    async def _end_wait(self, key: str, kind: str, started: WaitStarted, outcome: Any) -> None:
        state = self.state
        entry = StepDone(
            key=key,
            kind=kind,
            name=started.signal or "sleep",
            fp=started.signal,
            result=encode_value(outcome),
            epoch=state.epoch,
            worker=state.worker_id,
            at=started.at,
            duration=time.time() - started.at,
        )
        je = await self._journal.append(entry)
        state.view.done[key] = entry
        obs.step_journaled(self, entry)
        self._events.journaled(je)
        await self._note("", 0.0)

    async def _note(self, signal: str, deadline: float) -> None:
        """Show the wait on the run's record (``stalwart status``, the console): best effort,
        the journal is the truth."""
        if self._store is None:
            return
        with contextlib.suppress(Exception):
            await self._store.note_wait(self.state.run_id, signal, deadline)


async def _first(a: asyncio.Event, b: asyncio.Event) -> None:
    """Return when either event is set."""
    tasks = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


__all__ = ["Passivated", "WaitTimeout", "Waits"]
