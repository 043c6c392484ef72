"""The builds registry: when each build first served, and the operator's drain/retire marks.

Stored in Redis (one hash, ``<namespace>:builds``), beside the run records: the questions
asked of it ("which builds have runs in flight", "may this build be retired") join it with
the records' ``build`` field, and it needs no new NATS bucket (nor new NATS permissions).
Workers read it on every heartbeat, so a drain takes effect within one heartbeat.
"""

from __future__ import annotations

import time
from typing import Any, Literal, cast

import msgspec

BuildState = Literal["active", "draining", "retired"]


class BuildEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One build in the registry."""

    build: str = ""
    first_seen: float = 0.0
    """When a worker of this build first registered it (epoch seconds): the newest build
    is the one first seen last."""
    state: BuildState = "active"
    """``draining``: no new runs go to it; ``retired``: no runs at all go to it."""
    moved_to: str = ""
    """For a build retired with ``--force``: the build whose workers resume its runs."""


_decode = msgspec.json.Decoder(BuildEntry)


def builds_key(namespace: str) -> str:
    """Redis key of the registry hash."""
    return f"{namespace}:builds"


class Seen(msgspec.Struct, frozen=True):
    """When a worker of a build last said it serves, and which agents."""

    at: float
    agents: list[str]


_decode_seen = msgspec.json.Decoder(Seen)


class BuildRegistry:
    """Read and mark builds (``redis`` is an asyncio Redis client)."""

    def __init__(self, redis: Any, namespace: str) -> None:
        self.redis = redis
        self.key = builds_key(namespace)
        self.seen_key = f"{self.key}:seen"

    async def register(self, build: str) -> None:
        """Record ``build`` as first seen now, unless it is known already."""
        entry = BuildEntry(build=build, first_seen=time.time())
        await self.redis.hsetnx(self.key, build, msgspec.json.encode(entry))

    async def seen(self, build: str, agents: list[str]) -> None:
        """Say a worker of ``build`` serves ``agents`` now (every worker on every heartbeat:
        one write, instead of every worker reading every other's heartbeat)."""
        await self.redis.hset(self.seen_key, build, msgspec.json.encode(Seen(time.time(), agents)))

    async def live(self, max_age: float) -> dict[str, set[str]]:
        """``{build: agents}`` of the builds a worker said it serves within ``max_age`` s."""
        raw = cast("dict[bytes, bytes]", await self.redis.hgetall(self.seen_key))
        now, out = time.time(), {}
        for field, value in raw.items():
            try:
                seen = _decode_seen.decode(value)
            except msgspec.DecodeError:
                continue
            if now - seen.at <= max_age:
                out[field.decode()] = set(seen.agents)
        return out

    async def entries(self) -> dict[str, BuildEntry]:
        """Every known build (entries that do not decode are skipped)."""
        raw = cast("dict[bytes, bytes]", await self.redis.hgetall(self.key))
        out: dict[str, BuildEntry] = {}
        for field, value in raw.items():
            try:
                entry = _decode.decode(value)
            except msgspec.DecodeError:
                continue
            out[field.decode()] = msgspec.structs.replace(entry, build=field.decode())
        return out

    async def mark(self, build: str, state: BuildState, moved_to: str = "") -> BuildEntry:
        """Set ``build``'s state (registering it if unknown) and return the new entry."""
        old = (await self.entries()).get(build) or BuildEntry(build=build, first_seen=time.time())
        entry = msgspec.structs.replace(old, state=state, moved_to=moved_to)
        await self.redis.hset(self.key, build, msgspec.json.encode(entry))
        return entry


def newest(entries: dict[str, BuildEntry], live: set[str]) -> str:
    """The build new runs go to: the newest active build among ``live`` ones ("" if none)."""
    usable = [e for b, e in entries.items() if b in live and e.state == "active"]
    return max(usable, key=lambda e: (e.first_seen, e.build)).build if usable else ""
