"""What the shared breakers and retry budgets look like now, for the CLI and the console.

Read from Redis alone (the rules in use register themselves, ``registry_key``), so a client
without the app's code sees them. Times are the Redis server's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import msgspec

from stalwart.flow._breakers import breaker_key, registry_key
from stalwart.flow._budget import BUCKETS, budget_key
from stalwart.flow._store import FlowStore

if TYPE_CHECKING:
    from stalwart import Client

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


async def _now(redis: Any) -> float:
    sec, usec = await redis.time()
    return float(sec) + float(usec) / 1e6


async def breaker_snapshot(client: Client) -> list[BreakerStatus]:
    """Every shared breaker that has opened at least once (and not expired), by rule."""
    store = FlowStore(client.store.redis, client.store.ns)
    redis = store.redis
    rules = await redis.hgetall(registry_key(store.ns, "breaker"))
    now = await _now(redis)
    out: list[BreakerStatus] = []
    for raw_name, raw_conf in sorted(rules.items()):
        name, cooldown = _s(raw_name), float(_s(raw_conf).split(",")[1])
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


async def retry_budget_snapshot(client: Client) -> list[RetryBudgetStatus]:
    """Every retry budget in use, with what it grants over its current window."""
    store = FlowStore(client.store.redis, client.store.ns)
    redis = store.redis
    rules = await redis.hgetall(registry_key(store.ns, "budget"))
    now = await _now(redis)
    out: list[RetryBudgetStatus] = []
    for raw_name, raw_conf in sorted(rules.items()):
        name = _s(raw_name)
        ratio, floor, window = (float(x) for x in _s(raw_conf).split(","))
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
