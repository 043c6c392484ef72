"""What the shared breakers and retry budgets look like now, for the CLI and the console.

Read from Redis alone (the rules the workers published, ``publish_rules``, and per rule the
set of resources whose breaker opened or whose budget was used), so a client without the
app's code sees them. Remaining times are read against this host's clock.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart.flow._breakers import breaker_key
from stalwart.flow._budget import BUCKETS, budget_key
from stalwart.flow._snapshot import published_rules
from stalwart.flow._store import FlowStore

if TYPE_CHECKING:
    from stalwart.flow._snapshot import _HasStore

__all__ = ["BreakerStatus", "RetryBudgetStatus", "breaker_snapshot", "retry_budget_snapshot"]


class BreakerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One shared breaker: ``state`` is ``closed``, ``open`` or ``half_open``."""

    rule: str
    breaker: str
    """The resource (``kind:name``), or ``*`` for a rule with one breaker for all."""
    state: str
    failures: int
    """Failures since the last success."""
    retry_in: float
    """Seconds until the next probe may go (0 unless open)."""
    probing: bool
    """A half-open probe is in flight somewhere in the fleet."""
    opens: int
    """Times it opened since its key was created."""


class RetryBudgetStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One retry budget over its current window."""

    rule: str
    budget: str
    successes: int
    retries: int
    allowed: int
    available: int
    window: float


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _now() -> float:
    # This host's clock against the Redis server's (the scripts' clock): a display's
    # precision, and no TIME command, which the client and viewer ACLs do not grant.
    return time.time()


async def breaker_snapshot(client: _HasStore) -> list[BreakerStatus]:
    """Every shared breaker that has opened at least once (and not expired), by rule.

    ``client`` is a :class:`~stalwart.Client` (anything with a ``store``).
    """
    store = FlowStore(client.store.redis, client.store.ns)
    redis = store.redis
    now = _now()
    out: list[BreakerStatus] = []
    for info in await published_rules(redis, store.ns):
        if info.kind != "SharedBreaker":
            continue
        name, cooldown = info.name, float(info.settings.get("cooldown", 30.0))
        for b in sorted(_s(m) for m in await redis.smembers(store.key(name, "breakers"))):
            f = await redis.hmget(
                breaker_key(store, name, b), ["opened_at", "failures", "probe_until", "opens"]
            )
            opened = float(f[0]) if f[0] else 0.0
            retry_in = max(opened + cooldown - now, 0.0) if opened else 0.0
            state = "closed" if not opened else ("open" if retry_in > 0 else "half_open")
            out.append(
                BreakerStatus(
                    rule=name,
                    breaker=b,
                    state=state,
                    failures=int(f[1] or 0),
                    retry_in=round(retry_in, 3),
                    probing=bool(opened and f[2] and float(f[2]) > now),
                    opens=int(f[3] or 0),
                )
            )
    return out


async def retry_budget_snapshot(client: _HasStore) -> list[RetryBudgetStatus]:
    """Every retry budget in use, with what it grants over its current window."""
    store = FlowStore(client.store.redis, client.store.ns)
    redis = store.redis
    now = _now()
    out: list[RetryBudgetStatus] = []
    for info in await published_rules(redis, store.ns):
        if info.kind != "RetryBudget":
            continue
        name, conf = info.name, info.settings
        ratio, window = float(conf.get("ratio", 0.1)), float(conf.get("window", 10.0))
        floor = float(conf.get("min_per_second", 1.0)) * window
        oldest = math.floor(now / (window / BUCKETS)) - BUCKETS + 1
        for b in sorted(_s(m) for m in await redis.smembers(store.key(name, "budgets"))):
            counts = {"s": 0, "r": 0}
            for field, value in (await redis.hgetall(budget_key(store, name, b))).items():
                f = _s(field)
                if f[1:].lstrip("-").isdigit() and int(f[1:]) >= oldest and f[0] in counts:
                    counts[f[0]] += int(value)
            allowed = math.floor(ratio * counts["s"]) + math.ceil(floor - 1e-6)
            out.append(
                RetryBudgetStatus(
                    rule=name,
                    budget=b,
                    successes=counts["s"],
                    retries=counts["r"],
                    allowed=allowed,
                    available=max(allowed - counts["r"], 0),
                    window=window,
                )
            )
    return out


async def breaker_details(client: _HasStore) -> dict[str, list[BreakerStatus | RetryBudgetStatus]]:
    """Shared breakers and retry budgets by rule name (what ``stalwart flow`` shows under
    each such rule)."""
    out: dict[str, list[BreakerStatus | RetryBudgetStatus]] = {}
    items: list[BreakerStatus | RetryBudgetStatus] = [*await breaker_snapshot(client)]
    items += await retry_budget_snapshot(client)
    for item in items:
        out.setdefault(item.rule, []).append(item)
    return out


def detail_line(item: BreakerStatus | RetryBudgetStatus) -> str:
    """One line for a breaker or a budget, for the text output of ``stalwart flow``."""
    if isinstance(item, BreakerStatus):
        extra = f", next probe in {item.retry_in:g}s" if item.state == "open" else ""
        extra += ", probe in flight" if item.probing else ""
        return f"{item.breaker}: {item.state} ({item.failures} failures{extra})"
    return (
        f"{item.budget}: {item.available} of {item.allowed} retries left "
        f"({item.retries} used, {item.successes} successes in {item.window:g}s)"
    )
