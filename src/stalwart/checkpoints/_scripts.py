"""Lua scripts run with EVALSHA, so they work on Redis 6.2 (no FUNCTION) and 7.x alike.

Each script touches one run's keys (see ``_keys``), ``KEYS[1]`` the run record (hash) and
``KEYS[2]`` the journal (stream) or signal inbox. All carry the run id as a hash tag, so on
Redis Cluster they live in the same slot and the scripts are atomic there too. The fenced
writes share one fence (``_fence.FENCE``); an epoch of '' never reaches them from the store.
"""

from __future__ import annotations

from stalwart.checkpoints._fence import fenced

# Shared prelude: the next journal sequence is one past the top stream id. Explicit ids make
# XADD itself reject a second append at the same position, which is what makes an append
# retried after a lost reply detectable instead of duplicated.
_NEXT_SEQ = """
local function next_seq(journal)
  local top = redis.call('XREVRANGE', journal, '+', '-', 'COUNT', 1)
  if #top == 0 then return 1 end
  return tonumber(string.match(top[1][1], '^(%d+)')) + 1
end
local function terminal(status)
  return status == 'completed' or status == 'failed' or status == 'cancelled'
end
"""

# Client submit: create the record unless the run id is already known.
# ARGV: run_id, agent, input, now, trace[, lane (only when not the default lane)]
CREATE_RUN = """
local f = redis.call('HMGET', KEYS[1], 'status', 'agent')
if f[1] then return {f[1], f[2] or ''} end
redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'agent', ARGV[2], 'input', ARGV[3],
  'status', 'accepted', 'epoch', '0', 'created_at', ARGV[4], 'updated_at', ARGV[4],
  'trace', ARGV[5])
if ARGV[6] and ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'lane', ARGV[6]) end
return false
"""

# Placement: raise the record's epoch to the claimant's (only upwards), mark the run running,
# and journal who took it. The epoch encodes the claimant's lease position, generation of the
# lease bucket then revision (_runs.LeasePosition), so a stale epoch is a claim by an older
# lease: a newer owner already claimed the run.
# Refused: a run of another agent (a request on the wrong agent's subject must not run this
# agent's code on that run's input) and a resume of a run that does not exist.
# Placements in a row that journaled nothing after their Started entry are counted
# ('placements', with 'placed_seq' the last Started entry's seq); past max_placements the
# run fails here with poison_entry (an actor that dies on every placement, for ever).
# ARGV: epoch, worker, now, run_id, agent, input, trace, started_entry, resumed_entry,
#       run_timeout (seconds from creation; 0 for none), kind, max_placements (0: none),
#       poison_entry, poison_error
CLAIM = (
    _NEXT_SEQ
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'cancel', 'agent')
local status = f[1]
if status and f[4] ~= ARGV[5] then return {'wrong_agent', f[4] or ''} end
if terminal(status) then return {'terminal', status} end
if not status and ARGV[11] == 'resume' then return {'missing'} end
local current = tonumber(f[2] or '0')
if tonumber(ARGV[1]) == current and redis.call('HGET', KEYS[1], 'worker') == ARGV[2] then
  -- The same claim again (its reply was lost and the client resent it): same answer.
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  local seq = top[1] and string.match(top[1][1], '^(%d+)') or '0'
  return {'ok', seq, f[3] or '', redis.call('HGET', KEYS[1], 'input') or '',
    redis.call('HGET', KEYS[1], 'trace') or '', redis.call('HGET', KEYS[1], 'deadline') or ''}
end
if tonumber(ARGV[1]) <= current then return {'stale', tostring(f[2])} end
if not status then
  redis.call('HSET', KEYS[1], 'run_id', ARGV[4], 'agent', ARGV[5], 'input', ARGV[6],
    'created_at', ARGV[3], 'trace', ARGV[7])
end
redis.call('HSET', KEYS[1], 'status', 'running', 'epoch', ARGV[1], 'worker', ARGV[2],
  'updated_at', ARGV[3], 'waiting_for', '', 'wake_at', '0', 'queued_for', '')
local deadline = redis.call('HGET', KEYS[1], 'deadline')
if (not deadline or deadline == '') and tonumber(ARGV[10]) > 0 then
  local created = tonumber(redis.call('HGET', KEYS[1], 'created_at') or ARGV[3])
  deadline = string.format('%.3f', created + tonumber(ARGV[10]))
  redis.call('HSET', KEYS[1], 'deadline', deadline)
