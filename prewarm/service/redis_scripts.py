"""The Lua scripts the Redis store runs, with the KEYS and ARGV each expects.

Every script checks all of its input before its first write and fails with an error naming the
bad argument: Redis does not roll back a script that fails half way, so a check that came after a
write would leave part of a batch stored. All keys one call names share one target's
`{namespace/name}` hash tag or, for group commits, a single server (or one Cluster slot).
"""

from __future__ import annotations

# The keys the ingest script reads per target, in order: live interactive sessions, closed
# sessions (tombstones), arrivals per minute, live batch sessions.
INGEST_KEYS = ("sessions", "closed", "arrivals", "batch")

# KEYS: four per target of the call (INGEST_KEYS), then one dedup key per intent.
# ARGV: now_ms, session cap, dedup ttl s, arrivals ttl s, touch duplicates (0|1), number of targets,
#       the target names, then one packed string per intent:
#       "<target index>|<o|h|c>[b]|<expires_ms>|<minute>|<session id>"
#       (`b` marks a batch session: kept in the batch set, not counted as an arrival; a session
#       keeps the class of the first event seen for it).
# Returns {{sessions dropped per target, full ledger}, then 1 (accepted) or 0 (duplicate) per
# intent}, and publishes the changed
# targets, newline-separated, as one message on prewarm:changes. With "touch duplicates", a
# duplicate's dedup key is rewritten (same value, same expiry) so that the call propagates to the
# replicas: a WAIT after it then also covers the first, maybe unacknowledged, delivery.
INGEST = r"""
local now = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local dedup_ttl = tonumber(ARGV[3])
local arrivals_ttl = tonumber(ARGV[4])
local touch_duplicates = ARGV[5] == '1'
local ntargets = tonumber(ARGV[6])
if not (now and cap and dedup_ttl and arrivals_ttl and ntargets) or now < 0 or ntargets < 1
    or #KEYS ~= ntargets * 4 + #ARGV - 6 - ntargets then
  return redis.error_reply('ERR prewarm ingest: malformed header arguments')
end
local first_intent = 7 + ntargets
local parsed = {}
for a = first_intent, #ARGV do
  local ti, kind, batch, expires, minute, session = string.match(ARGV[a], '^(%d+)|([ohc])(b?)|(%d+)|(%d+)|(.+)$')
  ti = tonumber(ti)
  if not ti or ti < 1 or ti > ntargets then
    return redis.error_reply('ERR prewarm ingest: malformed intent ' .. (a - first_intent + 1))
  end
  parsed[#parsed + 1] = {ti, kind, batch, expires, minute, session}
end
local types = {'zset', 'zset', 'hash', 'zset'}
for k = 1, ntargets * 4 do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'none' and t ~= types[(k - 1) % 4 + 1] then
    return redis.error_reply('ERR prewarm ingest: ' .. KEYS[k] .. ' holds a ' .. t)
  end
end
for t = 1, ntargets do
  redis.call('ZREMRANGEBYSCORE', KEYS[t*4-3], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[t*4-2], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[t*4], '-inf', now)
end
local dropped = {}
for t = 1, ntargets do dropped[t] = 0 end
local results = {0}
local changed, touched = {}, {}
for i, intent in ipairs(parsed) do
  local ti, kind, batch, expires, minute, session = intent[1], intent[2], intent[3], intent[4], intent[5], intent[6]
  local sessions, closed, arrivals, batches = KEYS[ti*4-3], KEYS[ti*4-2], KEYS[ti*4-1], KEYS[ti*4]
  local dedup = KEYS[ntargets*4 + i]
  if not redis.call('SET', dedup, '1', 'NX', 'EX', dedup_ttl) then
    results[#results + 1] = 0
    if touch_duplicates then redis.call('SET', dedup, '1', 'XX', 'KEEPTTL') end
  else
    results[#results + 1] = 1
    touched[ti] = true
    if kind == 'c' then
      if redis.call('ZREM', sessions, session) + redis.call('ZREM', batches, session) > 0 then changed[ti] = true end
      redis.call('ZADD', closed, 'GT', expires, session)
    elseif not redis.call('ZSCORE', closed, session) then
      local live = sessions
      if batch == 'b' then
        if not redis.call('ZSCORE', sessions, session) then live = batches end
      elseif redis.call('ZSCORE', batches, session) then
        live = batches
      end
      if redis.call('ZADD', live, 'GT', 'CH', expires, session) == 1 then changed[ti] = true end
      local size = redis.call('ZCARD', live)
      if size > cap then
        redis.call('ZPOPMIN', live, size - cap)
        dropped[ti] = dropped[ti] + size - cap
      end
    end
    if kind == 'o' and batch == '' then
      redis.call('HINCRBY', arrivals, minute, 1)
    end
  end
end
local names = {}
for ti, _ in pairs(touched) do
  redis.call('PEXPIRE', KEYS[ti*4-3], dedup_ttl * 1000)
  redis.call('PEXPIRE', KEYS[ti*4-2], dedup_ttl * 1000)
  redis.call('PEXPIRE', KEYS[ti*4], dedup_ttl * 1000)
  redis.call('EXPIRE', KEYS[ti*4-1], arrivals_ttl)
  if changed[ti] then names[#names + 1] = ARGV[6 + ti] end
end
if #names > 0 then
  redis.call('PUBLISH', 'prewarm:changes', table.concat(names, '\n'))
end
results[1] = dropped
return results
"""

