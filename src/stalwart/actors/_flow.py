"""The run's side of the flow gate: one hook on the step path of a live attempt.

Before an attempt, :meth:`RunFlow.admit` asks every flow rule that governs the step's
resource (``stalwart.flow.FlowGate.match``), waits while one holds the attempt, and hands
back a :class:`Permit` that the step engine settles with the attempt's outcome.

Waiting: a short wait (the hold ends within ``wait_in_place`` seconds of waiting in place)
happens in place, waking for a drain or a cancel like a retry backoff. A longer one does
not keep the worker slot: the run passivates with a timer at the hold's end (and wakes on
the ``flow.resume`` signal), then replays to the same step and asks again. Nothing is
journaled for a wait: a step that waited and then ran looks like any other step.
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import TYPE_CHECKING, Any

import structlog

from stalwart.actors._waits import Passivated
from stalwart.errors import StalwartError
from stalwart.flow import (
    EV_FLOW_RESUMED,
    EV_FLOW_WAITING,
    RESUME_SIGNAL,
    FlowCall,
    FlowGate,
    FlowStore,
    Hold,
    Outcome,
    publish_rules,
)
from stalwart.telemetry import _flow as metrics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stalwart.actors._context import StepSpec, Usage
    from stalwart.actors._ports import EventSink
    from stalwart.actors._waits import Waits
    from stalwart.flow import RuleHandle
    from stalwart.policies import RetryPolicy

__all__ = ["FlowPassivated", "Permit", "RunFlow", "flow_gate", "publish_flow", "run_flow"]

log = structlog.get_logger("stalwart.flow")


class FlowPassivated(Passivated, StalwartError):
    """A step waits for a flow rule longer than it may wait in place: the run passivates.

    A :class:`StalwartError` too, so the run keeps it (``RunState.fatal``) and agent code
    that swallows it cannot run further steps in this placement.
    """


def flow_gate(app: Any, store: Any, passivate_after: float) -> FlowGate | None:
    """The gate of ``app``'s flow rules on ``store`` (None when it has none)."""
    rules = getattr(app, "flow", ())
    if not rules:
        return None
    # The store's append pipe (private to checkpoints; None without one, e.g. Sentinel).
    pipe = getattr(getattr(store, "_runner", None), "pipe", None)
    return FlowGate(
        rules,
        FlowStore(store.redis, store.ns, pipe=pipe),
        wait_in_place=min(5.0, passivate_after),
    )


def run_flow(gate: FlowGate | None, actor: Any) -> RunFlow | None:
    """The flow side of ``actor`` (a ``RunActor``), or None when its worker has no rules."""
    if gate is None:
        return None

    async def pause(seconds: float) -> None:
        # The step engine's backoff sleep: wakes for a drain, a cancel, a lost lease.
        await actor.engine._pause(seconds)

    spec = actor.spec
    return RunFlow(
        gate, actor.run_id, spec.name, actor.events, actor.waits, pause, spec.policies.limits.cost
    )


async def publish_flow(deps: Any, app: str) -> None:
    """Publish the worker's flow rules for ``stalwart flow`` (nothing without rules)."""
    gate: FlowGate | None = deps.flow
    if gate is not None:
        await publish_rules(gate.store, gate.rules, app)
    # (An app whose rules were all removed keeps its old ones listed: it has no gate, and
    # no store of its own here to forget them with. `stalwart flow` shows when they were
    # published.)


def _wake_at(hold: Hold, remaining: float, ahead: int) -> float:
    """When a run passivated by ``hold`` asks again (0: only on a signal).

    Runs held by one full window would all wake when it frees and all but a few be held
    again (each wake-up a placement and a replay): a run that found ``ahead`` runs waiting
    before it wakes ``ahead`` turns later (``hold.spread`` seconds a turn), with jitter.
    """
    if not hold.until:
        return 0.0
    if hold.spread > 0:
        return hold.until + ahead * hold.spread + random.uniform(0, hold.spread)
    return hold.until + random.uniform(0, min(0.05 * remaining, 2.0))


class Permit:
    """What an admitted attempt holds; :meth:`settle` gives it back with the outcome."""

    __slots__ = ("_call", "_handles")

    def __init__(self, call: FlowCall, handles: tuple[RuleHandle, ...]) -> None:
        self._call = call
        self._handles = handles

    async def settle(self, outcome: Outcome) -> None:
        """Tell every rule how the attempt ended. Never raises: the step's outcome is
        already decided, and a flow store error must not change it."""
        for h in self._handles:
            try:
                await h.release(self._call, outcome)
            except Exception as exc:
                log.warning("flow.release_failed", rule=h.rule.name, error=repr(exc)[:300])