end
local seq = next_seq(KEYS[2])
local placements = 1
if tonumber(redis.call('HGET', KEYS[1], 'placed_seq') or '-1') == seq - 1 then
  placements = tonumber(redis.call('HGET', KEYS[1], 'placements') or '0') + 1
end
redis.call('HSET', KEYS[1], 'placements', placements, 'placed_seq', seq)
local maxp = tonumber(ARGV[12] or '0')
if maxp > 0 and placements > maxp then
  redis.call('XADD', KEYS[2], seq .. '-0', 'd', ARGV[13])
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[3],
    'error_type', 'PlacementLimitExceeded', 'error', ARGV[14])
  return {'poisoned', tostring(seq)}
end
local entry = ARGV[8]
if current > 0 then entry = ARGV[9] end
redis.call('XADD', KEYS[2], seq .. '-0', 'd', entry)
return {'ok', tostring(seq), f[3] or '', redis.call('HGET', KEYS[1], 'input') or '',
  redis.call('HGET', KEYS[1], 'trace') or '', deadline or ''}
"""
)

# Rejection of an unusable request that names this run. It ends the run only when the
# request is the run's own submission (its message id is the bare run id) and the run was
# never placed; otherwise the run (live, ended, or another agent's) is none of its business.
# ARGV: now, reason, finished_entry, agent, own ('1' or '0')
REJECT = (
    _NEXT_SEQ
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'agent')
if not f[1] then return {'missing'} end
if f[1] ~= 'accepted' or f[2] ~= ARGV[4] or ARGV[5] ~= '1' then return {'unrelated', f[1]} end
local seq = next_seq(KEYS[2])
redis.call('XADD', KEYS[2], seq .. '-0', 'd', ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'failed', 'updated_at', ARGV[1], 'finished_at', ARGV[1],
  'error_type', 'RequestRejected', 'error', ARGV[2])
return {'rejected', tostring(seq)}
"""
)

# Journal continuity, shared by APPEND and FINISH (after the fence): the entry goes at
# ARGV[2] = '<seq>-0' only if the journal's top is seq - 1, the writer's previous position.
# Fast path: the record's 'journal_top' is the position this script wrote last; it changes
# with the journal in one atomic script, and a replica applies a script's writes as one
# transaction, so after a failover the two still agree. When it says seq - 1 the XADD
# goes ahead (a claim, cancel, rejection or dead letter writes entries without moving it,
# but above it, so XADD itself refuses a taken position). Otherwise, or when XADD refuses,
# the journal's real top decides:
#   top < seq - 1  -> {'gap', top}: entries below seq are missing (a failover lost them),
#                     nothing is written;
#   top >= seq     -> the entry at seq is this very entry (a resend after a lost reply):
#                     {'ok', cancel}, after a write to the record (so a WAIT after it covers
#                     the entry); else {'conflict', ...};
#   top = seq - 1  -> write.
# `append_entry(now)` returns nil once the entry is written, or the reply to return.
_CONTINUITY = """
local function append_entry(now)
  local seq = tonumber(string.match(ARGV[2], '^(%d+)'))
  local known = redis.call('HGET', KEYS[1], 'journal_top')
  if known ~= tostring(seq - 1) or redis.pcall('XADD', KEYS[2], ARGV[2], 'd', ARGV[3]).err then
    local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
    local at = 0
    if top[1] then at = tonumber(string.match(top[1][1], '^(%d+)')) end
    if at < seq - 1 then return {'gap', tostring(at)} end
    if at >= seq then
      local mine = redis.call('XRANGE', KEYS[2], ARGV[2], ARGV[2])
      if mine[1] and mine[1][2][2] == ARGV[3] then
        redis.call('HSET', KEYS[1], 'updated_at', now)
        return {'ok', cancel}
      end
      return {'conflict', 'position ' .. seq .. ' holds another entry'}
    end
    redis.call('XADD', KEYS[2], ARGV[2], 'd', ARGV[3])
  end
  redis.call('HSET', KEYS[1], 'updated_at', now, 'journal_top', seq)
  return nil
end
"""

# Fenced append: only the owner of the current epoch may write, at the position after its
# previous one (see _CONTINUITY). Returns the cancel flag so the actor learns of a
# cancellation at its next step boundary without an extra round trip.
# ARGV: epoch, entry id, entry, now
APPEND = fenced(
    _CONTINUITY
    + """
local stop = append_entry(ARGV[4])
if stop then return stop end
return {'ok', cancel}
"""
)

