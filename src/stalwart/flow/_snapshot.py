"""What the flow rules look like now, for the CLI, the console and operators.

Workers publish the rules of their app when they start (``publish_rules``: one hash,
``<ns>:flow:rules``, rule name -> its settings as JSON); :func:`flow_snapshot` reads them
back with each rule's current usage and the runs waiting on it. Neither needs the app's code.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

import msgspec

from stalwart.flow._limits import period_bounds
from stalwart.flow._store import FlowStore

if TYPE_CHECKING:
    from collections.abc import Sequence

    import redis.asyncio as aioredis

    from stalwart.flow._rules import FlowRule

__all__ = ["LimitSnapshot", "RuleInfo", "flow_snapshot", "publish_rules", "rule_info"]


class RuleInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A rule as published: its kind (class name), app, resources and plain settings."""

    name: str
    kind: str
    app: str = ""
    resources: list[str] = msgspec.field(default_factory=list)
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    """The rule's settings that are plain data (functions, such as estimators, are left out)."""
    at: float = 0.0
    """When a worker last published it (its start)."""


class LimitSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One rule now: its settings, what is used of it, and the runs waiting on it."""

    name: str
    kind: str
    app: str
    resources: list[str]
    settings: dict[str, Any]
    used: dict[str, float] = msgspec.field(default_factory=dict)
    """Rate limits: ``requests`` and ``tokens`` in the window now. Spend limits: USD by
    scope (``agent:<name>``, ``tenant:<key>``) in the current period."""
    limit: dict[str, float] = msgspec.field(default_factory=dict)
    """The limits in force (a spend limit's ``usd`` is the operator's, once one is set)."""
    period: str = ""
    """Spend limits: the current period (``2026-12-03``, ``2026-12``)."""
    waiting: list[str] = msgspec.field(default_factory=list)
    """Ids of the runs waiting on the rule now (in place or passivated)."""
    published_at: float = 0.0
    """When a worker last published the rule (a worker publishes its app's rules at start)."""


class _HasStore(Protocol):
    @property
    def store(self) -> Any: ...


def _plain(v: Any) -> bool:
    if isinstance(v, list | tuple):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, str | int | float | bool)


def rule_info(rule: FlowRule, app: str = "") -> RuleInfo:
    """How ``rule`` is published."""
    settings = {
        f.name: getattr(rule, f.name)
        for f in dataclasses.fields(rule)
        if f.name not in ("name", "resources") and _plain(getattr(rule, f.name))
    }
    return RuleInfo(
        name=rule.name,
        kind=type(rule).__name__,
        app=app,
        resources=list(rule.patterns),
        settings=settings,
        at=time.time(),
    )


def _rules_key(ns: str) -> str:
    return f"{ns}:flow:rules"


async def publish_rules(store: FlowStore, rules: Sequence[FlowRule], app: str = "") -> None:
    """Record ``rules`` (a worker does at start; the last worker to start wins a name), and
    forget rules this app published before but no longer has."""
    key = _rules_key(store.ns)
    names = {r.name for r in rules}
    gone = [i.name for i in await published_rules(store.redis, store.ns) if i.app == app]
    gone = [n for n in gone if n not in names]
    if gone:
        await store.redis.hdel(key, *gone)
    if rules:
        await store.redis.hset(
            key, mapping={r.name: msgspec.json.encode(rule_info(r, app)) for r in rules}
        )


async def published_rules(redis: aioredis.Redis, ns: str) -> list[RuleInfo]:
    """Every published rule, by name."""
    raw = cast("dict[bytes, bytes]", await redis.hgetall(_rules_key(ns)))
    out = []
    for _, v in sorted(raw.items()):
        try:
            out.append(msgspec.json.decode(v, type=RuleInfo))
        except msgspec.DecodeError:
            continue  # a newer release's record: show the others
    return out


async def flow_snapshot(client: _HasStore) -> list[LimitSnapshot]:
    """Every published flow rule with its usage now and its waiting runs.

    ``client`` is a :class:`~stalwart.Client` (anything with a ``store``, a
    ``CheckpointStore``).
    """
    cs = client.store
    fs = FlowStore(cs.redis, cs.ns)
    out = []
    for info in await published_rules(cs.redis, cs.ns):
        used: dict[str, float] = {}
        limit: dict[str, float] = {}
        period = ""
        s = info.settings
        if info.kind == "RateLimit":
            n, tokens = await fs.window(info.name, float(s.get("per") or 60.0))
            used = {"requests": n, "tokens": tokens}
            limit = {k: float(s[k]) for k in ("requests", "tokens") if s.get(k)}
        elif info.kind == "SpendLimit":
            period, _ = period_bounds(str(s.get("period", "day")), time.time())
            used = await fs.spend_table(info.name, period)
            override = await fs.limit_override(info.name)
            limit = {"usd": override if override is not None else float(s.get("limit_usd", 0))}
        waiting: list[str] | None = None
        if info.kind == "ConcurrencyLimit":
            # Runs parked for a slot (stalwart.flow._cc_store), not the step gate's waiters.
            from stalwart.flow._cc_store import ConcurrencySlots, waiting_runs

            slots = ConcurrencySlots(cs.redis, cs.ns, reserve_ttl=0)
            cap, total = int(s.get("limit", 0)), int(s.get("total", 0))
            usage = await slots.snapshot(info.name, cap, total)
            used = {"running": usage.running, "waiting_keys": usage.waiting_keys}
            limit = {"per_key": cap, **({"total": total} if total else {})}
            waiting = await waiting_runs(cs.redis, cs.ns, info.name)
        out.append(
            LimitSnapshot(
                name=info.name,
                kind=info.kind,
                app=info.app,
                resources=info.resources,
                settings=info.settings,
                used=used,
                limit=limit,
                period=period,
                waiting=waiting if waiting is not None else await fs.waiting(info.name),
                published_at=info.at,
            )
        )
    return out
