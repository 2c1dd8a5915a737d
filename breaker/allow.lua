-- allow.lua: may a call to this breaker's model go upstream now?
--
-- KEYS[1]  state hash: state, open_until, lease_until, lease_token (times in
--          ms of the callers' clock)
-- ARGV[1]  now (ms)
-- ARGV[2]  probe lease (ms): how long the probe owns the half-open period
-- ARGV[3]  token identifying this caller, should it become the probe
-- ARGV[4]  key ttl (ms), garbage collection only
--
-- Returns {allowed, probe, state, retry_at, from}: allowed/probe are 0|1,
-- state is what the caller saw (closed|open|half_open), retry_at (ms) is
-- when a refused caller should ask again, from is the state left when this
-- call made a transition ('' otherwise).
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'lease_until')
local state = h[1]
if not state or state == 'closed' then
  return {1, 0, 'closed', 0, ''}
end
if state == 'open' then
  local open_until = tonumber(h[2]) or 0
  if now < open_until then
    return {0, 0, 'open', open_until, ''}
  end
  -- The open period is over: this caller is the one probe of the
  -- half-open period.
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'lease_until', now + tonumber(ARGV[2]), 'lease_token', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1, 1, 'half_open', 0, 'open'}
end
-- half_open: one probe at a time; a lease that ran out without a verdict
-- (its process died) passes to this caller.
local lease_until = tonumber(h[3]) or 0
if now < lease_until then
  return {0, 0, 'half_open', lease_until, ''}
end
redis.call('HSET', KEYS[1], 'lease_until', now + tonumber(ARGV[2]), 'lease_token', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, 1, 'half_open', 0, ''}
