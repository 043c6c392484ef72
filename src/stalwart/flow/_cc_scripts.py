"""The Lua scripts of concurrency limits: one atomic script per acquire, release, renewal.

Every key of one rule shares the hash tag ``{flow.<rule>}`` (``<ns>:{flow.<rule>}:cc:...``),
so each script is atomic on Redis Cluster too. The declared keys are:

- ``KEYS[1]`` ``...:hold``  zset: slot holders (run id -> expiry, ms, Redis clock)
- ``KEYS[2]`` ``...:meta``  hash: ``tok:<run>`` (holder's token; "" for a reservation),
  ``key:<run>`` (its key), ``n:<key>`` (holders per key), ``name:<key>`` (a hashed key's
  value), counters ``ctr:wseq``, ``ctr:turn``, ``ctr:disp``
- ``KEYS[3]`` ``...:ring``  zset: keys with waiting runs, in the order they are served
- ``KEYS[4]`` ``...:req``   hash: run id -> the parked request (lane, NUL, request bytes)

and one wait list per key, ``...:w:<key>`` (zset: run id -> ``-priority * 1e10 + seq``),
named from the same prefix inside the scripts (same slot as the declared keys).

A ring score is ``-priority(head) * 1e10 + turn``: the key whose next run has the highest
priority is served first, and keys of equal priority take turns (a served key gets a new
turn, behind every key already waiting). Counters stay below 1e10 for ten billion parks.
"""

from __future__ import annotations

_PRELUDE = r"""
local hold, meta, ring, req = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix = string.sub(hold, 1, -6)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local P = 10000000000
local out = {}

local function wkey(k) return prefix .. ':w:' .. k end

local function count(k) return tonumber(redis.call('HGET', meta, 'n:' .. k) or '0') end

local function forget_name(k)
  if count(k) <= 0 and redis.call('EXISTS', wkey(k)) == 0 then
    redis.call('HDEL', meta, 'n:' .. k, 'name:' .. k)
  end
end

local function drop_holder(rid)
  local k = redis.call('HGET', meta, 'key:' .. rid)
  redis.call('ZREM', hold, rid)
  redis.call('HDEL', meta, 'tok:' .. rid, 'key:' .. rid)
  if k then
    redis.call('HINCRBY', meta, 'n:' .. k, -1)
    forget_name(k)
  end
end

local function dispatch(rid)
  local n = redis.call('HINCRBY', meta, 'ctr:disp', 1)
  out[#out + 1] = rid
  out[#out + 1] = redis.call('HGET', req, rid) or ''
  out[#out + 1] = tostring(n)
end

-- Holders whose worker stopped renewing them (dead, or lost the run's lease). A reservation
-- whose request never arrived (lost with its publisher) is published again instead.
local function evict(rttl)
  local due = redis.call('ZRANGEBYSCORE', hold, '-inf', now, 'LIMIT', 0, 100)
  for _, rid in ipairs(due) do
    if redis.call('HGET', meta, 'tok:' .. rid) == '' and redis.call('HGET', req, rid) then
      redis.call('ZADD', hold, now + rttl, rid)
      dispatch(rid)
    else
      drop_holder(rid)
    end
  end
end

-- Runs of key k before run rid (ZCOUNT, not ZRANK: the worker's ACL has the former).
local function ahead(k, rid)
  local sc = redis.call('ZSCORE', wkey(k), rid)
  if not sc then return 0 end
  return redis.call('ZCOUNT', wkey(k), '-inf', '(' .. sc)
end

local function ring_score(k, turn)
  local head = redis.call('ZRANGE', wkey(k), 0, 0, 'WITHSCORES')
  if #head == 0 then return nil end
  return math.floor(tonumber(head[2]) / P) * P + turn
end

-- Give free slots to waiting runs, best ring position first, skipping full keys (the
-- first ``scan`` keys of the ring are looked at per slot).
local function fill(limit, total, rttl, scan)
  while total == 0 or redis.call('ZCARD', hold) < total do
    local pick = nil
    for _, k in ipairs(redis.call('ZRANGE', ring, 0, scan - 1)) do
      if count(k) < limit then pick = k break end
    end
    if not pick then return end
    local head = redis.call('ZRANGE', wkey(pick), 0, 0)
    if #head == 0 then
      redis.call('ZREM', ring, pick)
    else
      local rid = head[1]
      redis.call('ZREM', wkey(pick), rid)
      redis.call('ZADD', hold, now + rttl, rid)
      redis.call('HSET', meta, 'tok:' .. rid, '', 'key:' .. rid, pick)
      redis.call('HINCRBY', meta, 'n:' .. pick, 1)
      dispatch(rid)
      local sc = ring_score(pick, redis.call('HINCRBY', meta, 'ctr:turn', 1))
      if sc then redis.call('ZADD', ring, sc, pick) else redis.call('ZREM', ring, pick) end
    end
  end
end
"""