# KEYS: the target's decision key, then its lease key.
# ARGV: the fencing token ('' for a store without leases), the decision (JSON), the channel, the
# saving store's origin.
# Returns 1 when stored and published; 0, writing nothing, when the token is not the lease's.
# The decision is stored as given and published with `"origin":"<origin>"` as its first member, so
# the saving process skips its own echo without decoding it (it has told its listeners already).
SAVE_DECISION = r"""
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], '{"origin":"' .. ARGV[4] .. '",' .. string.sub(ARGV[2], 2))
return 1
"""

# Batches for one server (not a Cluster: their keys span slots). Deciding reads and writes a batch
# of targets per round trip with them. The targets come as one argument, a name per line, and the
# script builds their keys as redis_keys.key does (prewarm:{<target>}:<part>): a batch of 256
# targets is then a few arguments for the client to encode, not 768. Names, fencing tokens and
# compact JSON hold no newline.
#
# ARGV: alive_ms (sessions expiring after it are alive), then the targets, each followed by '\n'.
# Returns per target {interactive count, earliest interactive expiry ms or '', batch count,
# earliest batch expiry ms or '', stored decision or nil}.
DECISION_INPUTS = r"""
local alive = tonumber(ARGV[1])
if not alive or #ARGV ~= 2 then
  return redis.error_reply('ERR prewarm decision inputs: malformed arguments')
end
local bound = '(' .. ARGV[1]
local out = {}
for name in string.gmatch(ARGV[2], '([^\n]*)\n') do
  local prefix = 'prewarm:{' .. name .. '}:'
  for _, part in ipairs({'sessions', 'batch'}) do
    local k = prefix .. part
    out[#out + 1] = redis.call('ZCOUNT', k, bound, '+inf')
    local first = redis.call('ZRANGEBYSCORE', k, bound, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    out[#out + 1] = first[2] or ''
  end
  out[#out + 1] = redis.call('GET', prefix .. 'decision')
end
return out
"""

# The same reads on a Cluster, for the targets of one hash slot (a script touches one slot): KEYS
# per target its live interactive sessions, live batch sessions and decision keys; ARGV alive_ms.
# Returns what DECISION_INPUTS returns for them.
SLOT_DECISION_INPUTS = r"""
local alive = tonumber(ARGV[1])
if not alive or #KEYS % 3 ~= 0 then
  return redis.error_reply('ERR prewarm decision inputs: malformed arguments')
end
local bound = '(' .. ARGV[1]
local out = {}
for i = 1, #KEYS, 3 do
  for j = 0, 1 do
    out[#out + 1] = redis.call('ZCOUNT', KEYS[i + j], bound, '+inf')
    local first = redis.call('ZRANGEBYSCORE', KEYS[i + j], bound, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    out[#out + 1] = first[2] or ''
  end
  out[#out + 1] = redis.call('GET', KEYS[i + 2])
end
return out
"""

