-- allow.lua: may a call to this breaker's model go upstream now?
--
-- KEYS[1]  state hash: state, open_until, lease_until, lease_token, streak
--          (consecutive failures), opened_at, trips (times in ms of the
--          callers' clock)
-- KEYS[2]  window hash: the calls (c<n>) and failures (f<n>) of each
--          bucket n = now // bucket width that had any; fields of buckets
--          that left the window are stale (prune.lua and record.lua remove
--          them)
-- ARGV[1]  now (ms)
-- ARGV[2]  probe lease (ms): how long the probe owns the half-open period
-- ARGV[3]  token identifying this caller, should it become the probe
-- ARGV[4]  key ttl (ms), garbage collection only
-- ARGV[5]  bucket width (ms)
-- ARGV[6]  buckets in the window (unused here; as record.lua)
--
-- Returns {allowed, probe, state, retry_at, from, streak}: allowed/probe
-- are 0|1, state is what the caller saw (closed|open|half_open), retry_at
-- (ms) is when a refused caller should ask again, from is the state left
-- when this call made a transition ('' otherwise), streak the consecutive
-- failures so far (closed only).
--
-- A closed breaker counts the call in the current bucket: the calls of the
-- failure rate are counted when they are allowed, so that a success has
-- nothing to record (see record.lua). The count is a plain HINCRBY, so the
-- worker's gate read (Breaker.AllowIn) counts a call without a script.
-- The window's expiry is set with a new field here, and by prune.lua.
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'lease_until', 'streak')
local state = h[1]
if not state or state == 'closed' then
  local bucket = math.floor(now / tonumber(ARGV[5]))
  if redis.call('HINCRBY', KEYS[2], 'c' .. string.format('%d', bucket), 1) == 1 then
    redis.call('PEXPIRE', KEYS[2], ARGV[4]) -- a new field: maybe a new hash
  end
  return {1, 0, 'closed', 0, '', tonumber(h[4]) or 0}
end
if state == 'open' then
  local open_until = tonumber(h[2]) or 0
  if now < open_until then
    return {0, 0, 'open', open_until, '', 0}
  end
  -- The open period is over: this caller is the one probe of the
  -- half-open period.
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'lease_until', now + tonumber(ARGV[2]), 'lease_token', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1, 1, 'half_open', 0, 'open', 0}
end
-- half_open: one probe at a time; a lease that ran out without a verdict
-- (its process died) passes to this caller.
local lease_until = tonumber(h[3]) or 0
if now < lease_until then
  return {0, 0, 'half_open', lease_until, '', 0}
end
redis.call('HSET', KEYS[1], 'lease_until', now + tonumber(ARGV[2]), 'lease_token', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, 1, 'half_open', 0, '', 0}
