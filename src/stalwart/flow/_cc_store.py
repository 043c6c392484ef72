"""Concurrency slots in Redis: acquire or park, release and hand on, renew, sweep, read.

One :class:`ConcurrencySlots` per process, over the process's Redis client. Each call is
one script (:mod:`._cc_scripts`) over the keys of one rule. A call that frees a slot
returns the runs it handed the slot to (:class:`Dispatch`): the caller publishes their
requests again, and until a worker places one, its slot is reserved for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import msgspec

from stalwart.flow._concurrency import key_tag

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from stalwart.flow._concurrency import ConcurrencyLimit

from stalwart.flow._cc_scripts import ACQUIRE, RELEASE, RENEW, SWEEP
from stalwart.flow._snapshot import published_rules

SCAN = 64
"""Keys of the ring looked at per freed slot: a waiting run whose key is full is skipped,
and a slot stays unassigned (until the next release or sweep) only when the first SCAN keys
with waiting runs are all full."""

TOP_KEYS = 20
"""Keys reported per rule by :meth:`ConcurrencySlots.snapshot` (bounded metric labels)."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A waiting run that was given a slot: publish its request again."""

    run_id: str
    lane: str
    request: bytes
    number: int
    """Unique per rule: part of the republished request's message id."""


@dataclass(frozen=True, slots=True)
class Acquired:
    """What an acquire did: ``ok`` (the run holds a slot), ``parked`` (it waits now),
    ``queued`` (it was waiting already: a duplicate request)."""

    outcome: Literal["ok", "parked", "queued"]
    waited: bool
    """``ok`` for a run that had waited (its reserved slot)."""
    position: int
    """For a waiting run: how many runs of its key are ahead of it."""
    dispatched: tuple[Dispatch, ...]


class ConcurrencyKeyUsage(msgspec.Struct, frozen=True):
    """One key of a rule: runs executing and waiting."""

    key: str
    running: int
    waiting: int


class ConcurrencyUsage(msgspec.Struct, frozen=True):
    """One concurrency limit's state (the busiest and the waiting keys, at most TOP_KEYS)."""

    rule: str
    limit: int
    total: int
    running: int
    """Slots held across all keys (reservations included)."""
    waiting_keys: int
    """Keys with waiting runs."""
    keys: list[ConcurrencyKeyUsage]


def _dispatches(raw: list[bytes]) -> tuple[Dispatch, ...]:
    out = []
    for i in range(0, len(raw) - 2, 3):
        payload = bytes(raw[i + 1])
        lane, _, request = payload.partition(b"\0")
        out.append(Dispatch(bytes(raw[i]).decode(), lane.decode(), request, int(raw[i + 2])))
    return tuple(out)


