"""Retry budgets: the retries of all runs against a resource draw from one shared budget.

A :class:`RetryBudget` grants, over any ``window`` seconds, at most ``ratio`` retries per
successful attempt seen in that window plus a floor of ``min_per_second * window``. First
attempts never draw from it (they are not retries); every later attempt of a step does. A
retry that finds the budget empty waits (in place, or with its run passivated) until the
oldest retry leaves the window: a failing provider sees a trickle of retries, not a storm.

The budget is one Redis hash per resource with a counter per tenth of the window
(``_breaker_scripts.BUDGET``, on the Redis server's clock). A worker adds its successes in
batches (at most one write per ``window / 10`` per budget, never awaited on the step path):
a success not yet written only makes the budget stricter for a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stalwart.errors import ConfigurationError
from stalwart.flow._breaker_scripts import BUDGET
from stalwart.flow._rules import ADMIT, FlowCall, FlowRule, Hold, Outcome
from stalwart.telemetry import _flow as metrics

if TYPE_CHECKING:
    from stalwart.flow._store import FlowStore

__all__ = ["BUCKETS", "BudgetView", "RetryBudget", "budget_key"]

BUCKETS = 10
"""Counters per window: a retry leaves the budget within a tenth of a window of its time."""


def budget_key(store: FlowStore, rule: str, resource: str) -> str:
    """The Redis hash of ``rule``'s retry budget for ``resource`` (the rule's slot)."""
    return store.key(rule, f"budget:{resource}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget(FlowRule):
    """Retries across all workers limited to ``ratio`` per recent success plus a floor.

    Over any ``window`` seconds: retries granted <= ``ratio`` x successes in the window
    (rounded down) + ``min_per_second`` x ``window`` (rounded up). ``per_resource=False`` gives all matched resources one
    budget (a provider as a whole).
    """

    ratio: float = 0.1
    min_per_second: float = 1.0
    window: float = 10.0
    per_resource: bool = True

    def __post_init__(self) -> None:
        FlowRule.__post_init__(self)
        for what, lo in (("ratio", -1e-12), ("min_per_second", -1e-12), ("window", 0.0)):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (lo < v < math.inf):
                raise ConfigurationError(
                    f"RetryBudget {self.name!r}: {what} must be a number > {max(lo, 0):g}, "
                    f"not {v!r}"
                )
        if self.ratio == 0 and self.min_per_second == 0:
            raise ConfigurationError(
                f"RetryBudget {self.name!r}: ratio and min_per_second are both 0, so no retry "
                "would ever run; give one of them a positive value (or use NO_RETRY)"
            )

    @property
    def floor(self) -> float:
        """Retries per window granted without any success."""
        return self.min_per_second * self.window

    def describe(self) -> str:
        """``"retries <= 10% of successes + 1/s"``."""
        return f"retries <= {self.ratio:.0%} of successes + {self.min_per_second:g}/s"

    def budget_of(self, resource: str) -> str:
        """The budget ``resource`` draws from under this rule (its own, or the rule's one)."""
        return resource if self.per_resource else "*"

    def bind(self, store: FlowStore) -> RetryBudgetHandle:
        """This rule on ``store`` (one handle per worker)."""
        return RetryBudgetHandle(self, store)


@dataclass(slots=True)
class BudgetView:
    """What this worker last learnt of one budget (for its metrics)."""

    successes: int = 0
    retries: int = 0
    allowed: int = 0
    at: float = 0.0

    @property
    def available(self) -> int:
        """Retries the budget would still grant."""
        return max(self.allowed - self.retries, 0)


class RetryBudgetHandle:
    """A :class:`RetryBudget` bound to a worker's store."""

    def __init__(self, rule: RetryBudget, store: FlowStore) -> None:
        self.rule = rule
        self._store = store
        self._script = store.redis.register_script(BUDGET)
        self._pending: dict[str, int] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._last_flush = 0.0
        self._indexed: set[str] = set()
        self.seen: dict[str, BudgetView] = {}
        """Last known level per budget (resource), as this worker saw it."""

    async def _call(self, budget: str, take: bool, deposit: int, refund: int = 0) -> list[Any]:
        r = self.rule
        if budget not in self._indexed:
            # The index the snapshot reads; once per budget and process.
            await self._store.redis.sadd(self._store.key(r.name, "budgets"), budget)
            self._indexed.add(budget)
        reply: list[Any] = await self._store._script(
            self._script,
            [budget_key(self._store, r.name, budget)],
            [
                repr(r.window / BUCKETS),
                BUCKETS,
                repr(float(r.ratio)),
                repr(float(r.floor)),
                "1" if take else "0",
                deposit,
                refund,
            ],
        )
        view = BudgetView(int(reply[1]), int(reply[2]), int(reply[3]), time.time())
        if budget in self.seen or len(self.seen) < 1000:
            self.seen[budget] = view
        # Per rule (bounded labels): the level of the budget this process used last.
        metrics.flow_usage(r.name, "retries", view.retries, view.allowed)
        return reply

    async def acquire(self, call: FlowCall) -> Hold | Any:
        """First attempts go; a retry takes one from the budget or waits for one."""
        if call.attempt <= 1:
            return ADMIT
        r = self.rule
        budget = r.budget_of(call.resource)
        deposit = self._pending.pop(budget, 0)  # ride along: the count is freshest this way
        reply = await self._call(budget, True, deposit)
        if int(reply[0]) == 1:
            call.reservations[r.name] = budget
            return ADMIT
        wait = max(float(_text(reply[4])), 0.05)
        limit = f"retry budget empty ({r.describe()})"
        return Hold(r.name, call.resource, limit, time.time() + wait)

    async def release(self, call: FlowCall, outcome: Outcome) -> None:
        """Count a success toward the budget; give back a retry that never ran."""
        r = self.rule
        budget = call.reservations.pop(r.name, None)
        if outcome.abandoned and budget is not None:
            await self._call(budget, False, 0, refund=1)
            return
        if not outcome.ok:
            return
        budget = budget or r.budget_of(call.resource)
        if budget not in self._pending and len(self._pending) >= 1000:
            return
        self._pending[budget] = self._pending.get(budget, 0) + 1
        now = time.monotonic()
        if self._flushing is None and now - self._last_flush >= r.window / BUCKETS:
            self._last_flush = now
            # Not awaited: a success must not wait for the budget's bookkeeping.
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            pending, self._pending = self._pending, {}
            for budget, n in pending.items():
                with contextlib.suppress(Exception):  # a lost count only makes it stricter
                    await self._call(budget, False, n)
        finally:
            self._flushing = None

    async def flush(self) -> None:
        """Write the successes not yet written (tests, shutdown)."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        await self._flush()


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
