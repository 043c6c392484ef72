"""The two limit rules: :class:`RateLimit` (requests and tokens per interval, shared by all
workers) and :class:`SpendLimit` (USD per agent or tenant per day or month)."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from stalwart.errors import ConfigurationError
from stalwart.flow._rules import ADMIT, FlowCall, FlowRule, Hold, Outcome
from stalwart.telemetry import _flow as metrics

if TYPE_CHECKING:
    from collections.abc import Callable

    from stalwart.flow._store import FlowStore

__all__ = ["RateLimit", "SpendLimit", "period_bounds"]

DEFAULT_HOLD = 600.0
"""How long an admitted call's place stays taken if its worker dies before it ends."""


def _positive_int(rule: str, what: str, v: Any) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
        raise ConfigurationError(
            f"flow rule {rule!r}: {what} must be a positive integer, not {v!r}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit(FlowRule):
    """At most ``requests`` calls and ``tokens`` tokens per ``per`` seconds, across all
    workers, for the resources the rule matches (together: one window for all of them).

    Every attempt counts (a retry is a request too). Before a call its token estimate is
    reserved: ``estimate`` (a number, or a function of the :class:`StepSpec`), else the
    step's ``tokens_hint`` (set by the code that builds the step from the request), else
    ``default_estimate``; after it, the reservation is corrected to the tokens the model
    reported. A window is a sliding window on the Redis server's clock.
    """

    requests: int | None = None
    tokens: int | None = None
    per: float = 60.0
    estimate: int | Callable[[Any], int] | None = None
    default_estimate: int = 1000
    hold: float = DEFAULT_HOLD
    """Seconds an admitted call counts as in flight at most (a crashed worker's call)."""

    def __post_init__(self) -> None:
        FlowRule.__post_init__(self)
        _positive_int(self.name, "requests", self.requests)
        _positive_int(self.name, "tokens", self.tokens)
        if self.requests is None and self.tokens is None:
            raise ConfigurationError(f"RateLimit {self.name!r}: give requests=, tokens= or both")
        for what in ("per", "hold"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (0 < v < math.inf):
                raise ConfigurationError(
                    f"RateLimit {self.name!r}: {what} must be a positive number of seconds, "
                    f"not {v!r}"
                )
        if not (isinstance(self.estimate, int | type(None)) or callable(self.estimate)):
            raise ConfigurationError(
                f"RateLimit {self.name!r}: estimate must be an int or a function of the step"
            )

    def describe(self) -> str:
        """``"60 requests, 100000 tokens / 60s"``."""
        parts = [f"{self.requests} requests"] if self.requests else []
        parts += [f"{self.tokens} tokens"] if self.tokens else []
        return f"{', '.join(parts)} / {self.per:g}s"

    def want(self, spec: Any) -> int:
        """The tokens reserved for a call of ``spec`` (0 without a token limit)."""
        if not self.tokens:
            return 0
        est = self.estimate
        if callable(est):
            try:
                n = int(est(spec))
            except Exception:  # a broken estimator must not stop the run: the default
                n = self.default_estimate
        elif est is not None:
            n = est
        else:
            hint = getattr(spec, "tokens_hint", 0)
            n = hint if isinstance(hint, int) and hint > 0 else self.default_estimate
        return max(n, 0)

    def bind(self, store: FlowStore) -> _RateHandle:
        return _RateHandle(self, store)


class _RateHandle:
    def __init__(self, rule: RateLimit, store: FlowStore) -> None:
        self.rule = rule
        self._store = store

    async def acquire(self, call: FlowCall) -> Hold | Any:
        r = self.rule
        member = f"{call.run_id}:{call.spec.key}:{call.attempt}:{uuid.uuid4().hex[:8]}"
        ok, wait, what, (n, tokens) = await self._store.acquire(
            r.name, member, r.per, r.requests or 0, r.tokens or 0, r.want(call.spec), r.hold
        )
        if ok:
            call.reservations[r.name] = member
            if r.requests:
                metrics.flow_usage(r.name, "requests", n, r.requests)
            if r.tokens:
                metrics.flow_usage(r.name, "tokens", tokens, r.tokens)
            return ADMIT
        spread = r.per / r.requests if r.requests else 0.0
        until = time.time() + wait
        return Hold(r.name, call.resource, f"{what}: {r.describe()}", until, spread=spread)

    async def release(self, call: FlowCall, outcome: Outcome) -> None:
        member = call.reservations.pop(self.rule.name, None)
        if member is None:
            return
        u = outcome.usage
        actual = u.input_tokens + u.output_tokens if u is not None else -1
        await self._store.settle(self.rule.name, member, actual, drop=outcome.abandoned)


def period_bounds(period: str, now: float) -> tuple[str, float]:
    """The id of the UTC day/month holding ``now`` and the time it ends."""
    d = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = d.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), start.timestamp() + 86400
    start = d.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start.strftime("%Y-%m"), nxt.timestamp()


@dataclass(frozen=True, slots=True, kw_only=True)
class SpendLimit(FlowRule):
    """At most ``limit_usd`` spent on model calls per ``period`` (a UTC day or month) per
    agent (``scope="agent"``) or per tenant (``scope="tenant"``; ``tenant`` is a key, or a
    function of the run's input that returns one).

    Costs come from the run's price table (``Policies.limits``, as the per-run budget). Once
    the limit is reached, new model calls wait, durably, until the period ends, an operator
    raises the limit (``stalwart flow set-limit``), or the run gets the ``flow.resume``
    signal (which lets its waiting call through once). Runs are never failed by it.
    """

    limit_usd: float
    period: Literal["day", "month"] = "day"
    scope: Literal["agent", "tenant"] = "agent"
    tenant: str | Callable[[Any], str] | None = None

    def __post_init__(self) -> None:
        FlowRule.__post_init__(self)
        v = self.limit_usd
        if isinstance(v, bool) or not isinstance(v, int | float) or not (0 <= v < math.inf):
            raise ConfigurationError(
                f"SpendLimit {self.name!r}: limit_usd must be a non-negative number, not {v!r}"
            )
        if self.period not in ("day", "month"):
            raise ConfigurationError(
                f"SpendLimit {self.name!r}: period must be 'day' or 'month', not {self.period!r}"
            )
        if self.scope not in ("agent", "tenant"):
            raise ConfigurationError(
                f"SpendLimit {self.name!r}: scope must be 'agent' or 'tenant', not {self.scope!r}"
            )
        if self.scope == "tenant" and not (isinstance(self.tenant, str) or callable(self.tenant)):
            raise ConfigurationError(
                f"SpendLimit {self.name!r}: scope='tenant' needs tenant= (a key, or a function "
                "of the run's input that returns one)"
            )

    def scope_key(self, call: FlowCall) -> str:
        """Whose spend a call counts toward: ``agent:<name>`` or ``tenant:<key>``."""
        if self.scope == "agent":
            return f"agent:{call.agent}"
        t = self.tenant
        if callable(t):
            try:
                key = str(t(call.input))
            except Exception as exc:  # every run without a key shares one bucket
                key = f"<error: {type(exc).__name__}>"
        else:
            key = str(t)
        return f"tenant:{key[:200]}"

    def bind(self, store: FlowStore) -> _SpendHandle:
        return _SpendHandle(self, store)


class _SpendHandle:
    def __init__(self, rule: SpendLimit, store: FlowStore) -> None:
        self.rule = rule
        self._store = store

    async def limit(self) -> float:
        override = await self._store.limit_override(self.rule.name)
        return self.rule.limit_usd if override is None else override

    async def acquire(self, call: FlowCall) -> Hold | Any:
        r = self.rule
        period, ends = period_bounds(r.period, time.time())
        scope = r.scope_key(call)
        spent = await self._store.spent(r.name, period, scope)
        limit = await self.limit()
        metrics.flow_usage(r.name, "usd", spent, limit)
        if spent < limit:
            return ADMIT
        return Hold(
            r.name,
            call.resource,
            f"${spent:.6g} of ${limit:g} per {r.period} ({scope})",
            ends,
            signal="flow.resume",
            overridable=True,
        )

    async def release(self, call: FlowCall, outcome: Outcome) -> None:
        if outcome.cost_usd > 0:
            period, _ = period_bounds(self.rule.period, time.time())
            await self._store.add_spend(
                self.rule.name, period, self.rule.scope_key(call), outcome.cost_usd
            )
            metrics.flow_spent(self.rule.name, outcome.cost_usd)
