"""Flow state in Redis: rate-limit windows, spend counters, waiting runs, operator limits.

Every key of one rule carries the rule's name as a hash tag (``<ns>:{flow.<rule>}:...``),
so on Redis Cluster a rule's keys share one slot and its scripts stay atomic. Scripts run
through redis-py's ``register_script`` (EVALSHA, loaded again after a restart).

Rate limits are a sliding-window log (see ``ACQUIRE``): exact, which a "never more than N
in any window" promise needs (GCRA lets up to 2N-1 through in some windows of one period).
Times are the Redis server's (``TIME``), so workers' clocks do not matter.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    import asyncio

    import redis.asyncio as aioredis

    class _Pipe(Protocol):
        def call(self, *args: bytes | str | int | float) -> asyncio.Future[Any]: ...


__all__ = ["FlowStore", "flow_key"]


def flow_key(ns: str, rule: str, part: str) -> str:
    """``<ns>:{flow.<rule>}:<part>``: every key of one rule is in one hash slot."""
    return f"{ns}:{{flow.{rule}}}:{part}"


# Sliding-window log. An entry's score is when it stops counting toward "now": while the
# call is in flight, admission + hold (a call whose worker died frees its place after hold);
# once it ended, its end time. The window holds entries with score > now - per. So two
# requests that reach the provider less than `per` apart were both counted when the later
# was admitted: requests arriving at the provider never exceed the limit in any window.
# KEYS: log (zset id -> score us), tokens (hash id -> tokens, plus '=total')
# ARGV: id, per_us, max_requests (0: none), max_tokens (0: none), tokens, hold_us
# Reply: {1, 0, '', requests, tokens} admitted (the window after it), or
# {0, wait_us, 'requests'|'tokens'}
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local per = tonumber(ARGV[2])
local cutoff = now - per
while true do
  local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, 200)
  if #old == 0 then break end
  local toks = redis.call('HMGET', KEYS[2], unpack(old))
  local freed = 0
  for i = 1, #toks do freed = freed + (tonumber(toks[i]) or 0) end
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('ZREM', KEYS[1], unpack(old))
  if freed ~= 0 then redis.call('HINCRBY', KEYS[2], '=total', 0 - freed) end
end
local count = redis.call('ZCARD', KEYS[1])
local maxreq = tonumber(ARGV[3])
local maxtok = tonumber(ARGV[4])
local want = tonumber(ARGV[5])
local function wait_for(entry_score)
  if entry_score > now then return math.max(math.floor(per / math.max(maxreq, 10)), 20000) end
  return entry_score + per - now + 1
end
if maxreq > 0 and count >= maxreq then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, wait_for(tonumber(first[2])), 'requests'}
end
if maxtok > 0 and count > 0 then
  local total = tonumber(redis.call('HGET', KEYS[2], '=total') or '0')
  if total + want > maxtok then
    -- Until enough of the oldest entries leave the window (a call larger than the whole
    -- budget goes alone, into an empty window).
    local rows = redis.call('ZRANGE', KEYS[1], 0, 199, 'WITHSCORES')
    local need = total + want - maxtok
    local score = tonumber(rows[#rows])
    for i = 1, #rows, 2 do
      need = need - (tonumber(redis.call('HGET', KEYS[2], rows[i])) or 0)
      if need <= 0 then score = tonumber(rows[i + 1]) break end
    end
    return {0, wait_for(score), 'tokens'}
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[6]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], want)
redis.call('HINCRBY', KEYS[2], '=total', want)
local ttl = math.floor((per + tonumber(ARGV[6])) / 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return {1, 0, '', count + 1, tonumber(redis.call('HGET', KEYS[2], '=total'))}
"""

# The call ended: it counts from now on for one window, with its actual tokens (-1: keep
# the reservation). With ARGV[3] == '1' it never reached the provider: drop it.
# KEYS: log, tokens. ARGV: id, tokens, drop
SETTLE = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if not old then return 0 end
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[2], '=total', 0 - tonumber(old))  -- never '-0'
  return 1
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
local actual = tonumber(ARGV[2])
if actual >= 0 then
  redis.call('HSET', KEYS[2], ARGV[1], actual)
  redis.call('HINCRBY', KEYS[2], '=total', actual - tonumber(old))
end
return 1
"""

_SPEND_TTL = 40 * 86400
"""A period's spend counters outlive a month, then go."""
_WAITING_GRACE = 60.0
"""Seconds past its wake-up time a waiting entry still counts (the wake-up takes a moment)."""


def _number(raw: Any, default: float | None) -> float | None:
    """A stored number; ``default`` for none or for something else (a hand-edited key must
    not fail runs: the configured limit applies)."""
    if not raw:
        return default
    try:
        v = float(raw)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


