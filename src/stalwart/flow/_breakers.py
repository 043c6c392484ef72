"""Shared circuit breakers: one breaker state per resource for every worker of a namespace.

A :class:`SharedBreaker` rule replaces the per-process breaker (``policies.Breakers``) of the
resources it matches. Its state lives in Redis and changes only through one atomic script
per transition (``_breaker_scripts``): failures are counted across workers, the breaker
opens for all of them at once, after the cooldown exactly one attempt in the whole fleet
goes through as the half-open probe, and its success closes the breaker for everyone.

While the breaker is open an attempt does not fail: the gate holds it (in place, or with
the run passivated) until the next probe window. Only a retry policy that declares
:class:`~stalwart.errors.CircuitOpenError` non-retryable makes it fail at once.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stalwart.errors import CircuitOpenError, ConfigurationError
from stalwart.flow._breaker_scripts import ABANDON, BEFORE, RECORD
from stalwart.flow._rules import ADMIT, FlowCall, FlowRule, Hold, Outcome
from stalwart.policies import RetryPolicy, classify

if TYPE_CHECKING:
    from collections.abc import Iterable

    from stalwart.flow._store import FlowStore

__all__ = ["BreakerView", "SharedBreaker", "breaker_key", "counts_as_failure"]

_KEEP = 3600.0
"""Seconds a breaker's key outlives its last failure (a count nobody adds to expires)."""
_DEFAULT_POLICY = RetryPolicy()


def _seconds(rule: str, what: str, v: Any, *, minimum: float = 0.0) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not (minimum < v < math.inf):
        raise ConfigurationError(
            f"SharedBreaker {rule!r}: {what} must be a number of seconds > {minimum:g}, not {v!r}"
        )


def breaker_key(store: FlowStore, rule: str, resource: str) -> str:
    """The Redis hash of ``rule``'s breaker for ``resource`` (the rule's slot)."""
    return store.key(rule, f"breaker:{resource}")


def counts_as_failure(error: BaseException, policy: RetryPolicy | None) -> bool:
    """Whether a failed attempt says "the other side is unwell" (as the per-process breaker
    decides: errors the retry policy would retry; a 4xx or a declined card is an answer)."""
    if isinstance(error, CircuitOpenError):
        return False
    try:
        retryable, _ = classify(error, policy or _DEFAULT_POLICY)
    except Exception:
        return False
    return retryable


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedBreaker(FlowRule):
    """A circuit breaker shared by all workers for each resource the rule matches.

    ``threshold`` failures in a row (across all workers: any success resets the count) open
    it; after ``cooldown`` seconds one probe attempt goes through; its success closes the
    breaker, its failure opens it for another cooldown. A probe whose worker dies hands the
    slot on after ``probe_timeout`` seconds. ``per_resource=False`` makes all the matched
    resources share one breaker (a provider as a whole). Times are the Redis server's.
    """

    threshold: int = 5
    cooldown: float = 30.0
    probe_timeout: float = 60.0
    per_resource: bool = True

    def __post_init__(self) -> None:
        FlowRule.__post_init__(self)
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ConfigurationError(
                f"SharedBreaker {self.name!r}: threshold must be a whole number >= 1, not {t!r}"
            )
        _seconds(self.name, "cooldown", self.cooldown, minimum=-1e-12)
        _seconds(self.name, "probe_timeout", self.probe_timeout)

    def describe(self) -> str:
        """``"open after 5 failures, probe every 30s"``."""
        return f"open after {self.threshold} failures, probe every {self.cooldown:g}s"

    def breaker_of(self, resource: str) -> str:
        """The breaker that ``resource`` uses under this rule (itself, or the rule's one)."""
        return resource if self.per_resource else "*"

    def bind(self, store: FlowStore) -> SharedBreakerHandle:
        """This rule on ``store`` (one handle per worker)."""
        return SharedBreakerHandle(self, store)


@dataclass(slots=True)
class BreakerView:
    """What this worker last learnt of one shared breaker (for its heartbeat and metrics)."""

    state: str = "closed"
    failures: int = 0
    at: float = 0.0