# Fenced final append plus the record's end state (continuity as APPEND).
# ARGV: epoch, entry id, entry, now, status, result, error_type, error
FINISH = fenced(
    _CONTINUITY
    + """
local stop = append_entry(ARGV[4])
if stop then return stop end
redis.call('HSET', KEYS[1], 'status', ARGV[5], 'finished_at', ARGV[4],
  'error_type', ARGV[7], 'error', ARGV[8])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[6]) end
return {'ok', ''}
"""
)

# Cancel: a run that was never placed ends here and now (atomically, so a worker that is
# about to claim it finds it terminal); a placed run gets a flag its owner reads at the
# next step boundary. ARGV: now, reason, finished_entry
CANCEL = (
    _NEXT_SEQ
    + """
local f = redis.call('HMGET', KEYS[1], 'status')
local status = f[1]
if not status then return {'missing'} end
if terminal(status) then return {'terminal', status} end
if status == 'accepted' then
  local seq = next_seq(KEYS[2])
  redis.call('XADD', KEYS[2], seq .. '-0', 'd', ARGV[3])
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated_at', ARGV[1],
    'finished_at', ARGV[1], 'error_type', 'RunCancelled', 'error', ARGV[2])
  return {'cancelled', tostring(seq)}
end
redis.call('HSET', KEYS[1], 'cancel', ARGV[2])
if status == 'waiting' then return {'requested', 'wake', redis.call('HGET', KEYS[1], 'epoch')} end
return {'requested'}
"""
)

# Signal: store it durably first; report whether the run is passivated waiting for it, so the
# caller wakes it. Refused, storing nothing, when the inbox already holds max_pending
# signals (consumed ones are deleted by the run, so the inbox holds the unconsumed ones).
# KEYS[1] record, KEYS[2] signals stream. ARGV: name, payload, now, max_pending (0: none)
SIGNAL = """
local f = redis.call('HMGET', KEYS[1], 'status', 'waiting_for', 'epoch')
local status = f[1]
if not status then return {'missing'} end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {'terminal', status}
end
local pending = redis.call('XLEN', KEYS[2])
if tonumber(ARGV[4]) > 0 and pending >= tonumber(ARGV[4]) then
  return {'full', '', tostring(pending)}
end
local sid = redis.call('XADD', KEYS[2], '*', 'name', ARGV[1], 'payload', ARGV[2], 'at', ARGV[3])
if status == 'waiting' and (f[2] == ARGV[1] or f[2] == '*') then
  return {'wake', sid, f[3] or '0'}
end
return {'stored', sid, f[3] or '0'}
"""

# Passivate: the owner gives the run up while it waits; fenced like an append.
# KEYS[1] record. ARGV: epoch, waiting_for, wake_at, now
PASSIVATE = fenced("""
redis.call('HSET', KEYS[1], 'status', 'waiting', 'waiting_for', ARGV[2], 'wake_at', ARGV[3],
  'updated_at', ARGV[4])
-- Giving the run up on purpose is progress: the wake-up starts a new count of placements.
redis.call('HDEL', KEYS[1], 'placed_seq')
return {'ok'}
""")

# Dead letter: a request JetStream gave up delivering. Fail the run unless a worker placed
# it meanwhile. KEYS[1] record, KEYS[2] journal. ARGV: now, reason, finished_entry, run_id, agent
DEAD_LETTER = (
    _NEXT_SEQ
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status and status ~= 'accepted' then return {'skipped', status} end
if not status then
  redis.call('HSET', KEYS[1], 'run_id', ARGV[4], 'agent', ARGV[5], 'created_at', ARGV[1], 'epoch', '0')
end
local seq = next_seq(KEYS[2])
redis.call('XADD', KEYS[2], seq .. '-0', 'd', ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'failed', 'updated_at', ARGV[1], 'finished_at', ARGV[1],
  'error_type', 'DeadLettered', 'error', ARGV[2])
return {'failed', tostring(seq)}
"""
)

# Fork: a new run whose journal starts as a copy of another run's prefix. Both keys are the
# new run's (one slot); the source was read before. Refuses an existing run id.
# KEYS[1] record, KEYS[2] journal. ARGV: run_id, agent, input, now, trace, forked_from,
# then the entries, journaled at 1-0, 2-0, ...
FORK_RUN = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 'exists'
end
for i = 7, #ARGV do
  redis.call('XADD', KEYS[2], (i - 6) .. '-0', 'd', ARGV[i])
end
redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'agent', ARGV[2], 'input', ARGV[3],
  'status', 'accepted', 'epoch', '0', 'created_at', ARGV[4], 'updated_at', ARGV[4],
  'trace', ARGV[5], 'forked_from', ARGV[6])
return 'ok'
"""