class ConcurrencySlots:
    """The Redis side of every concurrency limit of a namespace."""

    def __init__(self, redis: aioredis.Redis, namespace: str, *, reserve_ttl: float) -> None:
        self.redis = redis
        self.namespace = namespace
        self.reserve_ms = int(reserve_ttl * 1000)
        self._acquire = redis.register_script(ACQUIRE)
        self._release = redis.register_script(RELEASE)
        self._sweep = redis.register_script(SWEEP)
        self._renew = redis.register_script(RENEW)

    def prefix(self, rule: str) -> str:
        """``<ns>:{flow.<rule>}:cc``: every key of the rule (one hash slot, the one of the
        rule's name like every flow rule's keys)."""
        return f"{self.namespace}:{{flow.{rule}}}:cc"

    def keys(self, rule: str) -> list[str]:
        """The declared keys of the rule's scripts."""
        p = self.prefix(rule)
        return [f"{p}:hold", f"{p}:meta", f"{p}:ring", f"{p}:req"]

    async def acquire(
        self,
        rule: ConcurrencyLimit,
        key: str,
        run_id: str,
        token: str,
        *,
        ttl: float,
        priority: int,
        lane: str,
        request: bytes,
    ) -> Acquired:
        """Take a slot of ``key`` for ``run_id`` (held under ``token`` for ``ttl`` seconds,
        renewable), or park the request (``lane`` and bytes) until one frees."""
        tag = key_tag(key)
        raw = await self._acquire(
            keys=self.keys(rule.name),
            args=[
                run_id,
                tag,
                token,
                int(ttl * 1000),
                rule.limit,
                rule.total,
                priority,
                lane.encode() + b"\0" + request,
                self.reserve_ms,
                SCAN,
                key,
            ],
        )
        raw = cast("list[bytes]", raw)
        outcome = bytes(raw[0]).decode()
        return Acquired(
            outcome=cast("Literal['ok', 'parked', 'queued']", outcome),
            waited=int(raw[1]) == 1,
            position=int(raw[2]),
            dispatched=_dispatches(raw[3:]),
        )

    async def release(
        self, rule: ConcurrencyLimit, run_id: str, token: str
    ) -> tuple[Dispatch, ...]:
        """Give up ``run_id``'s slot if ``token`` still holds it; the runs handed the freed
        slots."""
        raw = await self._release(
            keys=self.keys(rule.name),
            args=[run_id, token, rule.limit, rule.total, self.reserve_ms, SCAN],
        )
        return _dispatches(cast("list[bytes]", raw))

    async def sweep(self, rule: ConcurrencyLimit) -> tuple[Dispatch, ...]:
        """Free the slots of holders nobody renewed, and hand them to waiting runs."""
        raw = await self._sweep(
            keys=self.keys(rule.name), args=[rule.limit, rule.total, self.reserve_ms, SCAN]
        )
        return _dispatches(cast("list[bytes]", raw))

    async def renew(self, rule: str, held: list[tuple[str, str]], ttl: float) -> list[str]:
        """Extend the slots ``held`` (run id, token) by ``ttl``; the run ids that lost theirs."""
        if not held:
            return []
        args: list[str | int] = [int(ttl * 1000)]
        for run_id, token in held:
            args += [run_id, token]
        raw = await self._renew(keys=self.keys(rule)[:2], args=args)
        return [bytes(r).decode() for r in cast("list[bytes]", raw)]

    async def snapshot(self, name: str, limit: int, total: int) -> ConcurrencyUsage:
        """Rule ``name``'s slots in use and waiting runs, for the busiest keys.

        Only commands of the viewer's Redis role (ZCOUNT for a size: ZCARD is not one)."""
        hold, meta, ring, _ = self.keys(name)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(hold, "-inf", "+inf")
            pipe.hgetall(meta)
            pipe.zrange(ring, 0, TOP_KEYS - 1)
            pipe.zcount(ring, "-inf", "+inf")
            running, fields, ring_keys, waiting_keys = await pipe.execute()
        counts: dict[str, int] = {}
        names: dict[str, str] = {}
        for f, v in cast("dict[bytes, bytes]", fields).items():
            field = f.decode()
            if field.startswith("n:"):
                counts[field[2:]] = int(v)
            elif field.startswith("name:"):
                names[field[5:]] = v.decode()
        busiest = sorted(counts, key=lambda k: -counts[k])[:TOP_KEYS]
        shown = list(dict.fromkeys([*(k.decode() for k in ring_keys), *busiest]))[:TOP_KEYS]
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in shown:
                pipe.zcount(f"{self.prefix(name)}:w:{k}", "-inf", "+inf")
            waits = await pipe.execute() if shown else []
        keys = [
            ConcurrencyKeyUsage(key=names.get(k, k), running=counts.get(k, 0), waiting=int(w))
            for k, w in zip(shown, waits, strict=True)
        ]
        return ConcurrencyUsage(
            rule=name,
            limit=limit,
            total=total,
            running=int(running),
            waiting_keys=int(waiting_keys),
            keys=keys,
        )


async def concurrency_snapshot(
    client: Any, rules: tuple[ConcurrencyLimit, ...] | None = None
) -> list[ConcurrencyUsage]:
    """Every concurrency limit's slots in use and waiting runs (the busiest keys of each).

    ``client`` is a connected :class:`~stalwart.Client`. Without ``rules`` (an app's
    ``flow``), the limits are those the namespace's workers published when they started
    (``stalwart.flow.publish_rules``). For the CLI and the console; two Redis round trips
    per limit.
    """
    store = client.store
    slots = ConcurrencySlots(store.redis, store.keys.namespace, reserve_ttl=0)
    if rules is None:
        known = [
            (info.name, int(info.settings.get("limit", 0)), int(info.settings.get("total", 0)))
            for info in await published_rules(store.redis, store.keys.namespace)
            if info.kind == "ConcurrencyLimit"
        ]
    else:
        known = [(r.name, r.limit, r.total) for r in rules]
    return [await slots.snapshot(name, limit, total) for name, limit, total in known]


async def waiting_runs(
    redis: aioredis.Redis, namespace: str, rule: str, *, most: int = 100
) -> list[str]:
    """Run ids waiting under ``rule`` (the first keys of its ring, up to ``most`` ids)."""
    slots = ConcurrencySlots(redis, namespace, reserve_ttl=0)
    out: list[str] = []
    ring = cast("list[bytes]", await redis.zrange(slots.keys(rule)[2], 0, TOP_KEYS - 1))
    for k in ring:
        wait = f"{slots.prefix(rule)}:w:{k.decode()}"
        ids = cast("list[bytes]", await redis.zrange(wait, 0, most - len(out) - 1))
        out += [i.decode() for i in ids]
        if len(out) >= most:
            break
    return out