class FlowStore:
    """The Redis side of the flow rules of one namespace."""

    def __init__(
        self, client: aioredis.Redis, namespace: str = "stalwart", *, pipe: _Pipe | None = None
    ) -> None:
        self.redis = client
        self.ns = namespace
        self.pipe = pipe
        """The checkpoint store's auto-pipelined connection, when there is one: a script sent
        there skips redis-py's pool (a third of a step's cost, measured in bench/flow.py)."""
        self._acquire = client.register_script(ACQUIRE)
        self._settle = client.register_script(SETTLE)

    def key(self, rule: str, part: str) -> str:
        """See :func:`flow_key`."""
        return flow_key(self.ns, rule, part)

    async def _script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """``script`` down the pipe; on an error reply (NOSCRIPT after a restart) or a lost
        connection, through redis-py, which loads the script and retries."""
        if self.pipe is not None:
            try:
                reply = await self.pipe.call("EVALSHA", script.sha, len(keys), *keys, *args)
            except (RedisConnectionError, RedisTimeoutError):
                pass
            else:
                if not isinstance(reply, ResponseError):
                    return reply
        return await script(keys=keys, args=args)

    # -- rate limits ----------------------------------------------------------------------

    async def acquire(
        self,
        rule: str,
        member: str,
        per: float,
        requests: int,
        tokens: int,
        want: int,
        hold: float,
    ) -> tuple[bool, float, str, tuple[int, int]]:
        """Take a place in ``rule``'s window: (admitted, seconds to wait, what is full,
        (requests, tokens) in the window once admitted)."""
        reply = await self._script(
            self._acquire,
            [self.key(rule, "log"), self.key(rule, "tokens")],
            [member, int(per * 1e6), requests, tokens, want, int(hold * 1e6)],
        )
        if int(reply[0]) == 1:
            return True, 0.0, "", (int(reply[3]), int(reply[4]))
        what = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
        return False, int(reply[1]) / 1e6, what, (0, 0)

    async def settle(self, rule: str, member: str, tokens: int, *, drop: bool = False) -> None:
        """The call ``member`` ended (``tokens`` actual, -1 unknown), or never ran (drop)."""
        await self._script(
            self._settle,
            [self.key(rule, "log"), self.key(rule, "tokens")],
            [member, tokens, "1" if drop else "0"],
        )

    async def window(self, rule: str, per: float) -> tuple[int, int]:
        """(requests, tokens) in ``rule``'s window now, for display: read-only commands
        and this process's clock (the limit itself uses the Redis server's)."""
        since = int((time.time() - per) * 1e6)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(self.key(rule, "log"), f"({since}", "+inf")
            pipe.hget(self.key(rule, "tokens"), "=total")
            n, total = await pipe.execute()
        return int(n), int(total or 0)

    # -- spend ------------------------------------------------------------------------------

    async def spent(self, rule: str, period: str, scope: str) -> float:
        """USD spent under ``rule`` by ``scope`` in ``period``."""
        raw = await self.redis.hget(self.key(rule, f"spend:{period}"), scope)
        return _number(raw, 0.0) or 0.0

    async def add_spend(self, rule: str, period: str, scope: str, usd: float) -> None:
        """Count ``usd`` more for ``scope`` in ``period``."""
        key = self.key(rule, f"spend:{period}")
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrbyfloat(key, scope, usd)
            pipe.expire(key, _SPEND_TTL)
            await pipe.execute()

    async def spend_table(self, rule: str, period: str) -> dict[str, float]:
        """Every scope's spend in ``period``."""
        raw = cast(
            "dict[bytes, bytes]",
            await self.redis.hgetall(self.key(rule, f"spend:{period}")),
        )
        return {k.decode(errors="replace"): _number(v, 0.0) or 0.0 for k, v in raw.items()}

    async def limit_override(self, rule: str) -> float | None:
        """The limit an operator set for ``rule`` (None: the configured one)."""
        raw = await self.redis.get(self.key(rule, "limit"))
        return _number(raw, None)

    async def set_limit(self, rule: str, value: float | None) -> None:
        """Set (or with None, clear) the operator's limit for ``rule``."""
        if value is None:
            await self.redis.delete(self.key(rule, "limit"))
        else:
            await self.redis.set(self.key(rule, "limit"), repr(float(value)))

    # -- waiting runs -----------------------------------------------------------------------

    async def mark_waiting(self, rule: str, run_id: str, until: float) -> int:
        """``run_id`` waits on ``rule`` until ``until`` (0: a signal; kept a day); returns
        how many runs wait on it now, this one included."""
        score = until if until else time.time() + 86400
        key = self.key(rule, "waiting")
        async with self.redis.pipeline(transaction=False) as pipe:
            # Runs cancelled while they waited never take themselves off: prune them here.
            pipe.zremrangebyscore(key, "-inf", time.time() - _WAITING_GRACE)
            pipe.zadd(key, {run_id: score})
            pipe.zcard(key)
            *_, n = await pipe.execute()
        return int(n)

    async def unmark_waiting(self, rule: str, run_id: str) -> bool:
        """``run_id`` no longer waits on ``rule`` (True: it did)."""
        return bool(await self.redis.zrem(self.key(rule, "waiting"), run_id))

    async def waiting(self, rule: str) -> list[str]:
        """Runs waiting on ``rule``, leaving out entries well past their time (a run
        cancelled while it waited never takes itself off)."""
        key = self.key(rule, "waiting")
        rows: list[Any] = await self.redis.zrangebyscore(key, time.time() - _WAITING_GRACE, "+inf")
        return [r.decode() if isinstance(r, bytes) else str(r) for r in rows]