# ARGV: the decisions channel, the saving store's origin, then three lists of as many lines each
# ('\n' after every entry): the targets, their fences ('' for none) and their encoded decisions.
# Returns per target 1 (stored and published) or 0 (the fence no longer holds: nothing written).
# The stored decisions are published in one message, one per line, each with its origin as
# SAVE_DECISION does: a batch of 256 decisions is one message to relay, not 256.
SAVE_DECISIONS = r"""
local function lines(text)
  local out = {}
  for line in string.gmatch(text, '([^\n]*)\n') do out[#out + 1] = line end
  return out
end
if #ARGV ~= 5 then
  return redis.error_reply('ERR prewarm save decisions: malformed arguments')
end
local names, fences, texts = lines(ARGV[3]), lines(ARGV[4]), lines(ARGV[5])
if #fences ~= #names or #texts ~= #names then
  return redis.error_reply('ERR prewarm save decisions: malformed arguments')
end
local origin = '{"origin":"' .. ARGV[2] .. '",'
local out, published = {}, {}
for i = 1, #names do
  local prefix = 'prewarm:{' .. names[i] .. '}:'
  local fence, text = fences[i], texts[i]
  if fence ~= '' and redis.call('GET', prefix .. 'leader') ~= fence then
    out[i] = 0
  else
    redis.call('SET', prefix .. 'decision', text)
    published[#published + 1] = origin .. string.sub(text, 2)
    out[i] = 1
  end
end
if #published > 0 then
  redis.call('PUBLISH', ARGV[1], table.concat(published, '\n'))
end
return out
"""

# KEYS: per target, its lease key.
# ARGV: lease ms, then per target the token this holder holds.
# Renews each lease that still holds its token; returns the (1-based) positions of those that did
# not (taken or expired): a renewal of thousands of leases answers with only what changed.
RENEW_LEASES = r"""
local ttl = tonumber(ARGV[1])
if not ttl or ttl < 1 or #KEYS ~= #ARGV - 1 then
  return redis.error_reply('ERR prewarm renew leases: malformed arguments')
end
local lost = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ttl)
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

# KEYS: per target, its lease key then its epoch key.
# ARGV: holder id, lease ms, acquire free leases (0|1), epoch ttl s, then per target the token
#       this holder believes it holds ('' for none).
# Returns per target {1, token, ms left} when the holder holds it now (renewed or newly taken, the
# epoch incremented so that every taking gets a new token), else {0, holder's token or '', ms left}.
CLAIM_LEASES = r"""
local holder = ARGV[1]
local ttl = tonumber(ARGV[2])
local acquire = ARGV[3] == '1'
local epoch_ttl = tonumber(ARGV[4])
if not ttl or ttl < 1 or not epoch_ttl or #KEYS ~= 2 * (#ARGV - 4) then
  return redis.error_reply('ERR prewarm leases: malformed arguments')
end
local out = {}
for i = 1, #KEYS / 2 do
  local lease, epoch = KEYS[2*i-1], KEYS[2*i]
  local held = ARGV[4 + i]
  local current = redis.call('GET', lease)
  if current and current == held then
    redis.call('PEXPIRE', lease, ttl)
    out[i] = {1, current, ttl}
  elseif not current and acquire then
    local token = redis.call('INCR', epoch) .. '|' .. holder
    redis.call('EXPIRE', epoch, epoch_ttl)
    redis.call('SET', lease, token, 'PX', ttl)
    out[i] = {1, token, ttl}
  else
    out[i] = {0, current or '', current and redis.call('PTTL', lease) or 0}
  end
end
return out
"""

# KEYS: lease keys. ARGV: the token held for each. Deletes each lease that still holds that token.
RELEASE_LEASES = r"""
if #KEYS ~= #ARGV then
  return redis.error_reply('ERR prewarm leases: malformed arguments')
end
local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end
return released
"""
