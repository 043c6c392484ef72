"""Lua scripts of the conversation store, run with EVALSHA (Redis 6.2 and 7.x alike).

Every key of a conversation carries ``{conv.<id>}`` as its hash tag (``_conversations``), so
on Redis Cluster one script's keys share a slot and the script stays atomic there.

The meta hash holds ``holder`` (the run id holding the conversation, '' when free), ``fence``
(grows every time the hold changes hands), ``epoch`` (the holder run's epoch: a frozen older
owner of the same run is fenced too), ``turns`` (completed turns), ``committed`` (items of
completed turns), ``items`` (items stored now) and ``updated_at``. The queue is a sorted set
of waiting run ids scored by submit time (interrupting runs by minus it: the newest first).
"""

from __future__ import annotations

# Claim the conversation for a run (at its start, and again after each wait).
# KEYS: meta, queue   ARGV: run_id, policy, score, now, epoch
# Reply: {outcome, blocker, fence, turns, committed, holder}; outcome held | queued | busy |
# stale; blocker: the run in the way (the holder, or the head of the queue when it is free).
CLAIM = """
local m = redis.call('HMGET', KEYS[1], 'holder', 'fence', 'turns', 'committed', 'epoch')
local holder = m[1] or ''
local fence = tonumber(m[2] or '0')
local turns = m[3] or '0'
local committed = m[4] or '0'
local epoch = tonumber(ARGV[5])
if holder == ARGV[1] then
  if epoch < tonumber(m[5] or '0') then
    return {'stale', holder, tostring(fence), turns, committed, holder}
  end
  redis.call('HSET', KEYS[1], 'epoch', ARGV[5], 'updated_at', ARGV[4])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'held', holder, tostring(fence), turns, committed, holder}
end
local blocker = holder
if holder == '' then
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #head == 0 or head[1] == ARGV[1] then
    fence = fence + 1
    redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'fence', fence, 'epoch', ARGV[5],
      'turns', turns, 'committed', committed, 'updated_at', ARGV[4])
    redis.call('ZREM', KEYS[2], ARGV[1])
    return {'held', ARGV[1], tostring(fence), turns, committed, ARGV[1]}
  end
  blocker = head[1]
end
if ARGV[2] == 'reject' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'busy', blocker, tostring(fence), turns, committed, holder}
end
if ARGV[2] == 'interrupt' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else
  redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[1])
end
return {'queued', blocker, tostring(fence), turns, committed, holder}
"""

# A submit's look (reject policy) or place in line (queue policy), before any worker sees it.
# KEYS: meta, queue   ARGV: run_id, policy, score
# Reply: {outcome, blocker}; outcome free | busy | queued.
ENQUEUE = """
local holder = redis.call('HGET', KEYS[1], 'holder') or ''
local head = redis.call('ZRANGE', KEYS[2], 0, 0)
local blocker = holder
if blocker == '' and #head > 0 and head[1] ~= ARGV[1] then blocker = head[1] end
if ARGV[2] == 'reject' then
  if blocker ~= '' and blocker ~= ARGV[1] then return {'busy', blocker} end
  return {'free', ''}
end
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[1])
return {'queued', blocker}
"""

# Append items, fenced by holder, fence and epoch; at most once per (run, step key).
# KEYS: meta, items, applied   ARGV: run_id, fence, epoch, akey, now, item...
# Reply: {'ok', count} | {'fenced', holder, fence}
APPEND = """
local done = redis.call('HGET', KEYS[3], ARGV[1] .. '|' .. ARGV[4])
if done then return {'ok', done} end
local m = redis.call('HMGET', KEYS[1], 'holder', 'fence', 'epoch')
if (m[1] or '') ~= ARGV[1] or (m[2] or '0') ~= ARGV[2] or (m[3] or '0') ~= ARGV[3] then
  return {'fenced', m[1] or '', m[2] or '0'}
end
for i = 6, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
local n = tostring(redis.call('LLEN', KEYS[2]))
redis.call('HSET', KEYS[3], ARGV[1] .. '|' .. ARGV[4], n)
redis.call('HSET', KEYS[1], 'items', n, 'updated_at', ARGV[5])
return {'ok', n}
"""

# A run of the conversation ended: give the hold up (committing its items if it completed,
# dropping them otherwise) and hand it to the head of the queue; or, for a run that did not
# hold it, take the run out of the queue.
# KEYS: meta, items, queue, applied   ARGV: run_id, fence ('' any), completed '1'|'0', now
# Reply: {'not_holder', holder} | {'free', ''} | {'handed', next_run_id, fence}
RELEASE = """
local m = redis.call('HMGET', KEYS[1], 'holder', 'fence', 'turns', 'committed')
if (m[1] or '') ~= ARGV[1] or (ARGV[2] ~= '' and (m[2] or '0') ~= ARGV[2]) then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {'not_holder', m[1] or ''}
end
local committed = tonumber(m[4] or '0')
if ARGV[3] == '1' then
  committed = redis.call('LLEN', KEYS[2])
  redis.call('HSET', KEYS[1], 'turns', tonumber(m[3] or '0') + 1)
elseif committed == 0 then
  redis.call('DEL', KEYS[2])
else
  redis.call('LTRIM', KEYS[2], 0, committed - 1)
end
redis.call('HSET', KEYS[1], 'committed', committed, 'items', committed, 'updated_at', ARGV[4],
  'epoch', '0')
redis.call('DEL', KEYS[4])
local head = redis.call('ZRANGE', KEYS[3], 0, 0)
if #head == 0 then
  redis.call('HSET', KEYS[1], 'holder', '')
  return {'free', ''}
end
local fence = tonumber(m[2] or '0') + 1
redis.call('ZREM', KEYS[3], head[1])
redis.call('HSET', KEYS[1], 'holder', head[1], 'fence', fence)
return {'handed', head[1], tostring(fence)}
"""
