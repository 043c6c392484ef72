"""Lua scripts of the LangGraph saver (EVALSHA, so Redis 6.2 and 7.x alike).

Every key a script touches carries the thread id as its hash tag. A durable run's thread id
is its run id, so ``KEYS[1]``, the run record, is in the same slot: the writes run under the
run's epoch fence (:func:`stalwart.checkpoints.fenced`, the one the journal's appends use).
``ARGV[1]`` is the epoch, or '' for a saver used on its own (no fencing). A stale writer gets
``{'stale', <current epoch>}``.
"""

from __future__ import annotations

from stalwart.checkpoints import fenced

# Store a checkpoint: its new channel blobs and its record, in one step. Returns the run's
# cancel flag, so a cancelled run stops before its next superstep starts.
# KEYS: record, ids, checkpoints, blobs, namespaces
# ARGV: epoch, checkpoint_ns, checkpoint_id, record, then blob field/value pairs
PUT = fenced(
    """
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('SADD', KEYS[5], ARGV[2])
return {'ok', cancel}
"""
)

# Store a task's writes on a checkpoint. Regular writes are kept once (a task whose writes
# are stored is done); writes to special channels only (error, interrupt, resume) replace
# the previous ones. A durable run also lists the task (ARGV[5], '' for none) when its
# writes are new, so a later owner can journal tasks whose journal step was never written.
# Returns how many fields were new.
# KEYS: record, writes, ids, orphans, namespaces, tasks
# ARGV: epoch, upsert ('1' or '0'), checkpoint_id, checkpoint_ns, task entry, then
#       field/value pairs
PUT_WRITES = fenced(
    """
local new = 0
for i = 6, #ARGV, 2 do
  if ARGV[2] == '1' then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    new = new + 1
  else
    new = new + redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
if not redis.call('ZSCORE', KEYS[3], ARGV[3]) then redis.call('SADD', KEYS[4], KEYS[2]) end
redis.call('SADD', KEYS[5], ARGV[4])
if new > 0 and ARGV[5] ~= '' then redis.call('RPUSH', KEYS[6], ARGV[5]) end
return {'ok', new}
"""
)

# A checkpoint's record: the one named in ARGV[1], or the newest when ARGV[1] is ''.
# KEYS: ids, checkpoints. Returns {id, record} or false.
GET = """
local id = ARGV[1]
if id == '' then
  local top = redis.call('ZREVRANGEBYLEX', KEYS[1], '+', '-', 'LIMIT', 0, 1)
  if #top == 0 then return false end
  id = top[1]
end
local rec = redis.call('HGET', KEYS[2], id)
if not rec then return false end
return {id, rec}
"""

# A checkpoint's values and writes in one round trip: for every ``<channel>\\0<version>`` in
# ARGV, the chain of blobs from that version back through the versions it extends (delta
# blobs start with 'D<base version>\\0'), then the checkpoint's writes (HGETALL).
# KEYS: blobs, writes
LOAD = """
local out = {}
for i = 1, #ARGV do
  local field = ARGV[i]
  local sep = string.find(field, '\\0', 1, true)
  local channel = string.sub(field, 1, sep - 1)
  local chain = {}
  while true do
    local v = redis.call('HGET', KEYS[1], field)
    if not v then break end
    chain[#chain + 1] = v
    if string.sub(v, 1, 1) ~= 'D' then break end
    local e = string.find(v, '\\0', 2, true)
    local base = string.sub(v, 2, e - 1)
    if base == '' then break end
    field = channel .. '\\0' .. base
  end
  out[i] = chain
end
out[#ARGV + 1] = redis.call('HGETALL', KEYS[2])
return out
"""