ACQUIRE = (
    _PRELUDE
    + r"""
-- ARGV: run id, key, token, ttl ms, limit, total, priority, payload, reservation ttl ms,
--       scan, key value (for people)
local rid, k, tok = ARGV[1], ARGV[2], ARGV[3]
local ttl, limit, total = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local prio, rttl, scan = tonumber(ARGV[7]), tonumber(ARGV[9]), tonumber(ARGV[10])
evict(rttl)
fill(limit, total, rttl, scan)
local result, waited, pos = 'ok', 0, 0
if redis.call('ZSCORE', hold, rid) then
  -- Held already (a new placement of a run that held a slot) or reserved for it.
  if redis.call('HGET', meta, 'tok:' .. rid) == '' then waited = 1 end
  redis.call('ZADD', hold, now + ttl, rid)
  redis.call('HSET', meta, 'tok:' .. rid, tok)
  redis.call('HDEL', req, rid)
elseif redis.call('ZSCORE', wkey(k), rid) then
  result = 'queued'
  pos = ahead(k, rid)
elseif count(k) < limit and (total == 0 or redis.call('ZCARD', hold) < total) then
  redis.call('ZADD', hold, now + ttl, rid)
  redis.call('HSET', meta, 'tok:' .. rid, tok, 'key:' .. rid, k)
  redis.call('HINCRBY', meta, 'n:' .. k, 1)
else
  result = 'parked'
  local seq = redis.call('HINCRBY', meta, 'ctr:wseq', 1)
  redis.call('ZADD', wkey(k), -prio * P + seq, rid)
  redis.call('HSET', req, rid, ARGV[8])
  if ARGV[11] ~= k then redis.call('HSET', meta, 'name:' .. k, ARGV[11]) end
  local cur = redis.call('ZSCORE', ring, k)
  local turn
  if cur then
    cur = tonumber(cur)
    turn = cur - math.floor(cur / P) * P
  else
    turn = redis.call('HINCRBY', meta, 'ctr:turn', 1)
  end
  redis.call('ZADD', ring, ring_score(k, turn), k)
  fill(limit, total, rttl, scan)
  pos = ahead(k, rid)
end
local reply = {result, waited, pos}
for _, v in ipairs(out) do reply[#reply + 1] = v end
return reply
"""
)

RELEASE = (
    _PRELUDE
    + r"""
-- ARGV: run id, token, limit, total, reservation ttl ms, scan
local rid, tok = ARGV[1], ARGV[2]
local limit, total = tonumber(ARGV[3]), tonumber(ARGV[4])
local rttl, scan = tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('HGET', meta, 'tok:' .. rid) == tok then drop_holder(rid) end
evict(rttl)
fill(limit, total, rttl, scan)
return out
"""
)

SWEEP = (
    _PRELUDE
    + r"""
-- ARGV: limit, total, reservation ttl ms, scan
local limit, total = tonumber(ARGV[1]), tonumber(ARGV[2])
local rttl, scan = tonumber(ARGV[3]), tonumber(ARGV[4])
evict(rttl)
fill(limit, total, rttl, scan)
return out
"""
)

RENEW = r"""
-- KEYS: hold, meta. ARGV: ttl ms, then run id and token pairs. Returns the run ids whose
-- slot is no longer theirs (evicted, or taken over by a newer placement).
local hold, meta = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  if redis.call('HGET', meta, 'tok:' .. ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', hold, 'XX', now + ttl, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""