class RunFlow:
    """One run's side of the gate."""

    def __init__(
        self,
        gate: FlowGate,
        run_id: str,
        agent: str,
        events: EventSink,
        waits: Waits,
        pause: Callable[[float], Awaitable[None]],
        price: Callable[[str, int, int], float],
    ) -> None:
        self.gate = gate
        self.run_id = run_id
        self.agent = agent
        self.input: Any = None
        """The run's decoded input, set by the actor before the agent runs."""
        self._events = events
        self._waits = waits
        self._pause = pause
        self._price = price
        self._fresh = True

    def match(self, kind: str, name: str) -> tuple[RuleHandle, ...]:
        """See :meth:`FlowGate.match`."""
        return self.gate.match(kind, name)

    async def admit(
        self,
        spec: StepSpec,
        attempt: int,
        handles: tuple[RuleHandle, ...],
        policy: RetryPolicy | None = None,
    ) -> Permit:
        """Return once every rule in ``handles`` admits the attempt (or raise
        :class:`Passivated` to wait without the worker slot)."""
        call = FlowCall(
            self.run_id,
            self.agent,
            f"{spec.kind}:{spec.name}",
            spec,
            attempt,
            self.input,
            policy=policy,
        )
        overridden: set[str] = set()
        waited_in_place = 0.0
        waiting_on = ""
        ahead = 0
        since = time.monotonic()
        while True:
            hold = await self._acquire(call, handles, overridden)
            if hold is None:
                if waiting_on:
                    await self._end_wait(waiting_on, since, bool(overridden))
                elif self._fresh:
                    await self._woken(handles)
                self._fresh = False
                for h in handles:
                    metrics.flow_admitted(h.rule.name)
                return Permit(call, handles)
            if hold.overridable and hold.signal and await self._take_resume():
                overridden.add(hold.rule)
                continue
            now = time.time()
            remaining = max(hold.until - now, 0.0) if hold.until else float("inf")
            passivate = waited_in_place + remaining > self.gate.wait_in_place
            if hold.rule != waiting_on:
                if waiting_on:
                    with contextlib.suppress(Exception):
                        await self.gate.store.unmark_waiting(waiting_on, self.run_id)
                waiting_on = hold.rule
                ahead = await self.gate.store.mark_waiting(hold.rule, self.run_id, hold.until) - 1
                await self._emit_waiting(spec, hold, passivate)
            metrics.flow_held(hold.rule, passivate)
            if passivate:
                if not hold.signal:
                    # A pending flow.resume would wake the passivated run at once, again and
                    # again: for this hold it means "look again", which the run just did.
                    await self._take_resume()
                wake = _wake_at(hold, remaining, ahead)
                if wake > hold.until > 0:  # listed as waiting until it wakes, not before
                    await self.gate.store.mark_waiting(hold.rule, self.run_id, wake)
                raise FlowPassivated(RESUME_SIGNAL, wake)
            t0 = time.monotonic()
            metrics.flow_waiting(hold.rule, 1)
            try:
                await self._pause(remaining)
            finally:
                metrics.flow_waiting(hold.rule, -1)
            waited_in_place += time.monotonic() - t0

    async def _acquire(
        self, call: FlowCall, handles: tuple[RuleHandle, ...], overridden: set[str]
    ) -> Hold | None:
        taken: list[RuleHandle] = []
        for h in handles:
            if h.rule.name in overridden:
                continue
            try:
                answer = await h.acquire(call)
            except BaseException:
                # A rule that refuses outright (an open circuit the policy will not wait
                # for): the earlier rules' grants go back too.
                await Permit(call, tuple(taken)).settle(Outcome(ok=False, abandoned=True))
                raise
            if isinstance(answer, Hold):
                # Give back what the earlier rules gave: this attempt does not run now.
                await Permit(call, tuple(taken)).settle(Outcome(ok=False, abandoned=True))
                return answer
            taken.append(h)
        return None

    async def _take_resume(self) -> bool:
        """Consume every pending ``flow.resume`` signal; True if there was one."""
        found = False
        while (sig := await self._waits.next_signal(RESUME_SIGNAL)) is not None:
            found = True
            self._waits.state.consumed_signals.add(sig[0])
            with contextlib.suppress(Exception):
                await self._waits.drop_signal(RESUME_SIGNAL, sig[0])
        return found

    async def _emit_waiting(self, spec: StepSpec, hold: Hold, passivate: bool) -> None:
        data = {
            "rule": hold.rule,
            "resource": hold.resource,
            "limit": hold.limit,
            "until": round(hold.until, 3),
            "signal": hold.signal,
            "passivate": passivate,
        }
        log.info("flow.waiting", run_id=self.run_id, step=spec.key, **data)
        self._events.emit(EV_FLOW_WAITING, step=spec.key, data=data)

    async def _woken(self, handles: tuple[RuleHandle, ...]) -> None:
        # The first admitted step of a placement: the run may have passivated on a rule
        # before (the wait ended while nobody hosted it). Once per placement, not per step.
        for h in handles:
            with contextlib.suppress(Exception):
                if await self.gate.store.unmark_waiting(h.rule.name, self.run_id):
                    self._events.emit(
                        EV_FLOW_RESUMED, data={"rule": h.rule.name, "override": False}
                    )

    async def _end_wait(self, rule: str, since: float, override: bool) -> None:
        with contextlib.suppress(Exception):
            await self.gate.store.unmark_waiting(rule, self.run_id)
        self._events.emit(
            EV_FLOW_RESUMED,
            data={"rule": rule, "waited": round(time.monotonic() - since, 3), "override": override},
        )

    def outcome(self, ok: bool, usage: Usage | None, error: BaseException | None) -> Outcome:
        """The outcome of an attempt, priced by the run's price table."""
        cost = self._price(usage.model, usage.input_tokens, usage.output_tokens) if usage else 0.0
        return Outcome(ok=ok, error=error, usage=usage, cost_usd=cost)