class SharedBreakerHandle:
    """A :class:`SharedBreaker` bound to a worker's store."""

    replaces_local_breaker = True
    """The gate's sign that the worker's own breaker is off for this rule's resources."""

    def __init__(self, rule: SharedBreaker, store: FlowStore) -> None:
        # Scripts go through ``store._script``: down the checkpoint store's pipe when there
        # is one (a third of a step's cost, measured in bench/flow.py), else redis-py.
        self.rule = rule
        self._store = store
        self._before = store.redis.register_script(BEFORE)
        self._record = store.redis.register_script(RECORD)
        self._abandon = store.redis.register_script(ABANDON)
        self.seen: dict[str, BreakerView] = {}
        """Last known state per breaker (resource), as this worker saw it."""

    def _see(self, breaker: str, state: str, failures: int) -> None:
        view = self.seen.get(breaker)
        if view is None:
            if len(self.seen) >= 1000:  # hostile step names must not grow it without end
                return
            view = self.seen[breaker] = BreakerView()
        view.state, view.failures, view.at = state, failures, time.time()

    async def acquire(self, call: FlowCall) -> Hold | Any:
        """Admit unless the breaker is open or another worker's probe is in flight."""
        r = self.rule
        breaker = r.breaker_of(call.resource)
        holder = f"{call.run_id}:{call.spec.key}:{call.attempt}"
        reply = await self._store._script(
            self._before,
            [breaker_key(self._store, r.name, breaker)],
            [repr(float(r.cooldown)), repr(float(r.probe_timeout)), holder, _KEEP],
        )
        state = _text(reply[0])
        failures = int(reply[2])
        if state in ("closed", "probe"):
            self._see(breaker, "closed" if state == "closed" else "half_open", failures)
            call.reservations[r.name] = (breaker, holder, state == "probe", failures)
            return ADMIT
        wait = float(_text(reply[1]))
        self._see(breaker, "open" if state == "open" else "half_open", failures)
        if not classify_open(call, wait):
            raise CircuitOpenError(call.resource, wait)
        if state == "probing":
            # Another worker's probe is in flight: look again soon, not only when its
            # lease ends (its success closes the breaker for everyone).
            wait = min(wait, max(r.cooldown / 5, 0.25))
        # Jitter: the runs held by one breaker must not all ask again at the same instant.
        wait *= 1 + random.uniform(0.0, 0.1)
        limit = f"circuit open ({r.describe()})"
        return Hold(r.name, call.resource, limit, time.time() + wait)

    async def release(self, call: FlowCall, outcome: Outcome) -> None:
        """Count the attempt's verdict on the other side (or hand the probe back)."""
        r = self.rule
        taken = call.reservations.pop(r.name, None)
        if taken is None:
            return
        breaker, holder, probe, failures = taken
        key = breaker_key(self._store, r.name, breaker)
        index = self._store.key(r.name, "breakers")  # the script adds it there when it opens
        error = outcome.error
        if outcome.ok:
            if failures == 0 and not probe:
                return  # closed with no failures counted when it was asked: nothing to reset
            await self._store._script(
                self._record, [key, index], ["1", holder, r.threshold, _KEEP, breaker]
            )
            self._see(breaker, "closed", 0)
            return
        if outcome.abandoned or error is None or not counts_as_failure(error, call.policy):
            if probe:
                await self._store._script(self._abandon, [key], [holder])
            return
        reply = await self._store._script(
            self._record, [key, index], ["0", holder, r.threshold, _KEEP, breaker]
        )
        what, n = _text(reply[0]), int(reply[1])
        self._see(breaker, "open" if what in ("opened", "reopened", "open") else "closed", n)

    async def refresh(self) -> dict[str, str]:
        """Re-read the breakers this worker last saw not closed; every one not closed now,
        ``open`` or ``half_open`` (for the heartbeat)."""
        out: dict[str, str] = {}
        for breaker, view in list(self.seen.items()):
            if view.state == "closed":
                continue
            key = breaker_key(self._store, self.rule.name, breaker)
            raw = await self._store.redis.hmget(key, ["opened_at", "failures"])
            opened = float(raw[0]) if raw[0] else 0.0
            now = time.time()  # the host's clock against Redis's: a heartbeat's precision
            state = (
                "closed"
                if not opened
                else ("open" if now < opened + self.rule.cooldown else "half_open")
            )
            self._see(breaker, state, int(raw[1] or 0))
            if state != "closed":
                out[breaker] = state
        return out


def known_states(handles: Iterable[Any]) -> dict[str, str]:
    """The shared breakers not closed as this worker last saw them, by resource (the gauges
    read it when scraped; the heartbeat refreshes it)."""
    return {
        b: v.state
        for h in handles
        if isinstance(h, SharedBreakerHandle)
        for b, v in h.seen.items()
        if v.state != "closed"
    }


async def refreshed_states(handles: Iterable[Any]) -> dict[str, str]:
    """:func:`known_states` after re-reading each one from Redis (for the heartbeat)."""
    out: dict[str, str] = {}
    for h in handles:
        if isinstance(h, SharedBreakerHandle):
            with contextlib.suppress(Exception):  # a heartbeat goes out regardless
                out.update(await h.refresh())
    return out


def classify_open(call: FlowCall, wait: float) -> bool:
    """Whether an attempt held by an open breaker waits (True) or fails at once: it fails
    only when its retry policy declares :class:`CircuitOpenError` non-retryable."""
    if call.policy is None:
        return True
    try:
        retryable, _ = classify(CircuitOpenError(call.resource, wait), call.policy)
    except Exception:
        return True
    return retryable


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
