"""Lua scripts of the shared circuit breakers and retry budgets (one key each).

Every script touches one rule's keys only, which share the rule's hash tag
(``<ns>:{flow.<rule>}:...``), so it is atomic on a single Redis and on a Redis Cluster alike. Times come from the Redis server's ``TIME``: every
worker measures a cooldown or a window on the same clock, whatever their own clocks say.
Numbers that may be fractional go back as strings (Redis truncates Lua numbers to integers).
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# Before an attempt. KEYS[1]: the breaker (hash: failures, opened_at, probe, probe_until).
# ARGV: cooldown, probe_ttl, holder, keep (seconds an idle breaker's key lives)
# Reply: {state, wait (s), failures} with state 'closed' (go), 'probe' (go: the one half-open
# trial of the whole fleet, held by ARGV[3] until probe_ttl passes), 'open' or 'probing'
# (wait, then ask again).
BEFORE = (
    _NOW
    + """
local f = redis.call('HMGET', KEYS[1], 'opened_at', 'probe', 'probe_until', 'failures')
if not f[1] or f[1] == '' then return {'closed', '0', f[4] or '0'} end
local reopen = tonumber(f[1]) + tonumber(ARGV[1])
if now < reopen then return {'open', tostring(reopen - now), f[4] or '0'} end
if f[2] and f[2] ~= '' and tonumber(f[3] or '0') > now then
  return {'probing', tostring(tonumber(f[3]) - now), f[4] or '0'}
end
redis.call('HSET', KEYS[1], 'probe', ARGV[3], 'probe_until', tostring(now + tonumber(ARGV[2])))
redis.call('HINCRBY', KEYS[1], 'probes', 1)
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) + tonumber(ARGV[4])))
return {'probe', '0', f[4] or '0'}
"""
)

# After an attempt that reached the other side. KEYS[2]: the rule's index of breakers that
# opened (a set, read by the snapshot). ARGV: ok ('1'/'0'), holder, threshold, keep, breaker. A success, whoever made it, closes the breaker: the far side answered. A failure
# counts; the threshold-th one since the last success opens the breaker; a failed probe
# opens it for another cooldown. A failure of a call that started before the breaker opened
# only counts (it says nothing new). Reply: {what, failures}.
RECORD = (
    _NOW
    + """
if ARGV[1] == '1' then
  local was = redis.call('HGET', KEYS[1], 'opened_at')
  if redis.call('DEL', KEYS[1]) == 0 then return {'closed', 0} end
  if was and was ~= '' then return {'closed_now', 0} end
  return {'closed', 0}
end
local f = redis.call('HMGET', KEYS[1], 'opened_at', 'probe')
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4])))
if f[1] and f[1] ~= '' then
  if f[2] == ARGV[2] then
    redis.call('HSET', KEYS[1], 'opened_at', tostring(now), 'probe', '', 'probe_until', '0')
    return {'reopened', n}
  end
  return {'open', n}
end
if n >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'opened_at', tostring(now))
  redis.call('HINCRBY', KEYS[1], 'opens', 1)
  redis.call('SADD', KEYS[2], ARGV[5])
  return {'opened', n}
end
return {'counting', n}
"""
)

# A probe that ended without a verdict (interrupted, a business error, or the run gave it
# up) hands the half-open slot back at once. ARGV: holder
ABANDON = """
if redis.call('HGET', KEYS[1], 'probe') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'probe', '', 'probe_until', '0')
  return 1
end
return 0
"""

# Retry budget. KEYS[1]: hash of per-bucket counters 's<i>' (successes) and 'r<i>' (retries
# granted), bucket i = floor(now / width); buckets older than the window are deleted here.
# ARGV: width, buckets, ratio, floor (retries per window granted without any success,
#       rounded up),
#       take ('1': ask for one retry), deposit (successes to add first), refund (granted
#       retries that never ran, given back)
# Reply: {granted (0/1), successes, retries, allowed, wait (s) until a retry may be granted}
BUDGET = (
    _NOW
    + """
local width = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local cur = math.floor(now / width)
local oldest = cur - n + 1
local s, r, first = 0, 0, nil
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local idx = tonumber(string.sub(all[i], 2))
  local v = tonumber(all[i + 1])
  if idx == nil or idx < oldest then
    redis.call('HDEL', KEYS[1], all[i])
  elseif string.sub(all[i], 1, 1) == 's' then
    s = s + v
  else
    r = r + v
    if first == nil or idx < first then first = idx end
  end
end
local dep = tonumber(ARGV[6])
if dep > 0 then
  redis.call('HINCRBY', KEYS[1], 's' .. cur, dep)
  s = s + dep
end
local refund = tonumber(ARGV[7] or '0')
if refund > 0 and r > 0 then
  refund = math.min(refund, r)
  redis.call('HINCRBY', KEYS[1], 'r' .. cur, -refund)
  r = r - refund
end
local allowed = math.floor(tonumber(ARGV[3]) * s) + math.ceil(tonumber(ARGV[4]) - 0.000001)
local granted, wait = 0, 0
if ARGV[5] == '1' then
  if r < allowed then
    redis.call('HINCRBY', KEYS[1], 'r' .. cur, 1)
    r = r + 1
    granted = 1
  elseif first ~= nil then
    wait = (first + n) * width - now
  else
    wait = width
  end
end
if dep > 0 or granted == 1 then
  redis.call('PEXPIRE', KEYS[1], math.ceil(width * n * 1000) + 1000)
end
return {granted, s, r, allowed, tostring(wait)}
"""
)
